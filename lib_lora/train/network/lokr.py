"""LoKr (LyCORIS `lokr_*`): ΔW = kron(w1, w2), sizes and initialisation as lycoris-lora chooses them.

out = a·b and in = c·d are each split by `factorization` (the pair of divisors closest to a square, or around
`factor`). w1 [a, c] is full (or w1_a [a, r] · w1_b [r, c] with decompose_both when r < max(a, c)/2); w2
[b, d(, kh, kw)] is w2_a [b, r] · w2_b [r, d·kh·kw] when r < max(b, d)/2, else full (full_matrix forces full).
With both factors full there is no rank: the scale is 1 and the file's alpha is dim. Init: w1 factors
kaiming-uniform, w2_a kaiming-uniform, w2_b (or a full w2) zero, so ΔW starts at 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .module import ModuleSpec, TrainableModule


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m·n = dimension and m ≤ n: `factor` and its cofactor when it divides, else the largest
    divisor m ≤ √dimension that is also ≤ factor (any size for factor −1). LyCORIS's rule, written from its docs."""
    if factor > 0 and dimension % factor == 0:
        return tuple(sorted((factor, dimension // factor)))  # type: ignore[return-value]
    limit = dimension if factor <= 0 else factor
    m = max(d for d in range(1, math.isqrt(dimension) + 1) if dimension % d == 0 and d <= limit)
    return m, dimension // m


class LokrTrainable(TrainableModule):
    """LyCORIS `lokr_w1` (or `lokr_w1_a`/`lokr_w1_b`), `lokr_w2` (or `lokr_w2_a`/`lokr_w2_b`), `alpha`."""

    algo = "lokr"
    plus_names = frozenset({"lokr_w1_a", "lokr_w2_a"})

    def _build(self, spec: ModuleSpec, generator: torch.Generator) -> None:
        out_dim, in_dim, *kernel = self.shape
        (a, b), (c, d) = factorization(out_dim, spec.factor), factorization(in_dim, spec.factor)
        r = spec.dim

        def kaiming(*shape: int) -> nn.Parameter:
            tensor = torch.empty(*shape)
            nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)
            return nn.Parameter(tensor)

        self.full_w1 = not (spec.decompose_both and r < max(a, c) / 2 and not spec.full_matrix)
        self.full_w2 = spec.full_matrix or r >= max(b, d) / 2
        if self.full_w1:
            self.lokr_w1 = kaiming(a, c)
        else:
            self.lokr_w1_a, self.lokr_w1_b = kaiming(a, r), kaiming(r, c)
        if self.full_w2:
            self.lokr_w2 = nn.Parameter(torch.zeros(b, d, *kernel))
        else:
            self.lokr_w2_a = kaiming(b, r)
            self.lokr_w2_b = nn.Parameter(torch.zeros(r, d * math.prod(kernel)))

    @property
    def saved_alpha(self) -> float:
        return float(self.dim) if self.full_w1 and self.full_w2 else self.alpha

    def unscaled_delta(self) -> Tensor:
        w1 = self.lokr_w1 if self.full_w1 else self.lokr_w1_a @ self.lokr_w1_b
        if self.full_w2:
            w2 = self.lokr_w2
        else:
            b, d = self.lokr_w2_a.shape[0], self.shape[1] // w1.shape[1]
            w2 = (self.lokr_w2_a @ self.lokr_w2_b).reshape(b, d, *self.shape[2:])
        w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - 2))
        return torch.kron(w1, w2).reshape(self.shape)

    def factor_tensors(self) -> dict[str, Tensor]:
        return dict(self.factor_parameters())

    def norm_pair(self) -> tuple[Tensor, Tensor]:
        return (self.lokr_w1 if self.full_w1 else self.lokr_w1_a), (self.lokr_w2 if self.full_w2 else self.lokr_w2_a)
