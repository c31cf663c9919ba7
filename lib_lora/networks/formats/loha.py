"""LoHa (LyCORIS `hada_*`): ΔW = (w1a·w1b) ⊙ (w2a·w2b); with `hada_t1`/`hada_t2` each half is a Tucker rebuild."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ModuleType, NetworkModule

_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_CORES = ("hada_t1", "hada_t2")


class LohaModule(NetworkModule):
    """Plain: wXa [out,r], wXb [r,in·kh·kw]. Tucker (conv): wXa [r,out], wXb [r,in], tX [r,r,kh,kw]."""

    format = "loha"
    own_suffixes = frozenset({*_FACTORS, *_CORES})

    def _check_complete(self) -> None:
        self._require(*_FACTORS)
        if any(core in self.tensors for core in _CORES):
            self._require(*_CORES)

    @property
    def tucker(self) -> bool:
        """Whether each half is a Tucker rebuild (hada_t1/hada_t2 present)."""
        return _CORES[0] in self.tensors

    @property
    def rank(self) -> int:
        return int(self.tensors["hada_w1_b"].shape[0])

    def raw_delta(self, device: torch.device | str | None = None) -> Tensor:
        return self._half(1, device) * self._half(2, device)

    def _half(self, i: int, device: torch.device | str | None) -> Tensor:
        a, b = self._t(f"hada_w{i}_a", device), self._t(f"hada_w{i}_b", device)
        if self.tucker:
            return torch.einsum("ij...,ip,jq->pq...", self._t(f"hada_t{i}", device), a, b)
        return (a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])

    def _check_shapes(self) -> None:
        w = {name: list(self.tensors[name].shape) for name in _FACTORS}
        if any(len(shape) != 2 for shape in w.values()):
            raise self._error(f"hada factors must be 2-D, got {w}")
        if self.tucker:
            t1, t2 = (list(self.tensors[core].shape) for core in _CORES)
            pairs_fit = all(len(t) >= 3 and t[:2] == [w[f"hada_w{i}_a"][0], w[f"hada_w{i}_b"][0]]
                            for i, t in ((1, t1), (2, t2)))
            halves_fit = t1[2:] == t2[2:] and w["hada_w1_a"][1] == w["hada_w2_a"][1]
            halves_fit = halves_fit and w["hada_w1_b"][1] == w["hada_w2_b"][1]
            if not (pairs_fit and halves_fit):
                raise self._error(f"Tucker LoHa factors do not fit: {w}, hada_t1 {t1}, hada_t2 {t2}")
            return
        ranks_fit = w["hada_w1_a"][1] == w["hada_w1_b"][0] and w["hada_w2_a"][1] == w["hada_w2_b"][0]
        halves_fit = w["hada_w1_a"][0] == w["hada_w2_a"][0] and w["hada_w1_b"][1] == w["hada_w2_b"][1]
        if not (ranks_fit and halves_fit):
            raise self._error(f"LoHa factors do not fit (w1a·w1b and w2a·w2b must both be [out,in]): {w}")


MODULE_TYPE = ModuleType("loha", LohaModule)
