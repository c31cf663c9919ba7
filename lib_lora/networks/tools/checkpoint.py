"""Original-format single-file checkpoints: read them, find each kohya key's tensor, bake LoRAs into them.

Keys are mapped through keys.py on a module tree synthesised from the checkpoint's own tensor names (no model
class, no diffusers): the UNet under `model.diffusion_model.` is an LDM-layout tree, the text encoders under
`cond_stage_model.transformer.` (SD1), `cond_stage_model.model.` (SD2, open_clip) or
`conditioner.embedders.0.transformer.` / `conditioner.embedders.1.model.` (SDXL, HF CLIP-L and open_clip
bigG) are reached through their HF names, and a module holding `in_proj_weight` becomes an
nn.MultiheadAttention so q/k/v keys land on their rows of the fused weight. The tree's tensors are the
checkpoint's own (shared, not copied), so writing a target writes the checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ...backups import replacing
from ...errors import LoraFormatError
from ..attach import AppliedLora
from ..files import load_lora_file, save_safetensors_file
from ..formats.base import NetworkModule
from ..keys import Target, TargetIndex, build_target_index_for
from ..loaded import as_applied, load_network
from ..metadata import baked_checkpoint_metadata, baked_history
from .deltas import NetworkToolError, check_output_path

MAX_CHECKPOINT_BYTES = 64 * 1024**3
UNET_PREFIX = "model.diffusion_model."
TEXT_ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
"""Where each family's text encoders live in an original-format checkpoint, in kohya order (te1, te2)."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its tensors (ours to change), metadata, family and the index over its weights."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    arch: str
    index: TargetIndex


def checkpoint_arch(names: Sequence[str] | Mapping[str, object], *, path: object = None) -> str:
    """sd1, sd2 or sdxl from an original-format checkpoint's tensor names; NetworkToolError for anything else."""
    names = list(names)
    if not any(name.startswith(UNET_PREFIX) for name in names):
        raise NetworkToolError(f"{path or 'checkpoint'}: not an original-format SD1/SD2/SDXL checkpoint (no "
                               f"{UNET_PREFIX}* tensors; diffusers-layout files are not supported)")
    if any(name.startswith(("conditioner.embedders.", UNET_PREFIX + "label_emb.")) for name in names):
        return "sdxl"
    if any(name.startswith(TEXT_ENCODER_PREFIXES["sd2"]) for name in names):
        return "sd2"
    return "sd1"


def module_tree(tensors: Mapping[str, Tensor], prefix: str) -> nn.Module:
    """A module tree holding the tensors named `prefix…` under their paths (the same tensor objects' storage).

    Plain modules hold them as buffers; a module with `in_proj_weight` is an nn.MultiheadAttention built on the
    meta device whose parameters are then replaced by the checkpoint's.
    """
    local = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
    fused = {name[: -len(".in_proj_weight")] for name in local if name.endswith(".in_proj_weight")}
    root = nn.Module()
    for name, tensor in local.items():
        module_path, _, attr = name.rpartition(".")
        module = _ensure(root, module_path, fused, local)
        if attr in module._parameters:
            setattr(module, attr, nn.Parameter(tensor, requires_grad=False))
        elif not hasattr(module, attr) or attr in module._buffers:
            module.register_buffer(attr, tensor)
    return root


def _ensure(root: nn.Module, path: str, fused: set[str], local: Mapping[str, Tensor]) -> nn.Module:
    module, walked = root, ""
    for part in path.split(".") if path else ():
        walked = f"{walked}.{part}" if walked else part
        child = module._modules.get(part)
        if child is None:
            if walked in fused:
                width = local[walked + ".in_proj_weight"].shape[1]
                child = nn.MultiheadAttention(width, 1, bias=walked + ".in_proj_bias" in local, device="meta")
            else:
                child = nn.Module()
            module.add_module(part, child)
        module = child
    return module


def checkpoint_index(tensors: Mapping[str, Tensor], arch: str) -> TargetIndex:
    """The TargetIndex over a checkpoint's UNet and text-encoder tensors (writing a target writes the tensor)."""
    unet = module_tree(tensors, UNET_PREFIX)
    encoders = [module_tree(tensors, prefix) for prefix in TEXT_ENCODER_PREFIXES[arch]]
    return build_target_index_for(unet, "ldm", encoders, arch)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate an original-format checkpoint (.safetensors, or a weights-only pickle) and index it."""
    loaded = load_lora_file(path, max_bytes=MAX_CHECKPOINT_BYTES)
    arch = checkpoint_arch(loaded.tensors, path=loaded.path)
    return Checkpoint(loaded.path, loaded.tensors, loaded.metadata, arch, checkpoint_index(loaded.tensors, arch))


# --- baking --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BakedLora:
    """One LoRA baked in: where from, at what ratio, how many of its modules found a weight, which did not."""

    path: Path
    ratio: float
    matched: int
    unmatched: tuple[str, ...]


@dataclass(frozen=True)
class BakeReport:
    """What `bake_into_checkpoint` did: the family, each LoRA, how many weight tensors changed."""

    arch: str
    loras: tuple[BakedLora, ...]
    weights_changed: int


_Slot = tuple[int, str, int | None]  # (module id, parameter, first row of a fused q/k/v slice)


def merge_into_index_(
    index: TargetIndex,
    loras: Sequence[AppliedLora],
    *,
    paths: Sequence[object] = (),
    device: torch.device | str = "cpu",
) -> tuple[int, dict[str, list[str]]]:
    """Add each LoRA's deltas to the weights of `index`, in place: per weight, base + Σ deltas in float32 (against
    the same base, as WeightMerger), cast once. Returns (weights changed, {lora name: unmatched keys})."""
    slots: dict[_Slot, tuple[Target, list[tuple[NetworkModule, float, object]]]] = {}
    unmatched: dict[str, list[str]] = {}
    for number, lora in enumerate(loras):
        matched, missing = index.match(lora.modules.keys())
        unmatched[lora.name] = missing
        for key, target in matched.items():
            multiplier = lora.multiplier_for(target)
            if multiplier != 0.0:
                slot = (id(target.module), target.param_name, target.rows.start if target.rows else None)
                origin = paths[number] if number < len(paths) else lora.name
                slots.setdefault(slot, (target, []))[1].append((lora.modules[key], multiplier, origin))
    for target, contributions in slots.values():
        try:
            _write_sum_(target, contributions, device)
        except LoraFormatError as error:
            origin = next((o for m, _, o in contributions if m.key == error.key), contributions[0][2])
            raise type(error)(error.reason, path=origin, key=error.key) from error
    return len(slots), unmatched


@torch.no_grad()
def _write_sum_(target: Target, contributions: list[tuple[NetworkModule, float, object]],
                device: torch.device | str) -> None:
    weight = target.weight
    base = weight.detach().to(device, torch.float32)
    total = base.clone()
    for module, multiplier, _ in contributions:
        total += module.delta_weight(base, multiplier)
    biases = [(m, m.bias_delta(multiplier)) for m, multiplier, _ in contributions]
    biases = [(m, b) for m, b in biases if b is not None]
    layer_bias = getattr(target.module, "bias", None)
    if biases and (target.rows is not None or not isinstance(layer_bias, Tensor)):
        raise LoraFormatError("has a bias delta but its target has no bias", key=biases[0][0].key)
    if not torch.isfinite(total).all():
        raise LoraFormatError("merging gives non-finite weights", key=contributions[0][0].key)
    weight.copy_(total.to(weight.dtype))
    if biases:
        new_bias = layer_bias.detach().to(device, torch.float32) + sum(b.to(device) for _, b in biases)
        layer_bias.copy_(new_bias.reshape(layer_bias.shape).to(layer_bias.dtype))


def bake_into_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    loras: Sequence[tuple[str | os.PathLike[str], float]],
    out_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
) -> BakeReport:
    """Write `out_path`: the checkpoint with each (LoRA file, ratio) merged into its weights (UNet and text
    encoders at that ratio), the checkpoint's metadata kept and BAKED_KEY extended; atomic write.

    Raises NetworkToolError when a LoRA matches no weight at all (another family?); keys that match nothing
    are reported per LoRA.
    """
    paths = [Path(path) for path, _ in loras]
    out = check_output_path(out_path, [checkpoint_path, *paths], overwrite=overwrite)
    if not loras:
        raise NetworkToolError("nothing to bake: no LoRA given")
    checkpoint = load_checkpoint(checkpoint_path)
    networks = [load_network(path, name=f"{number}:{path.name}") for number, path in enumerate(paths)]
    applied = [as_applied(n, te_multiplier=float(r), unet_multiplier=float(r)) for n, (_, r) in zip(networks, loras)]
    changed, unmatched = merge_into_index_(checkpoint.index, applied, paths=paths, device=device)
    baked = []
    for network, path, (_, ratio) in zip(networks, paths, loras):
        missing = unmatched[network.name]
        if len(missing) == len(network.modules):
            raise NetworkToolError(f"{path}: none of its {len(missing)} modules matches a weight of the "
                                   f"{checkpoint.arch} checkpoint {checkpoint.path.name} (a LoRA for another "
                                   "model family?)")
        baked.append(BakedLora(path, float(ratio), len(network.modules) - len(missing), tuple(missing)))
    history = baked_history(checkpoint.metadata)
    history += [{"name": p.name, "ratio": float(r), "sshs_model_hash": n.identity}
                for n, p, (_, r) in zip(networks, paths, loras)]
    names = ", ".join(f"{p.name} × {r:g}" for p, (_, r) in zip(paths, loras))
    metadata = baked_checkpoint_metadata(checkpoint.metadata, history, f"LoRAs baked in by LoRA Studio: {names}")
    with replacing(out):
        save_safetensors_file(out, checkpoint.tensors, metadata)
    return BakeReport(checkpoint.arch, tuple(baked), changed)

