"""LoRA and LoCon as kohya trains them: ΔW = up · down, up starting at zero, down kaiming-uniform (a=√5).

Linear: down [r, in], up [out, r]. Convolution: down [r, in, kh, kw] with the host conv's stride and padding,
up [out, r, 1, 1]. Without DoRA the hook runs the activations through down and up (as sd-scripts), so neuron
dropout and rank dropout (per sample and rank, rescaled by 1/(1−p)) act where sd-scripts applies them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .module import ModuleSpec, TrainableModule, apply_weight


class LoraTrainable(TrainableModule):
    """kohya `lora_down.weight` / `lora_up.weight` / `alpha`."""

    algo = "lora"
    plus_names = frozenset({"lora_up"})

    def _build(self, spec: ModuleSpec, generator: torch.Generator) -> None:
        out_dim, in_dim, *kernel = self.shape
        down = torch.empty(spec.dim, in_dim, *kernel)
        up = torch.zeros(out_dim, spec.dim, *([1, 1] if kernel else []))
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        self.lora_down = nn.Parameter(down)
        self.lora_up = nn.Parameter(up)

    def unscaled_delta(self) -> Tensor:
        up = self.lora_up.reshape(self.lora_up.shape[0], -1)
        down = self.lora_down.reshape(self.lora_down.shape[0], -1)
        return (up @ down).reshape(self.shape)

    def factor_tensors(self) -> dict[str, Tensor]:
        return {"lora_down.weight": self.lora_down, "lora_up.weight": self.lora_up}

    def norm_pair(self) -> tuple[Tensor, Tensor]:
        return self.lora_up, self.lora_down

    def add_delta(self, module: nn.Module, x: Tensor, output: Tensor, multiplier: float) -> Tensor:
        """output + up·(down·x)·scale·multiplier as one accumulating product (addmm / baddbmm), so neither
        scale nor the add costs a pass over the activations, forward or backward; a 1×1 convolution's down
        is a matrix product too (torch's CPU convolution is slow at rank-sized channel counts). Dropout, and
        an output in another dtype than x, take the general path."""
        if (self.training and (self.neuron_dropout or self.rank_dropout)) or output.dtype != x.dtype:
            return super().add_delta(module, x, output, multiplier)
        alpha = self.scale * multiplier
        down, up = self.lora_down.to(x.dtype), self.lora_up.to(x.dtype)
        if down.dim() == 2:  # linear: [..., in] -> [..., out]
            hidden = F.linear(x, down).reshape(-1, self.dim)
            return torch.addmm(output.reshape(-1, output.shape[-1]), hidden, up.t(), alpha=alpha).view(output.shape)
        batch = output.shape[0]
        if down.shape[2:] == (1, 1) and _is_pointwise(module):  # [B, in, H, W] -> [B, r, H·W]
            hidden = torch.bmm(down.flatten(1).expand(batch, -1, -1), x.flatten(2))
        else:
            hidden = apply_weight(module, x, down).flatten(2)
        result = torch.baddbmm(output.flatten(2), up.flatten(1).expand(batch, -1, -1), hidden, alpha=alpha)
        return result.view(output.shape)

    def delta_output(self, module: nn.Module, x: Tensor) -> Tensor:
        hidden = apply_weight(module, x, self.lora_down.to(x.dtype))
        if self.training and self.neuron_dropout:
            hidden = F.dropout(hidden, p=self.neuron_dropout)
        scale = self.scale
        if self.training and self.rank_dropout:
            keep = torch.rand(hidden.shape[0], self.dim, device=hidden.device) > self.rank_dropout
            if hidden.dim() == 3:  # [B, tokens, r]
                keep = keep.unsqueeze(1)
            elif hidden.dim() == 4:  # [B, r, h, w]
                keep = keep[:, :, None, None]
            hidden = hidden * keep.to(hidden.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        up = self.lora_up.to(hidden.dtype)
        out = F.linear(hidden, up) if up.dim() == 2 else F.conv2d(hidden, up)
        return out * scale


def _is_pointwise(module: nn.Module) -> bool:
    """Whether a 1×1 convolution is a plain per-pixel product (stride 1, no padding, one group)."""
    def all_equal(value: object, wanted: int) -> bool:  # an int, or a per-dimension tuple
        return all(v == wanted for v in (value if isinstance(value, tuple) else (value,)))

    return (all_equal(getattr(module, "stride", 1), 1) and all_equal(getattr(module, "padding", 0), 0)
            and getattr(module, "groups", 1) == 1)
