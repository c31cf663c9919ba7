"""The WebUI's host provider for the UI: the loaded model as a Host, built only when the user acts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..hosts.base import Host


def current_host() -> Host:
    """The WebUI's loaded model as a Host; HostError when none is loaded. May load it: events only."""
    from ..hosts.a1111 import A1111Host

    return A1111Host.from_webui()
