"""Merge several networks into one LoRA: exact by concatenating ranks, or by SVD of the summed ΔW.

Concat (no rank given, every module a plain LoRA): each input's up is multiplied by ratio·scale and the factors
stacked, up = [up_1' | up_2' | …], down = [down_1; down_2; …], alpha = Σ r_i, so the scale is 1 and
up·down = Σ ratio_i·ΔW_i exactly. SVD (a rank given, or any LoHa/LoKr/full/Tucker module): per key the scaled
ΔWs are summed and cut to the best rank-r approximation (alpha = r). Modules are matched by kohya name; the
same layer spelled two ways (diffusers vs LDM) stays two modules, which loaders sum anyway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...backups import replacing
from ..files import save_lora_file
from ..formats.base import NetworkModule
from ..formats.lora import MID, LoraModule
from ..network import LoraNetwork, load_network
from .common import (
    NetworkToolError,
    RankRule,
    bias_delta_tensors,
    check_output_path,
    derived_metadata,
    factors_to_lora,
    low_rank,
    module_delta,
    natural_shape,
)
from .info import arch_of
from .resize import flatten

Modules = Mapping[str, NetworkModule]


def merge_networks(
    networks_with_ratios: Sequence[tuple[Modules | LoraNetwork, float]],
    *,
    rank: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """The flat kohya state dict of Σ ratio_i·network_i (see module docstring); inputs are not changed.

    Raises NetworkToolError for DoRA modules (their delta depends on the base weight), for non-LoRA modules
    when no `rank` is given, and for modules of one name whose layer shapes disagree.
    """
    if not networks_with_ratios:
        raise NetworkToolError("nothing to merge: no networks given")
    rule = None if rank is None else RankRule(rank=rank)
    by_key: dict[str, list[tuple[NetworkModule, float]]] = {}
    for network, ratio in networks_with_ratios:
        modules = network.modules if isinstance(network, LoraNetwork) else network
        for key, module in modules.items():
            if module.dora_scale is not None:
                raise NetworkToolError(f"module {key!r} is DoRA: its delta depends on the base weight, so DoRA "
                                       "networks cannot be merged without a model (bake them into a checkpoint)")
            by_key.setdefault(key, []).append((module, float(ratio)))
    if rule is None:
        not_plain = next((k for k, parts in by_key.items() for m, _ in parts if not _is_plain_lora(m)), None)
        if not_plain is not None:
            kind = next(m.kind for m, _ in by_key[not_plain] if not _is_plain_lora(m))
            raise NetworkToolError(f"module {not_plain!r} is {kind} (not a plain LoRA), so the networks cannot be "
                                   "merged exactly by concatenation; give a rank (--rank) to merge by SVD")
    merged: dict[str, dict[str, Tensor]] = {}
    for key, parts in by_key.items():
        tensors = _concat(key, parts, dtype) if rule is None else _svd(key, parts, rule, device, dtype)
        biases = [bias_delta_tensors(m, ratio) for m, ratio in parts]
        if any(biases):
            tensors["diff_b"] = sum(b["diff_b"] for b in biases if b)
        merged[key] = tensors
    return flatten(merged)


def _is_plain_lora(module: NetworkModule) -> bool:
    return isinstance(module, LoraModule) and MID not in module.tensors


def _layer_shape(key: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The one layer shape of a key's modules (the most specific of equal-sized ones); raises if they differ."""
    shape = max(shapes, key=len)
    if any(s[0] != shape[0] or torch.Size(s).numel() != torch.Size(shape).numel() for s in shapes):
        raise NetworkToolError(f"module {key!r} has different layer shapes in the inputs: {sorted(set(shapes))}")
    return shape


def _concat(key: str, parts: list[tuple[NetworkModule, float]], dtype: torch.dtype) -> dict[str, Tensor]:
    modules = [m for m, _ in parts]
    assert all(isinstance(m, LoraModule) for m in modules)
    shape = _layer_shape(key, [natural_shape(key, (m.up.shape[0], *m.down.shape[1:])) for m in modules])
    ups = [m.up.to(torch.float32).reshape(m.up.shape[0], -1) * (ratio * m.scale)  # type: ignore[attr-defined]
           for m, ratio in parts]
    downs = [m.down.to(torch.float32).reshape(m.down.shape[0], -1) for m in modules]  # type: ignore[attr-defined]
    rank = sum(d.shape[0] for d in downs)
    up_shape = (shape[0], rank, *([1] * (len(shape) - 2)))
    return {
        "lora_down.weight": torch.cat(downs).reshape(rank, *shape[1:]).to(dtype).contiguous(),
        "lora_up.weight": torch.cat(ups, dim=1).reshape(up_shape).to(dtype).contiguous(),
        "alpha": torch.tensor(float(rank), dtype=dtype),
    }


def _svd(key: str, parts: list[tuple[NetworkModule, float]], rule: RankRule, device: torch.device | str,
         dtype: torch.dtype) -> dict[str, Tensor]:
    deltas = [(module_delta(m, device) * (m.scale * ratio)) for m, ratio in parts]
    shape = _layer_shape(key, [tuple(d.shape) for d in deltas])
    total = sum(d.reshape(shape[0], -1) for d in deltas)
    factors = low_rank(total, rule)
    return factors_to_lora(factors, shape, float(factors.rank), dtype)


@dataclass(frozen=True)
class MergeSummary:
    """What `merge_lora_files` wrote: how, how many modules, their ranks."""

    method: str  # "concat" or "svd"
    modules: int
    ranks: tuple[int, ...]


def merge_lora_files(
    paths: Sequence[str | os.PathLike[str]],
    ratios: Sequence[float],
    out: str | os.PathLike[str],
    *,
    rank: int | None = None,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
) -> MergeSummary:
    """Merge the LoRA files at `paths` with `ratios` (see `merge_networks`) into `out`, with fresh metadata."""
    if len(paths) != len(ratios):
        raise NetworkToolError(f"{len(paths)} files but {len(ratios)} ratios; give one ratio per file")
    out = check_output_path(out, paths, overwrite=overwrite)
    networks = [load_network(path) for path in paths]
    state = merge_networks([(n, r) for n, r in zip(networks, ratios)], rank=rank, device=device)
    ranks = tuple(int(t.shape[0]) for k, t in state.items() if k.endswith(".lora_down.weight"))
    method = "concat" if rank is None else "svd"
    parts = ", ".join(f"{Path(p).name} × {r:g}" for p, r in zip(paths, ratios))
    arch = next((a for a in (arch_of(n.modules, n.metadata) for n in networks) if a), None)
    source = {k: v for k, v in networks[0].metadata.items() if k in ("ss_base_model_version", "ss_v2")}
    metadata = derived_metadata(source, arch=arch, ranks=ranks, alphas=[float(r) for r in ranks],
                                note=f"merged by LoRA Studio ({method}) from {parts}", plain_lora=True,
                                output_name=out.stem)
    metadata["modelspec.merged_from"] = ", ".join(Path(p).stem for p in paths)
    with replacing(out):
        save_lora_file(out, state, metadata)
    return MergeSummary(method, len(ranks), ranks)
