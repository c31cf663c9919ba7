"""LoHa (LyCORIS `hada_*`): ΔW = (w1a · w1b) ⊙ (w2a · w2b), initialised as lycoris-lora does.

w1a, w2a [out, r]; w1b, w2b [r, in·kh·kw] (a convolution's kernel is flattened into the columns, as LyCORIS
stores it without Tucker). Init: w1b, w2b ~ N(0, 1), w1a ~ N(0, 0.1), w2a = 0, so ΔW starts at 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .module import ModuleSpec, TrainableModule


class LohaTrainable(TrainableModule):
    """LyCORIS `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`, `alpha`."""

    algo = "loha"
    plus_names = frozenset({"hada_w1_a", "hada_w2_a"})

    def _build(self, spec: ModuleSpec, generator: torch.Generator) -> None:
        out_dim, columns = self.shape[0], math.prod(self.shape[1:])
        self.hada_w1_a = nn.Parameter(torch.empty(out_dim, spec.dim).normal_(0.0, 0.1, generator=generator))
        self.hada_w1_b = nn.Parameter(torch.empty(spec.dim, columns).normal_(0.0, 1.0, generator=generator))
        self.hada_w2_a = nn.Parameter(torch.zeros(out_dim, spec.dim))
        self.hada_w2_b = nn.Parameter(torch.empty(spec.dim, columns).normal_(0.0, 1.0, generator=generator))

    def unscaled_delta(self) -> Tensor:
        return ((self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b)).reshape(self.shape)

    def factor_tensors(self) -> dict[str, Tensor]:
        return {"hada_w1_a": self.hada_w1_a, "hada_w1_b": self.hada_w1_b,
                "hada_w2_a": self.hada_w2_a, "hada_w2_b": self.hada_w2_b}

    def norm_pair(self) -> tuple[Tensor, Tensor]:
        return self.hada_w1_a, self.hada_w2_a
