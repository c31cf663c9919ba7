"""`build_studio`: the three LoRA Studio tabs in one `gr.Blocks`, for the WebUI tab or the standalone app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from .blocks.tab import build_blocks_tab
from .compat import blocks_kwargs, offline_theme
from .context import StudioContext
from .dataset.tab import TAB_ID as FIRST_TAB_ID
from .dataset.tab import build_dataset_tab
from .model_panel import build_model_panel
from .train.tab import build_train_tab

APP_TITLE = "LoRA Studio"
# The extension's root: the WebUI links style.css and javascript/*.js from here; standalone inlines them.
EXTENSION_ROOT = Path(__file__).resolve().parents[2]


def build_studio(context: StudioContext) -> gr.Blocks:
    """Build the UI without calling the host provider or the folders; events call them.

    In the WebUI the result is rendered inside the host's `#tab_lora_studio`; standalone it is the whole page,
    wrapped in `#lora_studio_app`, with our CSS and JavaScript inlined and system fonts (no network).
    """
    standalone = context.standalone
    page = _standalone_page() if standalone else {}
    with gr.Blocks(**blocks_kwargs(analytics_enabled=False, **page)) as blocks:
        with gr.Column(elem_id="lora_studio_app" if standalone else "lora_studio_root"):
            if standalone:
                gr.Markdown(f"# {APP_TITLE}", elem_id="lora_studio_title")
            panel = build_model_panel(context.host_provider)
            with gr.Tabs(selected=FIRST_TAB_ID, elem_id="lora_studio_tabs"):
                tabs = [build_dataset_tab(context), build_train_tab(context), build_blocks_tab(context)]
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
    """Every `javascript/*.js`, in name order (the order the WebUI loads them in)."""
    scripts = [path.read_text(encoding="utf-8") for path in sorted((EXTENSION_ROOT / "javascript").glob("*.js"))]
    return "".join(f"<script>\n{script}\n</script>\n" for script in scripts) or None
