"""The Block Weight tab. Today: what it will do; presets, the prompt syntax and grids arrive with issue #4."""

from __future__ import annotations

import gradio as gr

STATUS = (
    "**Not here yet — issue #4:** per-block LoRA strengths — presets and a preset editor, the "
    "`<lora:name:0.8:NCNF>` prompt syntax, and block-by-block comparison grids. "
    "This tab has no controls until then."
)

TAB_ID = "lora_studio_blocks"


def build_blocks_tab() -> gr.Tab:
    """Add the Block Weight tab to the current `gr.Tabs` and return it (for its `select` event)."""
    with gr.Tab("Block Weight", id=TAB_ID, elem_id="lora_studio_blocks_tab") as tab:
        gr.Markdown(STATUS, elem_id="lora_studio_blocks_status", elem_classes=["lora-studio-status"])
    return tab
