"""LoRA and LoCon/C3Lier: ΔW = up · (mid) · down; kohya `lora_up`/`lora_down`, or PEFT `lora_B`/`lora_A` as A1111."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ModuleType, NetworkModule

_KOHYA = ("lora_up.weight", "lora_down.weight")
_PEFT = ("lora_B.weight", "lora_A.weight")
MID = "lora_mid.weight"


class LoraModule(NetworkModule):
    """up [out,r(,1,1)] · down [r,in(,kh,kw)]; with `lora_mid` [r,r,kh,kw] (Tucker/CP) the down is 1×1."""

    format = "lora"
    own_suffixes = frozenset({*_KOHYA, *_PEFT, MID})

    def _check_complete(self) -> None:
        kohya, peft = (any(s in self.tensors for s in names) for names in (_KOHYA, _PEFT))
        if kohya and peft:
            raise self._error(f"mixes kohya and PEFT names: {sorted(self.tensors)}")
        self._require(*(_PEFT if peft else _KOHYA))

    @property
    def up(self) -> Tensor:
        """The up factor as stored (`lora_up.weight` or PEFT `lora_B.weight`)."""
        return self.tensors[_PEFT[0]] if _PEFT[0] in self.tensors else self.tensors[_KOHYA[0]]

    @property
    def down(self) -> Tensor:
        """The down factor as stored (`lora_down.weight` or PEFT `lora_A.weight`)."""
        return self.tensors[_PEFT[1]] if _PEFT[1] in self.tensors else self.tensors[_KOHYA[1]]

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def kind(self) -> str:
        """Reports "locon" when the factors carry a k×k kernel (a k×k down, or a Tucker mid), else "lora"."""
        down = self.down
        return "locon" if MID in self.tensors or any(k > 1 for k in down.shape[2:]) else "lora"

    def raw_delta(self, device: torch.device | str | None = None) -> Tensor:
        up = self.up.to(device=device, dtype=torch.float32)
        down = self.down.to(device=device, dtype=torch.float32)
        up2 = up.reshape(up.shape[0], -1)
        down2 = down.reshape(down.shape[0], -1)
        if MID in self.tensors:
            return torch.einsum("ij...,oi,jn->on...", self._t(MID, device), up2, down2)
        return (up2 @ down2).reshape(up.shape[0], *down.shape[1:])

    def low_rank_factors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor] | None:
        weight_bias = self.tensors.get("bias")
        if MID in self.tensors or self.dora_scale is not None or (weight_bias is not None and weight_bias.dim() >= 2):
            return None
        up = self.up.to(device=device, dtype=torch.float32)
        down = self.down.to(device=device, dtype=torch.float32)
        return up.reshape(up.shape[0], -1) * self.scale, down.reshape(down.shape[0], -1)

    def _check_shapes(self) -> None:
        up, down, mid = self.up, self.down, self.tensors.get(MID)
        if up.dim() < 2 or down.dim() < 2 or any(k != 1 for k in up.shape[2:]):
            raise self._error(f"up {list(up.shape)} must be [out,r] or [out,r,1,1] and down {list(down.shape)} "
                              "[r,in] or [r,in,kh,kw]")
        if mid is None:
            if up.shape[1] != down.shape[0]:
                raise self._error(f"up {list(up.shape)} and down {list(down.shape)} disagree on the rank")
            return
        if (mid.dim() < 3 or any(k != 1 for k in down.shape[2:])
                or (up.shape[1], down.shape[0]) != (mid.shape[0], mid.shape[1])):
            raise self._error(f"up {list(up.shape)}, mid {list(mid.shape)} and down {list(down.shape)} do not chain "
                              "(expected [out,r,1,1], [r,r,kh,kw], [r,in,1,1])")


MODULE_TYPE = ModuleType("lora", LoraModule)
