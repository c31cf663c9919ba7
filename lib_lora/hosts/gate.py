"""The one gate on a WebUI's loaded model: training holds it, and generation (ours and the WebUI's) is refused.

It lives with the hosts because every WebUI host's `generate` marks its own generations with the holder, so that
a run's sample images pass the gate that refuses everyone else's.
"""

from __future__ import annotations

from typing import Any

from ..jobs import GpuGate

WEBUI_GPU = GpuGate()
"""The WebUI's gate: the Train tab holds it for a run; the block-weight script refuses other generations."""
ALLOW_WHILE_HELD_ATTR = "lora_studio_gpu_holder"
"""Set `p.<this> = gate.holder` on a generation the gate's holder runs itself (training's sample images)."""


def mark_own_generation(p: Any) -> None:
    """Let the processing object `p` through the gate when it is the holder's own (None when nobody holds it)."""
    setattr(p, ALLOW_WHILE_HELD_ATTR, WEBUI_GPU.holder)
