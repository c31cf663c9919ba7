"""The `on_ui_tabs` callback: one "LoRA Studio" top-level tab holding the three sub-tabs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import paths, settings
from .host import current_host

if TYPE_CHECKING:
    import gradio as gr

    from ..ui.context import StudioContext

from ..hosts.gate import WEBUI_GPU

TAB_TITLE = "LoRA Studio"
TAB_ID = "lora_studio"


def on_ui_tabs() -> list[tuple[gr.Blocks, str, str]]:
    """Build the tab without touching the model; the WebUI renders it as `#tab_lora_studio`."""
    from ..ui import build_studio

    paths.ensure_temp_dir()
    return [(build_studio(webui_context()), TAB_TITLE, TAB_ID)]


def webui_context() -> StudioContext:
    """The tabs' context in the WebUI: folders from the settings and the WebUI's paths, read on use."""
    from ..ui.context import StudioContext

    def ensure(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    return StudioContext(
        host_provider=current_host,
        lora_dirs=lambda: [paths.lora_dir()],
        trained_dir=lambda: ensure(settings.trained_lora_dir()),
        data_roots=settings.dataset_roots,
        tagger_dir=lambda: ensure(settings.tagger_model_dir()),
        work_dir=lambda: ensure(paths.extension_data_dir()),
        standalone=False,
        gpu=WEBUI_GPU,
    )
