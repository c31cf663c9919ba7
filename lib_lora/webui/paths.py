"""Folders the extension uses inside the WebUI: the host's LoRA folder and our own data folder."""

from __future__ import annotations

from pathlib import Path

DATA_FOLDER_NAME = "lora_studio"


def models_dir() -> Path:
    """The WebUI's models folder (`modules.paths.models_path`)."""
    from modules import paths  # type: ignore[import-not-found]

    return Path(paths.models_path)


def data_dir() -> Path:
    """The WebUI's data folder (`modules.paths.data_path`, `--data-dir`): models, outputs, extensions."""
    from modules import paths  # type: ignore[import-not-found]

    return Path(paths.data_path)


def lora_dir() -> Path:
    """Where the WebUI's built-in Lora looks for LoRAs: `--lora-dir`, else `<models>/Lora`.

    `cmd_opts.lora_dir` exists only while the built-in Lora extension is enabled (it adds the flag).
    """
    from modules import shared  # type: ignore[import-not-found]

    configured = getattr(shared.cmd_opts, "lora_dir", None)
    return Path(configured) if configured else models_dir() / "Lora"


def extension_data_dir() -> Path:
    """Our own data (tagger models, user presets): `<models>/lora_studio` (survives extension updates)."""
    return models_dir() / DATA_FOLDER_NAME


def ensure_temp_dir() -> None:
    """Create the WebUI's folder for temporary images (`opts.temp_dir`) when it is set but missing.

    Forge Neo saves every image a gradio component returns into that folder (`ui_tempdir.save_pil_to_file`) without
    creating it, so on a fresh install the Train tab's loss curve and samples failed with FileNotFoundError.
    """
    from modules import shared  # type: ignore[import-not-found]

    folder = str(getattr(getattr(shared, "opts", None), "temp_dir", "") or "")
    if folder:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the WebUI reports its own folder's problem when it uses it
