"""Layers whose weight is stored in another dtype than the computation's (fp8; bf16 computed in fp32), cast one layer
at a time, with only the stored weight kept for the backward pass (which casts it again).

Autograd would otherwise save each layer's cast copy until the backward pass: a second, full-precision copy of the
base weights for the length of every step. Used by Forge Neo's training mode (its fp8 and CPU bf16 models) and by
`fp8_base` (lib_lora/train/fp8_storage.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
"""The float8 storage dtypes."""


class RecastLinear(torch.autograd.Function):
    """y = x·cast(W)ᵀ + b where only the stored (fp8, bf16…) W is kept: the backward pass casts it again."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight = weight  # the stored weight, not saved by autograd (it never needs a gradient)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad.matmul(ctx.weight.to(grad.dtype)), None, None


class RecastConv2d(torch.autograd.Function):
    """A 2-D convolution by cast(W) where only the stored (fp8, bf16…) W is kept; the backward pass casts it again."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: nn.Conv2d) -> torch.Tensor:
        ctx.module, ctx.input_shape = module, x.shape
        bias = None if module.bias is None else module.bias.to(x.dtype)
        return nn.Conv2d._conv_forward(module, x, module.weight.to(x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        module = ctx.module
        weight = module.weight.to(grad.dtype)
        grad_x = torch.nn.grad.conv2d_input(ctx.input_shape, weight, grad, stride=module.stride,
                                            padding=module.padding, dilation=module.dilation, groups=module.groups)
        return grad_x, None


def recastable(module: nn.Module) -> bool:
    """Whether `module` is a Linear or a zero-padded Conv2d with a floating weight (what the Functions compute)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def recast(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module` (Linear or Conv2d) applied to `x` with its weight cast to x's dtype, keeping no cast copy."""
    if isinstance(module, nn.Linear):
        return RecastLinear.apply(x, module.weight, module.bias)
    return RecastConv2d.apply(x, module)

