"""capture_state / restore_state on small module trees: every recorded flag comes back exactly."""

from __future__ import annotations

import pytest
import torch

from lib_lora.hosts.snapshot import capture_state, freeze_for_training, preserved_state, restore_state

pytestmark = pytest.mark.hostcompat


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 3)
        self.checkpoint = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def tree() -> torch.nn.Module:
    return torch.nn.Sequential(Block(), Block())


def test_restore_puts_back_flags_hooks_and_forwards():
    model = tree()
    model[1].proj.weight.requires_grad_(False)
    model.eval()
    model[0].register_forward_hook(lambda *a: None)
    original_class_forward = Block.forward
    state = capture_state([model])

    freeze_for_training([model])
    assert not any(p.requires_grad for p in model.parameters()) and model[0].checkpoint is False
    model.train()
    model[0].register_forward_pre_hook(lambda *a: None)
    model[1].forward = lambda x: x
    Block.forward = lambda self, x: x * 2
    try:
        restore_state(state)
    finally:
        forward_after = Block.__dict__["forward"]
        Block.forward = original_class_forward

    assert forward_after is original_class_forward
    assert "forward" not in model[1].__dict__
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]
    assert not any(m.training for m in model.modules())
    assert len(model[0]._forward_hooks) == 1 and len(model[0]._forward_pre_hooks) == 0
    assert model[0].checkpoint is True and model[1].checkpoint is True


def test_preserved_state_restores_when_the_body_raises():
    model = tree()
    with pytest.raises(RuntimeError, match="boom"):
        with preserved_state([model]):
            freeze_for_training([model])
            raise RuntimeError("boom")
    assert all(p.requires_grad for p in model.parameters())
    assert model[0].checkpoint is True


def test_gradients_the_body_left_on_host_parameters_are_dropped():
    model = tree()
    model(torch.ones(1, 3)).sum().backward()
    kept = model[0].proj.weight.grad.clone()
    with preserved_state([model]):
        model[1].proj.weight.grad = None
        model(torch.ones(1, 3)).sum().backward()
        assert not torch.equal(model[0].proj.weight.grad, kept)
    assert torch.equal(model[0].proj.weight.grad, kept) and model[1].proj.weight.grad is not None


def test_shared_submodules_are_recorded_once():
    shared = torch.nn.Linear(2, 2)
    a, b = torch.nn.Sequential(shared), torch.nn.Sequential(shared)
    state = capture_state([a, b])
    assert len(state.requires_grad) == 2  # weight and bias, once
