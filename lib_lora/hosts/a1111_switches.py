"""While a run trains the WebUI's loaded model, the WebUI's settings that would swap that model out are refused.

A1111 applies a new checkpoint, VAE or SD-UNet choice in the setting's `onchange` callback, which `Options.set`
runs after storing the value; when the callback raises, `Options.set` shows the error, puts the old value back and
reports no change, so the quick-settings dropdown snaps back. Loading other weights into the model being trained
would change the base mid-run (and `send_model_to_trash` would move it to the meta device), so for the length of a
run each of these callbacks is replaced by one that raises, and put back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import HostError

MODEL_SETTINGS = ("sd_model_checkpoint", "sd_vae", "sd_unet")
"""The WebUI settings whose change loads other weights into (or around) the loaded model."""


@contextmanager
def model_switches_refused(opts: Any, holder: str) -> Iterator[list[str]]:
    """Make every MODEL_SETTINGS change through `opts` (A1111's `shared.opts`) fail with a HostError naming
    `holder` ("training") until exit; yields the settings guarded. Settings without a callback, or an `opts`
    without `data_labels` (not A1111's Options), are left as they are; a callback someone else replaced meanwhile
    is kept on exit."""
    labels = getattr(opts, "data_labels", None)
    guarded: list[tuple[str, Any, Callable[[], Any], Callable[[], Any]]] = []
    try:
        for key in MODEL_SETTINGS if isinstance(labels, dict) else ():
            info = labels.get(key)
            original = getattr(info, "onchange", None)
            if original is None:
                continue
            refuse = _refusal(key, holder)
            info.onchange = refuse
            guarded.append((key, info, original, refuse))
        yield [key for key, *_ in guarded]
    finally:
        for _, info, original, refuse in guarded:
            if info.onchange is refuse:
                info.onchange = original


def _refusal(key: str, holder: str) -> Callable[[], None]:
    def refuse() -> None:
        raise HostError(f"LoRA Studio: {key} cannot change while the loaded model is busy with {holder}; "
                        "stop it in the Train tab (or wait for it to finish), then switch")

    return refuse
