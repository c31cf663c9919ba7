"""The CPU convolution routing of a run (train/cpu_convs.py): small maps through im2col + GEMM with the same
outputs and gradients as oneDNN, larger maps and unusual convolutions untouched, everything restored on exit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib_lora.train.cpu_convs import SMALL_MAP_PIXELS, small_map_convolutions

pytestmark = pytest.mark.hostcompat

# name: (module factory, input shape, memory format, whether the im2col kernel runs)
CASES = {
    "3x3 pad 1, 8x8": (lambda: nn.Conv2d(6, 10, 3, padding=1), (2, 6, 8, 8), None, True),
    "3x3 stride 2, 8x8 (downsampler)": (lambda: nn.Conv2d(6, 6, 3, stride=2, padding=1), (1, 6, 8, 8), None, True),
    "1x1 no bias, 4x4": (lambda: nn.Conv2d(6, 10, 1, bias=False), (2, 6, 4, 4), None, True),
    "1x3 kernel, 5x7": (lambda: nn.Conv2d(6, 4, (1, 3), padding=(0, 1)), (1, 6, 5, 7), None, True),
    "3x3, 8x8 channels_last (oneDNN)": (lambda: nn.Conv2d(6, 10, 3, padding=1), (2, 6, 8, 8), torch.channels_last,
                                        False),
    "3x3, 16x16 (oneDNN)": (lambda: nn.Conv2d(6, 10, 3, padding=1), (1, 6, 16, 16), None, False),
    "3x3, 9x8 (just over)": (lambda: nn.Conv2d(6, 10, 3, padding=1), (1, 6, 9, 8), None, False),
}


def outputs_and_grads(conv: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().clone().requires_grad_(True)
    conv.zero_grad(set_to_none=True)
    out = conv(x)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    grads = tuple(p.grad for p in conv.parameters())
    return (out.detach(), x.grad, *grads, torch.tensor(out.grad_fn.name() == "SlowConv2DBackward0"))


@pytest.mark.parametrize("case", list(CASES))
def test_routed_convolutions_match_onednn(case):
    make, shape, memory_format, small = CASES[case]
    torch.manual_seed(0)
    conv = make()
    x = torch.randn(shape)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    *expected, used_before = outputs_and_grads(conv, x)
    with small_map_convolutions(conv) as routed:
        assert routed == 1
        *got, used = outputs_and_grads(conv, x)
    assert not used_before
    assert bool(used) == small == (shape[-1] * shape[-2] <= SMALL_MAP_PIXELS and x.is_contiguous())
    for want, have in zip(expected, got, strict=True):
        assert torch.allclose(want, have, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2),
    lambda: nn.Conv2d(4, 4, 3, padding=2, dilation=2),
    lambda: nn.Conv2d(4, 4, 3, padding="same"),
    lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    lambda: nn.Conv1d(4, 4, 3),
], ids=["grouped", "dilated", "padding same", "reflect padding", "conv1d"])
def test_unusual_convolutions_are_left_alone(make):
    with small_map_convolutions(nn.Sequential(make())) as routed:
        assert routed == 0


def test_autocast_and_other_dtypes_keep_the_usual_kernel():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 4, 4)
    with small_map_convolutions(conv):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(x).dtype == torch.bfloat16  # cast as conv2d is under autocast, not float32 via im2col
        double = nn.Conv2d(4, 6, 3, padding=1).double()
        with small_map_convolutions(double):
            out = double(x.double().requires_grad_(True))
        assert out.dtype == torch.float64 and out.grad_fn.name() != "SlowConv2DBackward0"


def test_disabled_routes_nothing():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with small_map_convolutions(conv, enabled=False) as routed:
        assert routed == 0 and "_conv_forward" not in conv.__dict__


def test_restored_on_exit_and_on_errors_and_others_patches_kept():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))

    def theirs(x, weight, bias):
        return F.conv2d(x, weight, bias, padding=1) * 2

    model[1]._conv_forward = theirs
    with pytest.raises(RuntimeError, match="boom"), small_map_convolutions(model) as routed:
        assert routed == 1 and "_conv_forward" in model[0].__dict__
        raise RuntimeError("boom")
    assert "_conv_forward" not in model[0].__dict__ and model[1].__dict__["_conv_forward"] is theirs


def test_a_class_level_forward_patch_still_runs(monkeypatch):
    """A1111's LoRA hijack replaces Conv2d.forward; routing swaps only the kernel call inside it."""
    calls = []
    original = nn.Conv2d.forward

    def hijacked(self, x):
        calls.append(x.shape)
        return original(self, x)

    monkeypatch.setattr(nn.Conv2d, "forward", hijacked)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with small_map_convolutions(conv):
        out = conv(torch.randn(1, 4, 4, 4, requires_grad=True))
    assert calls == [torch.Size([1, 4, 4, 4])] and out.grad_fn.name() == "SlowConv2DBackward0"
