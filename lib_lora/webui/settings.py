"""The "LoRA Studio" settings section: registered at import, so options exist headless too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import paths

SECTION = ("lora_studio", "LoRA Studio")
OUTPUT_DIR_KEY = "lora_studio_output_dir"
TAGGER_DIR_KEY = "lora_studio_tagger_dir"
DATASET_ROOTS_KEY = "lora_studio_dataset_roots"


def option_templates() -> dict[str, Any]:
    """Our options as `shared.OptionInfo`s in our section, defaults from the WebUI's paths."""
    from modules import shared  # type: ignore[import-not-found]

    options = {
        OUTPUT_DIR_KEY: shared.OptionInfo(str(paths.lora_dir()), "Folder for trained LoRAs").info(
            "default: the WebUI's LoRA folder, so new LoRAs show up in the Lora tab"
        ),
        TAGGER_DIR_KEY: shared.OptionInfo(
            str(paths.extension_data_dir() / "tagger"), "Folder for WD14 tagger models"
        ).info("each model in its own subfolder: model.onnx and selected_tags.csv"),
        DATASET_ROOTS_KEY: shared.OptionInfo("", "Extra folders the Dataset tab may open").info(
            "one per line or separated by ';'; the WebUI's data folder is always allowed"
        ),
    }
    return shared.options_section(SECTION, options)


def register_options() -> None:
    """Add our options to `shared.options_templates` (which A1111 and Forge share with `opts.data_labels`)."""
    from modules import shared  # type: ignore[import-not-found]

    shared.options_templates.update(option_templates())


def on_ui_settings() -> None:
    """`on_ui_settings` callback: add any of our options the settings page does not know yet (idempotent)."""
    from modules import shared  # type: ignore[import-not-found]

    for key, info in option_templates().items():
        if key not in shared.opts.data_labels:
            shared.opts.add_option(key, info)


def trained_lora_dir() -> Path:
    """The folder trained LoRAs are saved to (the setting, or the WebUI's LoRA folder when it is empty)."""
    from modules import shared  # type: ignore[import-not-found]

    return Path(getattr(shared.opts, OUTPUT_DIR_KEY, "") or paths.lora_dir())


def tagger_model_dir() -> Path:
    """The folder WD14 tagger models are read from and downloaded to."""
    from modules import shared  # type: ignore[import-not-found]

    return Path(getattr(shared.opts, TAGGER_DIR_KEY, "") or paths.extension_data_dir() / "tagger")


def dataset_roots() -> list[Path]:
    """The folders the Dataset tab may open: the WebUI's data folder, then the setting's folders."""
    from modules import shared  # type: ignore[import-not-found]

    extra = str(getattr(shared.opts, DATASET_ROOTS_KEY, "") or "")
    folders = [part.strip() for line in extra.splitlines() for part in line.split(";")]
    return [paths.data_dir(), *(Path(folder).expanduser() for folder in folders if folder)]
