"""The model/host panel every tab shows: what is loaded, refreshed on demand, never at build time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import gradio as gr

from ..errors import LoraStudioError
from ..wording import escape_markdown
from .compat import QUIET_EVENT

if TYPE_CHECKING:
    from ..hosts.base import Host

HostProvider = Callable[[], Optional["Host"]]

NO_MODEL_MESSAGE = "**No model is loaded.** Load a checkpoint, then press **Refresh**."
NOT_LOADED_YET_MESSAGE = "The loaded model is shown when this tab is opened, or press **Refresh**."
ERROR_PREFIX = "**Model not available:**"



def describe_host(host_provider: HostProvider) -> str:
    """Markdown for the panel: the host's `info()`, or a one-line reason when there is no usable model.

    A `LoraStudioError` from the provider or from `info()` becomes that reason; anything else is a bug and
    propagates.
    """
    try:
        host = host_provider()
        if host is None:
            return NO_MODEL_MESSAGE
        return host.info().as_markdown()
    except LoraStudioError as exc:
        return f"{ERROR_PREFIX} {escape_markdown(str(exc))}"


@dataclass(frozen=True)
class ModelPanel:
    """The panel's components and the callback that fills it."""

    markdown: gr.Markdown
    refresh_button: gr.Button
    describe: Callable[[], str]

    def refresh_on(self, listener: Callable[..., Any]) -> None:
        """Refresh the panel when the event `listener` (e.g. `tab.select`, `blocks.load`) fires."""
        listener(self.describe, inputs=None, outputs=[self.markdown], **QUIET_EVENT)


def build_model_panel(host_provider: HostProvider) -> ModelPanel:
    """Build the panel inside the current Blocks context; the provider is only called by events."""

    def describe() -> str:
        return describe_host(host_provider)

    with gr.Row(elem_id="lora_studio_model_row", equal_height=True):
        markdown = gr.Markdown(NOT_LOADED_YET_MESSAGE, elem_id="lora_studio_model_info")
        button = gr.Button(
            "Refresh",
            elem_id="lora_studio_model_refresh",
            variant="secondary",
            size="sm",
            scale=0,
            min_width=90,
        )
    panel = ModelPanel(markdown=markdown, refresh_button=button, describe=describe)
    panel.refresh_on(button.click)
    return panel


def build_status_tab(title: str, key: str, status: str) -> gr.Tab:
    """A sub-tab `lora_studio_<key>` that shows one status line; returned for its `select` event."""
    with gr.Tab(title, id=f"lora_studio_{key}", elem_id=f"lora_studio_{key}_tab") as tab:
        gr.Markdown(status, elem_id=f"lora_studio_{key}_status", elem_classes=["lora-studio-status"])
    return tab
