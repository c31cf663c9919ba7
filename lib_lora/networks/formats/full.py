"""Full (LyCORIS `diff`, optional `diff_b`): ΔW is stored as it is; no rank, no alpha, scale 1."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ModuleType, NetworkModule


class FullModule(NetworkModule):
    """`diff` has the target weight's shape; `diff_b` [out] is the bias delta. Both only scale by the multiplier."""

    format = "full"
    own_suffixes = frozenset({"diff"})
    common_suffixes = frozenset({"diff_b"})

    def _check_complete(self) -> None:
        self._require("diff")

    @property
    def rank(self) -> None:
        return None

    def raw_delta(self, device: torch.device | str | None = None) -> Tensor:
        return self._t("diff", device)

    def _check_shapes(self) -> None:
        diff, diff_b = self.tensors["diff"], self.tensors.get("diff_b")
        if diff.dim() < 2:
            raise self._error(f"diff must be [out,in] or [out,in,kh,kw], got {list(diff.shape)}")
        if diff_b is not None and list(diff_b.shape) != [diff.shape[0]]:
            raise self._error(f"diff_b {list(diff_b.shape)} does not match diff {list(diff.shape)}: expected "
                              f"[{diff.shape[0]}]")


MODULE_TYPE = ModuleType("full", FullModule)
