"""The `on_ui_tabs` callback: one "LoRA Studio" top-level tab holding the three sub-tabs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .host import current_host

if TYPE_CHECKING:
    import gradio as gr

TAB_TITLE = "LoRA Studio"
TAB_ID = "lora_studio"


def on_ui_tabs() -> list[tuple[gr.Blocks, str, str]]:
    """Build the tab without touching the model; the WebUI renders it as `#tab_lora_studio`."""
    from ..ui import build_studio

    return [(build_studio(current_host, standalone=False), TAB_TITLE, TAB_ID)]
