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

from .network_module import ModuleSpec, TrainableModule, apply_weight


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
