"""A LoRA from the difference of two checkpoints: per UNet/text-encoder linear or conv weight present in both,
ΔW = tuned − base, factorised by SVD to the asked rank (alpha = rank, so the scale is 1).

Text-encoder embeddings are left out (kohya trains none), as are 1-D weights (norms) and biases; a weight whose
largest absolute difference is at most `min_diff` is taken as unchanged and skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...backups import replacing
from ..files import save_lora_file
from ..keys import Target
from .checkpoint import load_checkpoint
from .deltas import NetworkToolError, RankRule, check_output_path, derived_metadata, factors_to_lora, low_rank

DEFAULT_MIN_DIFF = 1e-6


@dataclass(frozen=True)
class ExtractedModule:
    """One module extracted: its rank and the share of ΔW's Frobenius norm that rank keeps."""

    key: str
    rank: int
    fro_retained: float


@dataclass(frozen=True)
class ExtractReport:
    """What `extract_lora` did: the family, the modules extracted, and the weights it left out and why."""

    arch: str
    modules: tuple[ExtractedModule, ...]
    unchanged: int
    missing: tuple[str, ...]  # in base but not in tuned, or of another shape there

    @property
    def mean_fro_retained(self) -> float:
        return sum(m.fro_retained for m in self.modules) / len(self.modules) if self.modules else 1.0


def _extractable(target: Target) -> bool:
    return len(target.shape) in (2, 4) and "_embeddings_" not in target.key


def extract_lora(
    base_path: str | os.PathLike[str],
    tuned_path: str | os.PathLike[str],
    *,
    rank: int,
    conv_rank: int | None = None,
    min_diff: float = DEFAULT_MIN_DIFF,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, Tensor], ExtractReport]:
    """(kohya LoRA state dict, report) approximating tuned − base at `rank` (`conv_rank` for k×k convs).

    Both files must be original-format checkpoints of one family; NetworkToolError otherwise, or when no
    weight differs.
    """
    linear_rule = RankRule(rank=rank)
    conv_rule = RankRule(rank=conv_rank) if conv_rank is not None else linear_rule
    base, tuned = load_checkpoint(base_path), load_checkpoint(tuned_path)
    if base.arch != tuned.arch:
        raise NetworkToolError(f"{tuned.path}: a {tuned.arch} checkpoint, but the base {base.path.name} is {base.arch}")
    state: dict[str, Tensor] = {}
    extracted: list[ExtractedModule] = []
    unchanged, missing = 0, []
    for target in filter(_extractable, base.index.targets()):
        other = tuned.index.lookup(target.key)
        if other is None or other.shape != target.shape:
            missing.append(target.key)
            continue
        diff = other.weight.detach().to(device, torch.float32) - target.weight.detach().to(device, torch.float32)
        if float(diff.abs().max()) <= min_diff:
            unchanged += 1
            continue
        shape = tuple(diff.shape)
        rule = conv_rule if len(shape) == 4 and shape[2:] != (1, 1) else linear_rule
        factors = low_rank(diff.reshape(shape[0], -1), rule)
        tensors = factors_to_lora(factors, shape, float(factors.rank), dtype)
        state.update({f"{target.key}.{suffix}": tensor for suffix, tensor in tensors.items()})
        extracted.append(ExtractedModule(target.key, factors.rank, factors.fro_retained))
    if not extracted:
        raise NetworkToolError(f"{tuned.path}: no weight differs from {base.path.name} by more than {min_diff:g}")
    return state, ExtractReport(base.arch, tuple(extracted), unchanged, tuple(missing))


def extract_lora_file(
    base_path: str | os.PathLike[str],
    tuned_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    rank: int,
    conv_rank: int | None = None,
    min_diff: float = DEFAULT_MIN_DIFF,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
) -> ExtractReport:
    """Extract (see `extract_lora`) and write the LoRA to `out` with ss_*/modelspec metadata."""
    out = check_output_path(out, [base_path, tuned_path], overwrite=overwrite)
    state, report = extract_lora(base_path, tuned_path, rank=rank, conv_rank=conv_rank, min_diff=min_diff,
                                 device=device)
    ranks = [m.rank for m in report.modules]
    conv = f", conv rank {conv_rank}" if conv_rank is not None else ""
    note = (f"extracted by LoRA Studio at rank {rank}{conv} from {Path(tuned_path).name} minus "
            f"{Path(base_path).name}")
    metadata = derived_metadata({}, arch=report.arch, ranks=ranks, alphas=[float(r) for r in ranks], note=note,
                                output_name=out.stem, sd_model_name=Path(base_path).name)
    with replacing(out):
        save_lora_file(out, state, metadata)
    return report
