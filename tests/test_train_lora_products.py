"""LoRA's fused hook path (one addmm / baddbmm, 1×1 convolutions as matrix products) against the general path
(Δ(x) computed, scaled, multiplied and added), forward and gradients, over a table of host modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_lora.networks.keys import Target
from lib_lora.train.network.lora import LoraTrainable
from lib_lora.train.network.module import ModuleSpec, TrainableModule

pytestmark = pytest.mark.hostcompat

CASES = {
    "linear, tokens": (lambda: nn.Linear(12, 20), (2, 7, 12), None),
    "linear, rows": (lambda: nn.Linear(12, 20, bias=False), (5, 12), None),
    "conv 1x1": (lambda: nn.Conv2d(12, 20, 1), (2, 12, 5, 6), None),
    "conv 1x1, channels_last input": (lambda: nn.Conv2d(12, 20, 1), (2, 12, 5, 6), torch.channels_last),
    "conv 1x1, stride 2": (lambda: nn.Conv2d(12, 20, 1, stride=2), (2, 12, 6, 6), None),
    "conv 3x3, padding 1 (LoCon)": (lambda: nn.Conv2d(12, 20, 3, padding=1), (2, 12, 5, 6), None),
    "conv 3x3, stride 2": (lambda: nn.Conv2d(12, 20, 3, stride=2, padding=1), (1, 12, 7, 7), None),
}


def lora_for(module: nn.Module, rank: int = 4) -> LoraTrainable:
    target = Target(key="lora_unet_x", root="unet", module_path="x", module=module)
    lora = LoraTrainable(ModuleSpec(target=target, dim=rank, alpha=3.0), torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora.lora_up.normal_(generator=torch.Generator().manual_seed(1))  # up starts at zero: make Δ visible
    return lora


def run(lora: LoraTrainable, module: nn.Module, x: torch.Tensor, path) -> tuple[torch.Tensor, ...]:
    """The hooked output through `path` (LoraTrainable.add_delta or the base class's) and its gradients."""
    lora.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = path(lora, module, x, module(x), 0.7)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), x.grad, lora.lora_down.grad, lora.lora_up.grad


@pytest.mark.parametrize("case", list(CASES))
def test_fused_path_equals_the_general_path(case: str) -> None:
    make, shape, memory_format = CASES[case]
    torch.manual_seed(0)
    module = make().requires_grad_(False)
    lora = lora_for(module)
    x = torch.randn(shape)
    if memory_format is not None:
        x = x.to(memory_format=memory_format)
    fused = run(lora, module, x, LoraTrainable.add_delta)
    general = run(lora, module, x, TrainableModule.add_delta)
    names = ("output", "x grad", "down grad", "up grad")
    for name, a, b in zip(names, fused, general):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{case}, {n}: {m}")
    assert fused[0].abs().max() > 0 and not torch.equal(fused[0], module(x))  # Δ is not zero


def test_dropout_and_dtype_mismatch_take_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    module = nn.Linear(6, 8).requires_grad_(False)
    lora = lora_for(module)
    calls = []
    general = TrainableModule.add_delta
    monkeypatch.setattr(TrainableModule, "add_delta", lambda *a: calls.append(1) or general(*a))
    x = torch.randn(3, 6)
    lora.add_delta(module, x, module(x), 1.0)
    assert calls == []
    lora.rank_dropout = 0.5
    lora.train()
    lora.add_delta(module, x, module(x), 1.0)
    lora.rank_dropout = None
    lora.add_delta(module, x, module(x).half(), 1.0)
    assert calls == [1, 1]

