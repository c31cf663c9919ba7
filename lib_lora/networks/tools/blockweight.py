"""Save a LoRA with its block weights baked in: the new file at 1.0 applies what the original applies with them.

Each module gets the multiplier the block-weight code gives it (blocks/apply.py, networks/attach.py):
text-encoder modules strength·BASE, UNet modules strength·(their block's weight), UNet parts no block covers
(time_embed, label_emb, out) and keys of no known block strength alone. Blocks come from the kohya name
(blocks/mapping.py `block_of_key`, both UNet spellings). A module of multiplier m is rewritten as:

- m = 1: unchanged; m = 0: left out (it would add nothing);
- with a rank (LoRA, LoCon, LoHa, ranked LoKr): alpha' = |m|·alpha, and for m < 0 one factor negated (up, w1_a,
  w1): the factors keep their bytes and dtype, so an fp16 file loses nothing to rounding (scaling an fp16 up
  factor would); a `scale` tensor, where a file has one, becomes m·scale instead;
- without a rank (full diff, LoKr of two full factors; their scale is 1 whatever alpha says): one factor × m,
  stored in float32;
- bias terms (LyCORIS diff_b, a 1-D bias) × m in float32; a weight-shaped bias follows its factors.
DoRA modules are refused unless m = 1: their multiplier interpolates a norm ratio of the base weight, which no
file-only change reproduces.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...arch import Arch, get_arch
from ...backups import replacing
from ...unet_blocks import BASE, block_of_key
from ..families import arch_of
from ..files import save_lora_file
from ..formats.base import NetworkModule
from ..loaded import LoraNetwork, load_network
from .deltas import NetworkToolError, check_output_path, derived_metadata
from .merge import Modules

_SIGN_FACTORS: dict[str, tuple[str, ...]] = {
    "lora": ("lora_up.weight", "lora_B.weight"),
    "loha": ("hada_w1_a",),
    "lokr": ("lokr_w1", "lokr_w1_a"),
}
"""Per format, the factor whose sign flips ΔW (the first one present)."""
_UNRANKED_FACTORS: dict[str, tuple[str, ...]] = {"full": ("diff",), "lokr": ("lokr_w1",)}
"""Per format without a rank, the factor multiplied by m."""


def module_multipliers(keys: list[str] | tuple[str, ...], weights: Mapping[str, float], arch: Arch | str, *,
                       strength: float = 1.0) -> dict[str, float]:
    """{key: multiplier}: strength × BASE for text-encoder keys, strength × the block's weight for UNet keys
    (1 for blocks missing from `weights`, the parts no block covers and unknown keys)."""
    resolved = arch if isinstance(arch, Arch) else get_arch(arch)
    multipliers = {}
    for key in keys:
        block = block_of_key(key, resolved)
        weight = weights.get(BASE, 1.0) if block == BASE else weights.get(block or "", 1.0)
        multipliers[key] = float(strength) * float(weight)
    return multipliers


def scale_module(module: NetworkModule, multiplier: float) -> dict[str, Tensor] | None:
    """The module's tensors rewritten to apply ΔW × `multiplier` at 1.0 (see module docstring); None for 0."""
    tensors = dict(module.tensors)
    if multiplier == 1:
        return tensors
    if multiplier == 0:
        return None
    if module.dora_scale is not None:
        raise NetworkToolError(f"module {module.key!r} is DoRA: its block weight {multiplier:g} cannot be baked into "
                               "the file without the base model; use weight 1 for its block, or apply it in the "
                               "prompt instead")
    negate = False
    if "scale" in tensors:
        tensors["scale"] = torch.tensor(module.scale * multiplier, dtype=torch.float32).reshape(tensors["scale"].shape)
    elif module.rank is not None:
        alpha = module.alpha if module.alpha is not None else float(module.rank)
        tensors["alpha"] = torch.tensor(alpha * abs(multiplier), dtype=torch.float32)
        negate = multiplier < 0
    else:
        name = next((n for n in _UNRANKED_FACTORS.get(module.format, ()) if n in tensors), None)
        if name is None:
            raise NetworkToolError(f"module {module.key!r} ({module.kind}) has no factor to scale")
        tensors[name] = tensors[name].to(torch.float32) * multiplier
        if _weight_shaped_bias(tensors):
            tensors["bias"] = tensors["bias"].to(torch.float32) * multiplier
    if negate:
        name = next(n for n in _SIGN_FACTORS[module.format] if n in tensors)
        tensors[name] = -tensors[name]
        if _weight_shaped_bias(tensors):
            tensors["bias"] = -tensors["bias"]
    for name in ("diff_b", "bias"):
        if name in tensors and not (name == "bias" and _weight_shaped_bias(tensors)):
            tensors[name] = tensors[name].to(torch.float32) * multiplier
    return tensors


def _weight_shaped_bias(tensors: Mapping[str, Tensor]) -> bool:
    """Whether `bias` is A1111's weight-shaped term (added to ΔW before scaling), not a layer bias."""
    bias = tensors.get("bias")
    return bias is not None and bias.dim() >= 2


def block_weighted_state(network: Modules | LoraNetwork, weights: Mapping[str, float], arch: Arch | str, *,
                         strength: float = 1.0) -> dict[str, Tensor]:
    """The flat kohya state dict of `network` with `weights` ({block id: weight}, BASE for the text encoders) and
    `strength` baked in; modules of multiplier 0 are left out. Inputs are not changed."""
    modules = network.modules if isinstance(network, LoraNetwork) else network
    multipliers = module_multipliers(list(modules), weights, arch, strength=strength)
    state: dict[str, Tensor] = {}
    for key, module in modules.items():
        tensors = scale_module(module, multipliers[key])
        if tensors is not None:
            state.update({f"{key}.{suffix}": tensor for suffix, tensor in tensors.items()})
    return state


@dataclass(frozen=True)
class BlockWeightReport:
    """What `block_weight_lora_file` wrote: modules kept unchanged, rescaled, and left out (weight 0)."""

    arch: str
    unchanged: int
    scaled: int
    dropped: int


def block_weight_lora_file(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    weights: Mapping[str, float],
    *,
    arch: str | None = None,
    strength: float = 1.0,
    spec: str = "",
    overwrite: bool = False,
) -> BlockWeightReport:
    """Write `out`: the LoRA at `path` with `weights` and `strength` baked in (`block_weighted_state`), its metadata
    kept and MERGE_KEY recording the source, its hash and the weights (`spec` names them, e.g. a preset).

    `arch` is the family the weights were expanded for (default: the file's); NetworkToolError when the file is
    for another family, when its family is unknown and none is given, or when every module would be left out.
    """
    out = check_output_path(out, [path], overwrite=overwrite)
    network = load_network(path)
    own = arch_of(network.modules, network.metadata)
    arch = arch or own
    if arch is None:
        raise NetworkToolError(f"{Path(path).name}: its model family is unknown; give it (--arch)")
    if own is not None and own != arch:
        raise NetworkToolError(f"{Path(path).name} is a LoRA for {own.upper()}, not {arch.upper()}; its blocks "
                               "are not the ones these weights are for")
    multipliers = module_multipliers(list(network.modules), weights, arch, strength=strength)
    state = block_weighted_state(network, weights, arch, strength=strength)
    kept = [m for key, m in network.modules.items() if multipliers[key] != 0]
    if not kept:
        raise NetworkToolError("every module has weight 0 with these block weights: the file would change nothing")
    ranked = [(key, m) for key, m in network.modules.items() if multipliers[key] != 0 and m.rank is not None]
    ranks = [int(m.rank or 1) for _, m in ranked] or [1]
    alphas = [float(state[f"{key}.alpha"]) if f"{key}.alpha" in state else float(m.rank or 1)
              for key, m in ranked] or [1.0]
    label = spec or "block weights"
    note = f"{label} at strength {strength:g} baked in by LoRA Studio from {Path(path).name}"
    record = {
        "method": "blocks", "blocks": spec, "strength": float(strength),
        "weights": {block: float(w) for block, w in weights.items()},
        "sources": [{"name": Path(path).name, "sshs_model_hash": network.identity, "weight": float(strength)}],
    }
    metadata = derived_metadata(network.metadata, arch=arch, ranks=ranks, alphas=alphas, note=note,
                                output_name=Path(out).stem, merge=record)
    with replacing(out):
        save_lora_file(out, state, metadata)
    scaled = sum(1 for m in multipliers.values() if m not in (0, 1))
    dropped = sum(1 for m in multipliers.values() if m == 0)
    return BlockWeightReport(arch, len(multipliers) - scaled - dropped, scaled, dropped)
