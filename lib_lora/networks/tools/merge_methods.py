"""How a merge combines the ΔWs of one module: the merge options, and DARE's and TIES' rules as pure tensor maths.

Every rule takes the weighted deltas τᵢ = wᵢ·scaleᵢ·ΔWᵢ of one module (same shape) and returns one ΔW:

- svd: Σ τᵢ, the plain weighted sum (then cut to a rank by SVD).
- dare (Yu et al. 2023, "Language Models are Super Mario"): every entry of every τᵢ is kept with probability
  p = density, independently, and the kept entries are divided by p, so each entry's expected value is unchanged;
  then Σ. The drops come from a CPU torch.Generator seeded by the seed and the module's name, so a merge is the
  same on any device and whatever other modules the files hold. At density 1 nothing is dropped: exactly Σ τᵢ.
- ties (Yadav et al. 2023, "TIES-Merging"): each τᵢ keeps its top ⌈density·n⌉ entries by magnitude (trim); each
  entry's sign is elected as the sign of the sum of the trimmed values; the result is the mean of the trimmed
  values that are non-zero and agree with that sign (disjoint mean), 0 where none does. Unlike the other rules it
  averages, so two agreeing LoRAs at weight 1 give their mean, not their sum.
- concat: no rule here; the factors are stacked (merge.py), which is exact for plain LoRA/LoCon modules.

We write these few lines ourselves: the libraries that have them (mergekit, peft's merge utilities) work on whole
models or PEFT adapters and would add a dependency for a dozen tensor operations.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .deltas import NetworkToolError

MERGE_METHODS: tuple[str, ...] = ("concat", "svd", "dare", "ties")
FULL_DELTA_METHODS: tuple[str, ...] = ("svd", "dare", "ties")
"""The methods that combine full ΔWs and re-factor the result (any module type); concat stacks LoRA factors."""
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class MergeOptions:
    """How to merge: the method, its density (dare, ties) and seed (dare), and the rank of the re-factored result.

    `rank` None: concat keeps every rank; the full-ΔW methods cut each module to the sum of its sources' ranks
    (exact for svd). Raises NetworkToolError for an unknown method, a density outside (0, 1] or one given to a
    method without drops, a rank given to concat, a rank < 1 or a seed outside 0…2⁶³−1.
    """

    method: str = "svd"
    density: float = 1.0
    seed: int = 0
    rank: int | None = None

    def __post_init__(self) -> None:
        if self.method not in MERGE_METHODS:
            raise NetworkToolError(f"unknown merge method {self.method!r}; use one of {', '.join(MERGE_METHODS)}")
        density = self.density
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not math.isfinite(density):
            raise NetworkToolError(f"density must be a number in (0, 1], got {density!r}")
        if not 0 < density <= 1:
            raise NetworkToolError(f"density must be in (0, 1] (the fraction of each delta kept), got {density:g}")
        if density != 1 and self.method not in ("dare", "ties"):
            raise NetworkToolError(f"--density is for dare and ties; {self.method} keeps every entry")
        object.__setattr__(self, "density", float(density))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise NetworkToolError(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        if self.rank is not None:
            if self.method == "concat":
                raise NetworkToolError("concat keeps every source's rank (it is exact); --rank is for svd, dare "
                                       "and ties")
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
                raise NetworkToolError(f"rank must be an integer >= 1, got {self.rank!r}")

    def describe(self) -> str:
        """E.g. "dare (density 0.5, seed 7)", "ties (density 0.3)" or "svd"."""
        if self.method == "dare":
            return f"dare (density {self.density:g}, seed {self.seed})"
        if self.method == "ties":
            return f"ties (density {self.density:g})"
        return self.method


def module_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator for one module's drops: seeded by `seed` and the module's name (stable across runs)."""
    mixed = (seed * 0x9E3779B97F4A7C15 + zlib.crc32(key.encode("utf-8"))) % (MAX_SEED + 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


def weighted_sum(deltas: Sequence[Tensor]) -> Tensor:
    """Σ τᵢ, summed in order (the plain merge every other rule is compared with)."""
    if not deltas:
        raise NetworkToolError("nothing to merge: no deltas given")
    total = deltas[0].clone()
    for delta in deltas[1:]:
        total += delta
    return total


def dare_drop(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """`delta` with each entry kept with probability `density` and divided by it, dropped (0) otherwise."""
    if density == 1:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep.to(delta.device), delta / density, torch.zeros((), dtype=delta.dtype,
                                                                            device=delta.device))


def dare(deltas: Sequence[Tensor], density: float, generator: torch.Generator) -> Tensor:
    """DARE: Σ of each τᵢ after `dare_drop` (the sources draw from `generator` in order)."""
    return weighted_sum([dare_drop(delta, density, generator) for delta in deltas])


def trim(delta: Tensor, density: float) -> Tensor:
    """`delta` keeping its ⌈density·n⌉ largest entries by magnitude, 0 elsewhere (ties at the cut: any of them)."""
    count = delta.numel()
    keep = min(count, max(1, math.ceil(density * count)))
    if keep == count:
        return delta.clone()
    flat = delta.reshape(-1)
    kept = torch.zeros_like(flat)
    index = torch.topk(flat.abs(), keep, sorted=False).indices
    kept[index] = flat[index]
    return kept.reshape(delta.shape)


def elect_signs(trimmed: Sequence[Tensor]) -> Tensor:
    """Per entry, the sign (−1, 0 or 1) of the sum of the trimmed values (TIES' election by sign mass)."""
    return torch.sign(weighted_sum(trimmed))


def ties(deltas: Sequence[Tensor], density: float) -> Tensor:
    """TIES: trim each τᵢ, elect signs, and average the trimmed values that agree with the elected sign."""
    trimmed = [trim(delta, density) for delta in deltas]
    signs = elect_signs(trimmed)
    total = torch.zeros_like(trimmed[0])
    count = torch.zeros_like(trimmed[0])
    for values in trimmed:
        agrees = (torch.sign(values) == signs) & (values != 0)
        total += torch.where(agrees, values, torch.zeros_like(values))
        count += agrees.to(count.dtype)
    return total / count.clamp(min=1)


def combine(method: str, deltas: Sequence[Tensor], *, density: float = 1.0,
            generator: torch.Generator | None = None) -> Tensor:
    """One module's merged ΔW by a full-delta `method` (svd, dare, ties) from its weighted deltas τᵢ."""
    if method == "svd":
        return weighted_sum(deltas)
    if method == "dare":
        if generator is None:
            raise NetworkToolError("dare needs a generator for its drops")
        return dare(deltas, density, generator)
    if method == "ties":
        return ties(deltas, density)
    raise NetworkToolError(f"{method!r} does not combine full deltas; use one of {', '.join(FULL_DELTA_METHODS)}")
