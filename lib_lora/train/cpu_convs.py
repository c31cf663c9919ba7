"""On the CPU, a run's convolutions on small maps go through im2col + one matrix product instead of oneDNN.

oneDNN reorders a plain conv weight into its blocked layout on every call (forward and backward), so where the
map is small and the weight large — SD's 1280-channel blocks at 8×8 and below — the reorder costs more than the
convolution: 1.8–3.9× slower forward + backward than torch's im2col + GEMM kernel (`thnn_conv2d`), which reads
the weight where it is (bench/RESULTS.md, "CPU convolutions on small maps"). Keeping reordered copies would be the
second copy of the base weights that training on the loaded model must not make, so the kernel is chosen per
call instead. Larger maps keep oneDNN, which wins there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

from ..hosts.snapshot import instance_attributes

SMALL_MAP_PIXELS = 64
"""Input maps of at most this many pixels (8×8) take the im2col + GEMM kernel."""

_ConvForward = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@contextmanager
def small_map_convolutions(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """For the length of the block, each plain 2-D convolution of `model` whose input passes `im2col_kernel_fits`
    runs through torch's im2col + GEMM kernel; other inputs run as before.

    Works by an instance-level `_conv_forward` (the kernel call that `Conv2d.forward` makes), so class-level
    patches of `Conv2d.forward` — A1111's LoRA hijack — still run around it. Yields how many convolutions were
    routed; the instance attributes are removed on exit, also on errors. Convolutions someone else already
    routes (an instance `_conv_forward`), grouped, dilated, or padded other than with zeros are left alone.
    """
    usable = enabled and hasattr(torch._C._nn, "thnn_conv2d")
    convolutions = (module for module in model.modules() if usable and isinstance(module, nn.Conv2d)
                    and _plain(module) and "_conv_forward" not in module.__dict__)
    with instance_attributes((conv, "_conv_forward", _routed(conv)) for conv in convolutions) as routed:
        yield routed


def im2col_kernel_fits(x: Tensor, weight: Tensor) -> bool:
    """Whether a convolution of `x` by `weight` takes the im2col + GEMM kernel: float32 on the CPU, outside
    autocast (which would cast for oneDNN), contiguous (the kernel's weight gradient needs it; channels_last
    stays with oneDNN), on a map of at most SMALL_MAP_PIXELS pixels."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype == weight.dtype == torch.float32 and x.is_contiguous()
            and x.shape[-1] * x.shape[-2] <= SMALL_MAP_PIXELS and not _cpu_autocast_on())


def _plain(module: nn.Conv2d) -> bool:
    return (module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and all(d == 1 for d in module.dilation))


def _routed(module: nn.Conv2d) -> _ConvForward:
    original = type(module)._conv_forward
    kernel, stride, padding = list(module.kernel_size), list(module.stride), list(module.padding)

    def conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if im2col_kernel_fits(x, weight):
            return torch._C._nn.thnn_conv2d(x, weight, kernel, bias, stride, padding)
        return original(module, x, weight, bias)

    return conv_forward


def _cpu_autocast_reader() -> Callable[[], bool]:
    """torch's "is CPU autocast on" for this torch, chosen once (it is asked on every routed convolution)."""
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled
    return partial(torch.is_autocast_enabled, "cpu")


_cpu_autocast_on = _cpu_autocast_reader()
