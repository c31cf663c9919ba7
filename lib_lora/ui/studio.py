"""`build_studio`: the three LoRA Studio tabs in one `gr.Blocks`, for the WebUI tab or the standalone app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from .blocks_tab import build_blocks_tab
from .common import HostProvider, build_model_panel
from .compat import blocks_kwargs, offline_theme
from .dataset_tab import TAB_ID as FIRST_TAB_ID
from .dataset_tab import build_dataset_tab
from .train_tab import build_train_tab

APP_TITLE = "LoRA Studio"
# The extension's root: the WebUI links style.css and javascript/*.js from here; standalone inlines them.
EXTENSION_ROOT = Path(__file__).resolve().parents[2]


def build_studio(host_provider: HostProvider, *, standalone: bool) -> gr.Blocks:
    """Build the UI without calling `host_provider`; events call it (refresh, tab select, page load).

    In the WebUI the result is rendered inside the host's `#tab_lora_studio`; standalone it is the whole page,
    wrapped in `#lora_studio_app`, with our CSS and JavaScript inlined and system fonts (no network).
    """
    page = _standalone_page() if standalone else {}
    with gr.Blocks(**blocks_kwargs(analytics_enabled=False, **page)) as blocks:
        with gr.Column(elem_id="lora_studio_app" if standalone else "lora_studio_root"):
            if standalone:
                gr.Markdown(f"# {APP_TITLE}", elem_id="lora_studio_title")
            panel = build_model_panel(host_provider)
            with gr.Tabs(selected=FIRST_TAB_ID, elem_id="lora_studio_tabs"):
                tabs = [build_dataset_tab(), build_train_tab(), build_blocks_tab()]
        for tab in tabs:
            panel.refresh_on(tab.select)
        if standalone:
            panel.refresh_on(blocks.load)
    return blocks


def _standalone_page() -> dict[str, Any]:
    return {"title": APP_TITLE, "css": _read("style.css"), "head": _script_tag(), "theme": offline_theme()}


def _read(relative: str) -> str | None:
    path = EXTENSION_ROOT / relative
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _script_tag() -> str | None:
    script = _read("javascript/lora_studio.js")
    return f"<script>\n{script}\n</script>" if script else None
