"""Forge Neo's LoRA loading (backend/patcher/lora.py, which re-exports its vendored copy of ComfyUI's
`load_lora`, `model_lora_keys_unet`, `model_lora_keys_clip`; sd_forge_lora networks.py `load_lora_for_models`).

Read from its code, written in our words: the key maps and `load_lora` are ComfyUI's (comfyui.py) without the
`lora_prior_` and `text_projection` names; Neo runs `load_lora` on the UNet map, then what is left on the CLIP
map. A LoRA with more than half of its keys left over is skipped whole ("LoRA mismatch": its other keys
fail as not loaded). The patches then go to model weights the maps were built from, so none is skipped there.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...wording import plural
from . import comfyui
from .layouts import family_layout
from .report import NOT_LOADED, KeyFailure, LoaderReport, account

NAME = "forge_neo"
TITLE = "Forge Neo"
SKIP_SHARE = 0.5
"""Neo skips a LoRA whose unmatched keys are more than this share of its keys."""


def check(keys: Iterable[str], arch: str) -> LoaderReport:
    """What Forge Neo would apply of a LoRA with these tensor keys on a model of `arch` (sd1 or sdxl)."""
    keys = list(dict.fromkeys(keys))
    mapping = comfyui.key_map(family_layout(arch), neo=True)
    failed: dict[str, KeyFailure] = comfyui.failures(keys, mapping)
    if keys and len(failed) / len(keys) > SKIP_SHARE:
        why = f"Neo skips a LoRA with more than half its keys unmatched ({len(failed):,} of {plural(len(keys), 'key')})"
        failed = {key: failed.get(key) or KeyFailure(key, NOT_LOADED, why) for key in keys}
    return account(NAME, TITLE, arch, keys, failed)
