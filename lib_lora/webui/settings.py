"""The "LoRA Studio" settings section: registered at import, so options exist headless too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import paths

SECTION = ("lora_studio", "LoRA Studio")
OUTPUT_DIR_KEY = "lora_studio_output_dir"
TAGGER_DIR_KEY = "lora_studio_tagger_dir"


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
