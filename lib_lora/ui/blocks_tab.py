"""The Block Weight tab. Today: what it will do; presets, the prompt syntax and grids arrive with issue #4."""

from __future__ import annotations

import gradio as gr

from .common import build_status_tab
from .context import StudioContext

STATUS = (
    "**Not here yet — issue #4:** per-block LoRA strengths — presets and a preset editor, the "
    "`<lora:name:0.8:NCNF>` prompt syntax, and block-by-block comparison grids. "
    "This tab has no controls until then."
)

TAB_ID = "lora_studio_blocks"  # the id build_status_tab gives it


def build_blocks_tab(context: StudioContext) -> gr.Tab:
    """Add the Block Weight tab to the current `gr.Tabs` and return it (for its `select` event)."""
    return build_status_tab("Block Weight", "blocks", STATUS)
