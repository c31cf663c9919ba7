"""The Train tab. Today: what it will do; in-process LoRA training arrives with issue #6."""

from __future__ import annotations

import gradio as gr

from .common import build_status_tab
from .context import StudioContext

STATUS = (
    "**Not here yet — issue #6:** train a LoRA in-process on the model shown above, with no second "
    "copy of the checkpoint and the model restored exactly afterwards. This tab has no controls until then."
)

TAB_ID = "lora_studio_train"  # the id build_status_tab gives it


def build_train_tab(context: StudioContext) -> gr.Tab:
    """Add the Train tab to the current `gr.Tabs` and return it (for its `select` event)."""
    return build_status_tab("Train", "train", STATUS)
