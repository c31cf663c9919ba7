"""LoKr (LyCORIS `lokr_*`): ΔW = kron(w1, w2), each factor full or a low-rank product (w2 optionally Tucker)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ModuleType, NetworkModule

_W1, _W2 = ("lokr_w1", "lokr_w1_a", "lokr_w1_b"), ("lokr_w2", "lokr_w2_a", "lokr_w2_b")
_T2 = "lokr_t2"


class LokrModule(NetworkModule):
    """w1 [a,c] or w1_a [a,r]·w1_b [r,c]; w2 [b,d(,kh,kw)], w2_a [b,r]·w2_b [r,d·kh·kw], or Tucker
    t2 [r,r,kh,kw] with w2_a [r,b], w2_b [r,d]. Rank (for alpha) from w1_b, else w2_b; with two full factors
    there is no rank and the scale is 1, as in LyCORIS and A1111."""

    format = "lokr"
    own_suffixes = frozenset({*_W1, *_W2, _T2})

    def _check_complete(self) -> None:
        for full, a, b in (_W1, _W2):
            if full in self.tensors and (a in self.tensors or b in self.tensors):
                raise self._error(f"has both {full} and {a}/{b}: {sorted(self.tensors)}")
            if full not in self.tensors:
                self._require(a, b)
        if _T2 in self.tensors and _W2[0] in self.tensors:
            raise self._error(f"{_T2} needs lokr_w2_a/lokr_w2_b, not a full lokr_w2")

    @property
    def rank(self) -> int | None:
        for b in ("lokr_w1_b", "lokr_w2_b"):
            if b in self.tensors:
                return int(self.tensors[b].shape[0])
        return None

    def raw_delta(self, device: torch.device | str | None = None) -> Tensor:
        w1 = self._factor(_W1, device)
        w2 = self._factor(_W2, device)
        w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - w1.dim()))
        return torch.kron(w1, w2.contiguous())  # einsum output may be a strided view kron cannot take

    def _factor(self, names: tuple[str, str, str], device: torch.device | str | None) -> Tensor:
        full, a_name, b_name = names
        if full in self.tensors:
            return self._t(full, device)
        a, b = self._t(a_name, device), self._t(b_name, device)
        if a_name == "lokr_w2_a" and _T2 in self.tensors:
            return torch.einsum("ij...,ip,jq->pq...", self._t(_T2, device), a, b)
        return (a @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])

    def _check_shapes(self) -> None:
        shapes = {name: list(t.shape) for name, t in self.tensors.items() if name in self.own_suffixes}
        w1 = shapes.get("lokr_w1")
        if w1 is not None and len(w1) != 2:
            raise self._error(f"lokr_w1 must be 2-D, got {w1}")
        pairs = [("lokr_w1_a", "lokr_w1_b")] if w1 is None else []
        if "lokr_w2" not in shapes:
            pairs.append(("lokr_w2_a", "lokr_w2_b"))
        for a, b in pairs:
            if len(shapes[a]) != 2 or len(shapes[b]) < 2:
                raise self._error(f"{a} {shapes[a]} must be 2-D and {b} {shapes[b]} at least 2-D")
            if a == "lokr_w2_a" and _T2 in shapes:
                t2 = shapes[_T2]
                if len(t2) < 3 or len(shapes[b]) != 2 or t2[:2] != [shapes[a][0], shapes[b][0]]:
                    raise self._error(f"Tucker factors do not fit: {_T2} {t2}, {a} {shapes[a]}, {b} {shapes[b]} "
                                      "(expected [r,r,kh,kw], [r,out], [r,in])")
            elif shapes[a][1] != shapes[b][0]:
                raise self._error(f"{a} {shapes[a]} and {b} {shapes[b]} disagree on the rank")


MODULE_TYPE = ModuleType("lokr", LokrModule)
