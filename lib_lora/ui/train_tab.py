"""The Train tab. Today: what it will do; in-process LoRA training arrives with issue #6."""

from __future__ import annotations

import gradio as gr

STATUS = (
    "**Not here yet — issue #6:** train a LoRA in-process on the model shown above, with no second "
    "copy of the checkpoint and the model restored exactly afterwards. This tab has no controls until then."
)

TAB_ID = "lora_studio_train"


def build_train_tab() -> gr.Tab:
    """Add the Train tab to the current `gr.Tabs` and return it (for its `select` event)."""
    with gr.Tab("Train", id=TAB_ID, elem_id="lora_studio_train_tab") as tab:
        gr.Markdown(STATUS, elem_id="lora_studio_train_status", elem_classes=["lora-studio-status"])
    return tab
