"""Shared checks for Host implementations: a snapshot of everything training_mode() must leave as it was."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lib_lora.hosts.snapshot import HOOK_DICTS


@dataclass
class HostSnapshot:
    weights: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]
    grads: dict[str, torch.Tensor | None]
    training: dict[str, bool]
    hooks: dict[str, tuple[int, ...]]
    attention: dict[str, Any]
    instance_calls: dict[str, tuple[str, ...]]
    """Per module, which of INSTANCE_CALLS it holds as an instance attribute (a run's patches must be gone after)."""


INSTANCE_CALLS = ("forward", "_conv_forward")

def _roots(host) -> dict[str, torch.nn.Module]:
    roots = {"unet": host.unet, "vae": host.vae}
    roots.update({f"te{i}": te for i, te in enumerate(host.text_encoders)})
    return roots


def _attention_impl(module: torch.nn.Module) -> Any:
    """What decides how a module computes attention: its processor, instance forward, class forward."""
    return (
        getattr(module, "processor", None),
        module.__dict__.get("forward"),
        type(module).__dict__.get("forward"),
    )


def snapshot_host(host) -> HostSnapshot:
    weights, requires_grad, grads, training, hooks, attention, instance_calls = {}, {}, {}, {}, {}, {}, {}
    for root_name, root in _roots(host).items():
        for name, tensor in root.state_dict(keep_vars=True).items():
            weights[f"{root_name}.{name}"] = tensor.detach().clone()
        for name, param in root.named_parameters():
            requires_grad[f"{root_name}.{name}"] = param.requires_grad
            grads[f"{root_name}.{name}"] = None if param.grad is None else param.grad.detach().clone()
        for name, module in root.named_modules():
            key = f"{root_name}.{name}"
            training[key] = module.training
            hooks[key] = tuple(len(getattr(module, d, {}) or {}) for d in HOOK_DICTS)
            instance_calls[key] = tuple(name for name in INSTANCE_CALLS if name in module.__dict__)
            if "attn" in name.split(".")[-1] or "Attention" in type(module).__name__:
                attention[key] = _attention_impl(module)
    return HostSnapshot(weights, requires_grad, grads, training, hooks, attention, instance_calls)


def assert_same_state(before: HostSnapshot, after: HostSnapshot) -> None:
    assert before.weights.keys() == after.weights.keys()
    changed = [k for k in before.weights if not torch.equal(before.weights[k], after.weights[k])]
    assert not changed, f"weights changed: {changed[:5]}"
    assert before.requires_grad == after.requires_grad
    grads_changed = [
        k for k, g in before.grads.items()
        if (g is None) != (after.grads[k] is None) or (g is not None and not torch.equal(g, after.grads[k]))
    ]
    assert not grads_changed, f"gradients left on host parameters: {grads_changed[:5]}"
    assert before.training == after.training
    assert before.hooks == after.hooks
    left = [k for k in before.instance_calls if before.instance_calls[k] != after.instance_calls[k]]
    assert not left, f"instance-level forward / _conv_forward changed: {left[:5]}"
    assert before.attention.keys() == after.attention.keys()
    differing = [k for k in before.attention if before.attention[k] != after.attention[k]]
    assert not differing, f"attention implementation changed: {differing[:5]}"
