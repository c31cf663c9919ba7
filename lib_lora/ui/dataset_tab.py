"""The Dataset tab. Today: what it will do; WD14 tagging and the tag editor arrive with issue #5."""

from __future__ import annotations

import gradio as gr

from .common import build_status_tab
from .context import StudioContext

STATUS = (
    "**Not here yet — issue #5:** tag a folder of images with a WD14 tagger and edit the tags in the browser "
    "(add, remove, replace, frequencies, consolidation into a trigger word). "
    "This tab has no controls until then."
)

TAB_ID = "lora_studio_dataset"  # the id build_status_tab gives it


def build_dataset_tab(context: StudioContext) -> gr.Tab:
    """Add the Dataset tab to the current `gr.Tabs` and return it (for its `select` event)."""
    return build_status_tab("Dataset", "dataset", STATUS)
