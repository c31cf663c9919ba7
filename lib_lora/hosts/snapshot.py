"""Capture and restore what training touches on a module tree, so a host is left exactly as it was.

Captured per module: `training`, every hook dictionary, instance-level `forward` overrides, and the flags that
select checkpointing, attention implementation or trainability (FLAG_ATTRS); per parameter: `requires_grad` and `.grad`;
per module class: its `forward` (A1111 swaps attention implementations by replacing class methods).
Weights are not copied: training never writes them, and the tests check that they stay bit-identical.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

# Attributes whose value decides how a module runs: ldm/sgm checkpoint flags, diffusers' checkpointing flag,
# diffusers' attention processor, sgm's embedder trainability.
FLAG_ATTRS: tuple[str, ...] = ("checkpoint", "use_checkpoint", "gradient_checkpointing", "processor", "is_trainable")

HOOK_DICTS: tuple[str, ...] = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)

_MISSING = object()


@dataclass
class ModuleTreeState:
    """A snapshot of the run-time state of one or more module trees (see module docstring)."""

    requires_grad: list[tuple[torch.nn.Parameter, bool]] = field(default_factory=list)
    grads: list[tuple[torch.nn.Parameter, torch.Tensor | None]] = field(default_factory=list)
    training: list[tuple[torch.nn.Module, bool]] = field(default_factory=list)
    hooks: list[tuple[dict, OrderedDict]] = field(default_factory=list)
    attrs: list[tuple[Any, str, Any]] = field(default_factory=list)


def unique_modules(roots: Iterable[torch.nn.Module]) -> list[torch.nn.Module]:
    """Every module under `roots`, each once (shared submodules too), in traversal order."""
    seen: dict[int, torch.nn.Module] = {}
    for root in roots:
        for module in root.modules():
            seen.setdefault(id(module), module)
    return list(seen.values())


def capture_state(roots: Iterable[torch.nn.Module]) -> ModuleTreeState:
    """Record the state of every module under `roots` (shared submodules once)."""
    state = ModuleTreeState()
    modules = unique_modules(roots)
    seen_params: set[int] = set()
    classes: dict[type, None] = {}
    for module in modules:
        state.training.append((module, module.training))
        for name in HOOK_DICTS:
            hooks = getattr(module, name, None)
            if isinstance(hooks, dict):
                state.hooks.append((hooks, OrderedDict(hooks)))
        state.attrs.append((module, "forward", module.__dict__.get("forward", _MISSING)))
        for attr in FLAG_ATTRS:
            if attr in module.__dict__ or hasattr(type(module), attr):
                state.attrs.append((module, attr, getattr(module, attr, _MISSING)))
        for param in module.parameters(recurse=False):
            if id(param) not in seen_params:
                seen_params.add(id(param))
                state.requires_grad.append((param, param.requires_grad))
                # backward accumulates into .grad in place: keep a copy (host weights normally have none)
                state.grads.append((param, None if param.grad is None else param.grad.detach().clone()))
        for cls in type(module).__mro__:
            if cls is torch.nn.Module or cls is object:
                break
            classes.setdefault(cls, None)
    for cls in classes:
        state.attrs.append((cls, "forward", cls.__dict__.get("forward", _MISSING)))
    return state


def restore_state(state: ModuleTreeState) -> None:
    """Put back everything `capture_state` recorded, in place (hook dicts keep their identity)."""
    for param, flag in state.requires_grad:
        param.requires_grad_(flag)
    for param, grad in state.grads:
        param.grad = grad
    for module, flag in state.training:
        module.training = flag
    for hooks, saved in state.hooks:
        hooks.clear()
        hooks.update(saved)
    for owner, attr, value in state.attrs:
        _restore_attr(owner, attr, value)


def _restore_attr(owner: Any, attr: str, value: Any) -> None:
    is_class = isinstance(owner, type)
    current = owner.__dict__.get(attr, _MISSING) if (is_class or attr == "forward") else getattr(owner, attr, _MISSING)
    if current is value:
        return
    if value is _MISSING:
        if attr in owner.__dict__:
            delattr(owner, attr)
        return
    if attr == "processor" and hasattr(owner, "set_processor"):
        owner.set_processor(value)
    else:
        setattr(owner, attr, value)


@contextmanager
def preserved_state(roots: Iterable[torch.nn.Module]) -> Iterator[ModuleTreeState]:
    """Capture on entry, restore on exit, also when the body raises."""
    state = capture_state(list(roots))
    try:
        yield state
    finally:
        restore_state(state)


def freeze_for_training(roots: Iterable[torch.nn.Module]) -> None:
    """Base weights frozen and in eval mode; built-in checkpointing off (the trainer checkpoints itself)."""
    for module in unique_modules(roots):
        module.training = False
        for param in module.parameters(recurse=False):
            param.requires_grad_(False)
        for attr in ("checkpoint", "use_checkpoint"):
            if isinstance(module.__dict__.get(attr), bool):
                setattr(module, attr, False)
        if getattr(module, "gradient_checkpointing", None) is True:
            module.gradient_checkpointing = False


@contextmanager
def instance_attributes(settings: Iterable[tuple[Any, str, Any]]) -> Iterator[int]:
    """Set each (object, name, value) of `settings` as an instance attribute for the block; yields how many were
    set. On exit, also on errors, each is removed where it still holds the value set (a later patch stays)."""
    done: list[tuple[Any, str, Any]] = []
    try:
        for target, name, value in settings:
            setattr(target, name, value)
            done.append((target, name, value))
        yield len(done)
    finally:
        for target, name, value in done:
            if target.__dict__.get(name) is value:
                del target.__dict__[name]
