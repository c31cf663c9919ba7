"""Merge several networks into one LoRA: exact by concatenating ranks, or through the full ΔW of each module.

Concat (every module a plain LoRA): each input's up is multiplied by ratio·scale and the factors stacked,
up = [up_1' | up_2' | …], down = [down_1; down_2; …], alpha = Σ r_i, so the scale is 1 and
up·down = Σ ratio_i·ΔW_i exactly. svd, dare, ties (any module type but DoRA): per key the scaled ΔWs are
combined by the method's rule (merge_methods.py) and cut to the best rank-r approximation (alpha = r), with the
relative Frobenius error of the cut reported per module; layer-bias deltas (diff_b) are summed as they are by
every method. Modules are matched by kohya name; the same layer spelled
two ways (diffusers vs LDM) stays two modules, which loaders sum anyway.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...backups import replacing
from ..families import arch_of
from ..files import save_lora_file
from ..formats.base import NetworkModule
from ..formats.lora import MID, LoraModule
from ..loaded import LoraNetwork, load_network
from ..metadata import family_keys
from .deltas import (
    NetworkToolError,
    RankRule,
    bias_delta_tensors,
    check_output_path,
    derived_metadata,
    factors_to_lora,
    low_rank,
    max_delta_rank,
    module_delta,
    natural_shape,
)
from .merge_methods import MergeOptions, combine, module_generator
from .resize import flatten

Modules = Mapping[str, NetworkModule]


@dataclass(frozen=True)
class MergeResult:
    """A merge's kohya state dict and, per re-factored module, the relative Frobenius error of its rank cut."""

    state: dict[str, Tensor]
    errors: dict[str, float]


def merge_networks(
    networks_with_ratios: Sequence[tuple[Modules | LoraNetwork, float]],
    *,
    rank: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """The flat kohya state dict of Σ ratio_i·network_i: concatenated without `rank`, else by SVD at `rank`."""
    options = MergeOptions(method="concat") if rank is None else MergeOptions(method="svd", rank=rank)
    return merge_modules(networks_with_ratios, options, device=device, dtype=dtype).state


def merge_modules(
    networks_with_ratios: Sequence[tuple[Modules | LoraNetwork, float]],
    options: MergeOptions,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MergeResult:
    """Merge by `options` (see the module docstring); inputs are not changed.

    Raises NetworkToolError for DoRA modules (their delta depends on the base weight), for non-LoRA modules
    under concat (LoHa/LoKr/full merge through their full ΔW), and for modules of one name whose layer shapes
    disagree.
    """
    if not networks_with_ratios:
        raise NetworkToolError("nothing to merge: no networks given")
    by_key: dict[str, list[tuple[NetworkModule, float]]] = {}
    for network, ratio in networks_with_ratios:
        modules = network.modules if isinstance(network, LoraNetwork) else network
        for key, module in modules.items():
            if module.dora_scale is not None:
                raise NetworkToolError(f"module {key!r} is DoRA: its delta depends on the base weight, so DoRA "
                                       "networks cannot be merged without a model (bake them into a checkpoint)")
            by_key.setdefault(key, []).append((module, float(ratio)))
    if options.method == "concat":
        not_plain = next((k for k, parts in by_key.items() for m, _ in parts if not _is_plain_lora(m)), None)
        if not_plain is not None:
            kind = next(m.kind for m, _ in by_key[not_plain] if not _is_plain_lora(m))
            raise NetworkToolError(f"module {not_plain!r} is {kind} (not a plain LoRA), so the networks cannot be "
                                   "concatenated exactly; merge them through the full ΔW instead: --method svd, "
                                   "dare or ties (with --rank to choose the rank)")
    merged: dict[str, dict[str, Tensor]] = {}
    errors: dict[str, float] = {}
    for key, parts in by_key.items():
        if options.method == "concat":
            tensors = _concat(key, parts, dtype)
        else:
            tensors, errors[key] = _full_delta(key, parts, options, device, dtype)
        biases = [bias_delta_tensors(m, ratio) for m, ratio in parts]
        if any(biases):
            tensors["diff_b"] = sum(b["diff_b"] for b in biases if b)
        merged[key] = tensors
    return MergeResult(flatten(merged), errors)


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


def _full_delta(key: str, parts: list[tuple[NetworkModule, float]], options: MergeOptions,
                device: torch.device | str, dtype: torch.dtype) -> tuple[dict[str, Tensor], float]:
    """The module merged by a full-ΔW method and cut to its rank; and the cut's relative Frobenius error."""
    deltas = [(module_delta(m, device) * (m.scale * ratio)) for m, ratio in parts]
    shape = _layer_shape(key, [tuple(d.shape) for d in deltas])
    flat = [d.reshape(shape[0], -1) for d in deltas]
    generator = module_generator(options.seed, key) if options.method == "dare" else None
    total = combine(options.method, flat, density=options.density, generator=generator)
    rank = options.rank or sum(max_delta_rank(m, shape) for m, _ in parts)
    factors = low_rank(total, RankRule(rank=rank))
    return factors_to_lora(factors, shape, float(factors.rank), dtype), relative_error(factors.singular_values,
                                                                                       factors.rank)


def relative_error(singular_values: Tensor, rank: int) -> float:
    """‖ΔW − ΔW_r‖_F / ‖ΔW‖_F for the best rank-`rank` cut of a ΔW with these singular values (0 for a zero ΔW)."""
    squares = singular_values.to(torch.float64) ** 2
    total = float(squares.sum())
    return 0.0 if total == 0 else math.sqrt(float(squares[rank:].sum()) / total)


@dataclass(frozen=True)
class MergeSummary:
    """What `merge_lora_files` wrote: how, how many modules, their ranks, the rank cut's relative errors."""

    method: str  # "concat", "svd", "dare" or "ties"
    modules: int
    ranks: tuple[int, ...]
    errors: tuple[float, ...] = ()  # per re-factored module; empty for concat (exact)

    @property
    def max_error(self) -> float:
        """The largest relative Frobenius error of a module's rank cut (0 when exact)."""
        return max(self.errors, default=0.0)

    @property
    def mean_error(self) -> float:
        """The mean relative Frobenius error over the modules (0 when exact)."""
        return sum(self.errors) / len(self.errors) if self.errors else 0.0


def merge_lora_files(
    paths: Sequence[str | os.PathLike[str]],
    ratios: Sequence[float],
    out: str | os.PathLike[str],
    *,
    rank: int | None = None,
    options: MergeOptions | None = None,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
) -> MergeSummary:
    """Merge the LoRA files at `paths` with `ratios` into `out`, with fresh metadata naming the sources and how.

    `options` None: concat without `rank`, svd with it (`merge_networks`); else `options` decide (and `rank` is
    not used).
    """
    if options is None:
        options = MergeOptions(method="concat") if rank is None else MergeOptions(method="svd", rank=rank)
    if len(paths) != len(ratios):
        raise NetworkToolError(f"{len(paths)} files but {len(ratios)} ratios; give one ratio per file")
    out = check_output_path(out, paths, overwrite=overwrite)
    networks = [load_network(path) for path in paths]
    result = merge_modules([(n, r) for n, r in zip(networks, ratios)], options, device=device)
    ranks = tuple(int(t.shape[0]) for k, t in result.state.items() if k.endswith(".lora_down.weight"))
    parts = ", ".join(f"{Path(p).name} × {r:g}" for p, r in zip(paths, ratios))
    arch = next((a for a in (arch_of(n.modules, n.metadata) for n in networks) if a), None)
    record = {
        "method": options.method, "density": options.density, "seed": options.seed, "rank": options.rank,
        "sources": [{"name": Path(p).name, "sshs_model_hash": n.identity, "weight": float(r)}
                    for p, n, r in zip(paths, networks, ratios)],
    }
    metadata = derived_metadata(family_keys(networks[0].metadata), arch=arch, ranks=ranks,
                                alphas=[float(r) for r in ranks],
                                note=f"merged by LoRA Studio ({options.describe()}) from {parts}", plain_lora=True,
                                output_name=out.stem, merge=record, merged_from=[Path(p).stem for p in paths])
    with replacing(out):
        save_lora_file(out, result.state, metadata)
    errors = tuple(result.errors[k] for k in result.errors)
    return MergeSummary(options.method, len(ranks), ranks, errors)
