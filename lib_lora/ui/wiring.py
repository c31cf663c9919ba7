"""Event wiring the tabs share: handlers return `{name: value}`, errors become one message in the tab's status.

`wire(listener, fn, inputs, outputs, tab=...)` connects a handler returning (or yielding) `{output name: value}`
to the components in `outputs` (which must include "status"). A `LoraStudioError` is shown as it is (an action
to confirm by doing it again as a warning); anything else is a bug: logged with its traceback and shown as
"Unexpected error". `error_markdown` is the UI's one edge where errors are reported: the Dataset tab, whose
events send its parts as a list (ui/dataset/wiring.py), words its errors with it too.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gradio as gr

from ..dataset.editing.errors import ConfirmationNeeded
from ..errors import LoraStudioError
from ..wording import escape_markdown

Component = Any
_log = logging.getLogger("lora_studio")


def error_markdown(error: BaseException, *, tab: str) -> str:
    """The status line for `error` raised by a `tab` handler (unexpected ones are logged with their traceback)."""
    if isinstance(error, ConfirmationNeeded):
        return f"⚠️ {error}"
    if isinstance(error, LoraStudioError):
        return f"**Error:** {escape_markdown(str(error))}"
    _log.exception("LoRA Studio %s: unexpected error", tab)
    text = escape_markdown(f"{type(error).__name__}: {error}")
    return f"**Unexpected error** (details in the console): {text}"


def bound(fn: Callable[..., Any], outputs: Mapping[str, Component], *, tab: str) -> Callable[..., Any]:
    """`fn`'s {name: value} results as {component: value}; an error becomes the `status` output instead."""
    status = outputs["status"]
    prefix = tab.lower().replace(" ", "_")

    def mapped(updates: Mapping[str, Any]) -> dict[Component, Any]:
        unknown = set(updates) - set(outputs)
        if unknown:
            raise KeyError(f"{fn.__name__} returned outputs it is not wired to: {sorted(unknown)}")
        if not updates:  # nothing changes; gradio takes an empty dict for a wrong number of outputs
            return {status: gr.update()}
        return {outputs[name]: value for name, value in updates.items()}

    if inspect.isgeneratorfunction(fn):
        def stream(*args: Any) -> Iterator[dict[Component, Any]]:
            try:
                for updates in fn(*args):
                    yield mapped(updates)
            except Exception as error:  # the edge: every failure is a message in the page
                yield {status: error_markdown(error, tab=tab)}

        stream.__name__ = f"{prefix}_{fn.__name__}"
        return stream

    def call(*args: Any) -> dict[Component, Any]:
        try:
            return mapped(fn(*args))
        except Exception as error:  # the edge: every failure is a message in the page
            return {status: error_markdown(error, tab=tab)}

    call.__name__ = f"{prefix}_{fn.__name__}"
    return call


def wire(listener: Callable[..., Any], fn: Callable[..., Any], inputs: list[Component],
         outputs: Mapping[str, Component], *, tab: str, **options: Any) -> Any:
    """`listener(bound(fn), inputs, outputs)`, not part of the API; returns the event (for `.then`)."""
    return listener(bound(fn, outputs, tab=tab), inputs=inputs, outputs=list(outputs.values()), api_name=False,
                    **options)
