"""The WebUI's host provider for the UI: the loaded model as a Host, built only when the user acts.

Which Host depends on the WebUI: Forge Neo (`modules_forge.forge_version.version == "neo"`) -> ForgeNeoHost;
lllyasviel's Forge 2 (version "2.…" / "f2.…") -> ForgeHost; another Forge -> HostError naming its version;
AUTOMATIC1111 (no `modules_forge`) -> A1111Host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import HostError

if TYPE_CHECKING:
    from ..hosts.base import Host


def is_forge2(version: str) -> bool:
    """Whether `version` is lllyasviel's Forge 2 (e.g. "2.0.1v1.10.1", "f2.0.1v1.10.1-previous-…")."""
    return version.startswith(("2.", "f2."))


def current_host() -> Host:
    """The WebUI's loaded model as a Host; HostError when none is loaded or the WebUI is not one we support.
    May load the model: events only."""
    from ..hosts.forge_neo import NEO_VERSION, forge_version

    version = forge_version()
    if version is None:
        from ..hosts.a1111 import A1111Host

        return A1111Host.from_webui()
    if version == NEO_VERSION:
        from ..hosts.forge_neo import ForgeNeoHost

        return ForgeNeoHost.from_webui()
    if is_forge2(version):
        from ..hosts.forge import ForgeHost

        return ForgeHost.from_webui()
    raise HostError(f"LoRA Studio does not support this Forge version {version!r}: it works with Forge Neo "
                    "(the `neo` branch), lllyasviel's Forge 2 and AUTOMATIC1111 1.10")
