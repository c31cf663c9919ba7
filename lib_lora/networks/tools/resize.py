"""Resize a network's modules by SVD (sd-scripts resize_lora's rules), from any format to kohya LoRA.

Per module: ΔW (unscaled, float32, a k×k conv flattened to [out, in·k·k]) is factorised as U·S·Vᵀ and the kept
part written as lora_up = U_r·diag(s_r), lora_down = V_rᵀ. As sd-scripts, the new alpha keeps the module's
alpha/rank ratio: alpha_new = scale_old · r_new, so up·down·(alpha_new / r_new) is the truncated ΔW·scale_old,
the scaled ΔW the old module applied, cut to rank r_new. Modules without a rank (full, LoKr of two full
factors) have scale 1 and get alpha = r_new.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...backups import replacing
from ..families import arch_of
from ..files import save_lora_file
from ..formats.base import NetworkModule
from ..loaded import load_network
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
    storage_dtype,
)


@dataclass(frozen=True)
class ModuleResize:
    """One module resized: its type, old rank (None: full/LoKr), new rank, the Frobenius share of ΔW kept."""

    key: str
    kind: str
    old_rank: int | None
    new_rank: int
    alpha: float
    fro_retained: float


@dataclass(frozen=True)
class ResizeReport:
    """What `resize_network` did to each module, in the input's order."""

    rule: str
    modules: tuple[ModuleResize, ...]

    @property
    def mean_fro_retained(self) -> float:
        """The average of the modules' retained Frobenius shares (1.0 for no modules)."""
        return sum(m.fro_retained for m in self.modules) / len(self.modules) if self.modules else 1.0

    def to_json(self) -> dict[str, object]:
        """The report as plain JSON values."""
        return {
            "rule": self.rule,
            "mean_fro_retained": self.mean_fro_retained,
            "modules": [{"key": m.key, "kind": m.kind, "old_rank": m.old_rank, "new_rank": m.new_rank,
                         "alpha": m.alpha, "fro_retained": m.fro_retained} for m in self.modules],
        }


def resize_network(
    modules: Mapping[str, NetworkModule],
    *,
    rank: int | None = None,
    sv_ratio: float | None = None,
    sv_fro: float | None = None,
    sv_cumulative: float | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, dict[str, Tensor]], ResizeReport]:
    """({key: kohya LoRA tensors}, report): every module re-factorised at the rank the one given rule picks.

    Any format is accepted (LoHa/LoKr/full become LoRA); the rank never exceeds what the module's ΔW can have
    (a LoRA's own rank). A layer-bias delta (diff_b) is carried over unchanged. DoRA modules raise
    NetworkToolError: their magnitude vector is relative to W + ΔW, which no truncated ΔW keeps. Outputs are in
    `dtype`, else each module's own storage dtype; `modules` is not changed.
    """
    rule = RankRule(rank=rank, sv_ratio=sv_ratio, sv_fro=sv_fro, sv_cumulative=sv_cumulative)
    resized: dict[str, dict[str, Tensor]] = {}
    rows: list[ModuleResize] = []
    for key, module in modules.items():
        if module.dora_scale is not None:
            raise NetworkToolError(f"module {key!r} is DoRA: resizing would change what its magnitude vector "
                                   "(dora_scale) means, so DoRA networks are not resized")
        delta = module_delta(module, device)
        shape = tuple(delta.shape)
        factors = low_rank(delta.reshape(shape[0], -1), rule, max_delta_rank(module, shape))
        scale = module.scale
        if scale > 0 and math.isfinite(scale):
            alpha = scale * factors.rank
        else:  # a negative `scale` tensor: fold it into up and use scale 1
            factors = type(factors)(factors.up * scale, factors.down, factors.singular_values)
            alpha = float(factors.rank)
        tensors = factors_to_lora(factors, shape, alpha, dtype or storage_dtype(module))
        resized[key] = {**tensors, **bias_delta_tensors(module)}
        rows.append(ModuleResize(key, module.kind, module.rank, factors.rank, alpha, factors.fro_retained))
    return resized, ResizeReport(rule.describe(), tuple(rows))


def flatten(modules: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """{key: {suffix: tensor}} -> the flat kohya state dict {"key.suffix": tensor}."""
    return {f"{key}.{suffix}": tensor for key, tensors in modules.items() for suffix, tensor in tensors.items()}


def resize_lora_file(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    rank: int | None = None,
    sv_ratio: float | None = None,
    sv_fro: float | None = None,
    sv_cumulative: float | None = None,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
) -> ResizeReport:
    """Resize the LoRA file at `path` (see `resize_network`) and write it to `out` with updated metadata."""
    path = Path(path)
    out = check_output_path(out, [path], overwrite=overwrite)
    network = load_network(path)
    modules = network.modules
    source_format = network.format
    resized, report = resize_network(modules, rank=rank, sv_ratio=sv_ratio, sv_fro=sv_fro,
                                     sv_cumulative=sv_cumulative, device=device)
    old_ranks = sorted({m.old_rank for m in report.modules if m.old_rank is not None})
    old = f"{source_format} rank {old_ranks[-1]}" if old_ranks else source_format
    note = f"resized by LoRA Studio with {report.rule} from {old}"
    metadata = derived_metadata(
        network.metadata,
        arch=arch_of(modules, network.metadata),
        ranks=[m.new_rank for m in report.modules],
        alphas=[m.alpha for m in report.modules],
        note=note,
        plain_lora=source_format not in ("lora", "locon"),
    )
    with replacing(out):
        save_lora_file(out, {**flatten(resized), **network.bundled_embeddings}, metadata)
    return report

