"""Gradio 3.41 (A1111 1.10) vs 4.x (Forge, standalone): the differences the builders meet."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import gradio as gr

GRADIO_MAJOR: int = int(gr.__version__.split(".", 1)[0])

# Event options both versions accept: no progress overlay, run outside the queue, not part of the API.
QUIET_EVENT: dict[str, Any] = {"show_progress": "hidden", "queue": False, "api_name": False}


def blocks_kwargs(**candidates: Any) -> dict[str, Any]:
    """The subset of `candidates` this gradio's `gr.Blocks` accepts (3.41: no `head=`, `fill_height=`)."""
    accepted = inspect.signature(gr.Blocks.__init__).parameters
    return {name: value for name, value in candidates.items() if name in accepted and value is not None}


def offline_theme() -> gr.themes.ThemeClass:
    """The default theme with system fonts: the stock one links Google Fonts (offline: errors)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "Consolas", "monospace"],
    )


def event_functions(blocks: gr.Blocks) -> list[Callable[..., Any]]:
    """The Python callbacks wired in `blocks` (`Blocks.fns` is a list in 3.41 and a dict in 4.x)."""
    fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    return [block_fn.fn for block_fn in fns if block_fn.fn is not None]
