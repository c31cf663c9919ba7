"""What the block-weight controller (`blockweight`) reads from the WebUI: the loaded model's family, whether it is a
Forge model, the steps of the pass, whether LBW runs; and `ActivationHook`, which lets it plan each LoRA activation
of a Forge WebUI from the exact tags activated.

Why the hook: Forge's loader receives only (name, te, unet) per LoRA, so `<lora:x:1>` in the prompt and
`<lora:x:1:NCNF>` in the hires prompt look the same to it; and Neo activates the hires prompt's LoRAs during the
first pass too (to compute the hires conditioning, then the first pass's again). Planning by what each call of
`modules.extra_networks.activate` is given keeps each pass's block weights to that pass.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ...arch import ARCHS, Arch

__all__ = ["LBW_ACTIVE_INPUT", "LBW_TITLE", "ActivationHook", "arch_of", "is_forge", "lbw_active", "pass_steps",
           "webui_extra_networks"]

LBW_TITLE = "LoRA Block Weight"
"""The title of hako-mikan's sd-webui-lora-block-weight script, which scales the same `lbw=` tags in place."""
LBW_ACTIVE_INPUT = 1
"""The position of LBW's Active box among its script inputs (presets text, Active, …)."""

Before = Callable[[Any, Any], None]
"""Called with (p, extra_network_data) before each activation goes through."""


def webui_extra_networks() -> Any | None:
    """The WebUI's `modules.extra_networks` once loaded (never imported here), else None."""
    module = sys.modules.get("modules.extra_networks")
    return module if callable(getattr(module, "activate", None)) else None


class ActivationHook:
    """Wraps `extra_networks.activate` until `restore()`: `before(p, extra_network_data)` runs before each call."""

    def __init__(self) -> None:
        self._module: Any = None
        self._original: Callable[..., Any] | None = None
        self._own_attribute = True
        self._before: Before | None = None

    @property
    def installed(self) -> bool:
        return self._original is not None

    def install(self, module: Any, before: Before) -> None:
        """Wrap `module.activate` (a module or an object with one); replaces an earlier install."""
        self.restore()
        self._module, self._before = module, before
        self._original = module.activate
        self._own_attribute = "activate" in vars(module)
        module.activate = self._activate

    def restore(self) -> None:
        """Put the WebUI's `activate` back (if nobody replaced our wrapper meanwhile)."""
        try:
            if self._module is not None and vars(self._module).get("activate") == self._activate:
                if self._own_attribute:
                    self._module.activate = self._original
                else:  # it came from the class: exact means removing ours
                    del self._module.activate
        finally:
            self._module = self._original = self._before = None

    def _activate(self, p: Any, extra_network_data: Any, *args: Any, **kwargs: Any) -> Any:
        assert self._original is not None and self._before is not None
        self._before(p, extra_network_data)
        return self._original(p, extra_network_data, *args, **kwargs)


def lbw_active(p: Any) -> bool:
    """Whether LBW runs in this generation: its always-on script is among `p.scripts` and its Active input is on
    (None counts as on, as LBW reads it; an input we cannot find counts as LBW's default, on)."""
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or ():
        try:
            if script.title() != LBW_TITLE:
                continue
        except Exception:  # noqa: BLE001 - someone else's script: a broken title() is not ours to report
            continue
        args = tuple(getattr(p, "script_args", None) or ())
        start = getattr(script, "args_from", None)
        if not isinstance(start, int) or not 0 <= start + LBW_ACTIVE_INPUT < len(args):
            return True
        active = args[start + LBW_ACTIVE_INPUT]
        return active is None or bool(active)
    return False


def arch_of(sd_model: Any) -> Arch | None:
    """The family of A1111's or Forge's loaded model from its `is_sdxl`/`is_sd2`/`is_sd1` flags; None for others."""
    if getattr(sd_model, "is_sd3", False) is True:
        return None
    for flag, name in (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd1")):
        if getattr(sd_model, flag, False) is True:
            return ARCHS[name]
    return None


def is_forge(sd_model: Any) -> bool:
    """Whether the model is a Forge model (Forge 2 or Forge Neo): it carries `forge_objects`, and its LoRAs are
    patches on them, weighted by `blockweight_forge`."""
    return hasattr(sd_model, "forge_objects")


def pass_steps(p: Any) -> int:
    """The sampling steps of the pass being set up (hires: its own steps, else the first pass's)."""
    if getattr(p, "is_hr_pass", False):
        return int(getattr(p, "hr_second_pass_steps", 0) or p.steps)
    return int(p.steps)
