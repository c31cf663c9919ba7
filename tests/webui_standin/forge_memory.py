"""Stand-ins for Forge Neo's `backend.patcher.base.ModelPatcher` and `backend.memory_management` (neo-2.26).

Written from reading Neo's code; what the host relies on behaves as there:
- A patcher holds `patches` {param key: [(strength_patch, delta, strength_model, offset, function, online)]}, a
  `patches_uuid` renewed by `add_patches`, and a `backup` dict shared with its clones. Loading it (`load`) merges
  its patches: the original parameter goes into `backup` (on the CPU: the same tensor, no copy) and a new
  Parameter holding weight + strength·delta takes its place (`utils.set_attr`). `unpatch_model` puts a Parameter
  on each backup back (same storage) and clears it.
- `load_models_gpu` drops every loaded clone of a requested patcher's model (`detach(unpatch_all=False)`: the
  weights stay merged) and loads the requested one through `partially_load`, which unpatches first when the model's
  `current_weight_patches_uuid` differs from the patcher's. A patcher already loaded is reused as it is.
- `free_memory(memory_required, device, keep_loaded)` unloads (unpatching) every loaded model on `device` not in
  `keep_loaded` while `memory_required` exceeds `FREE_MEMORY` (the device's free memory); `unload_all_models`
  frees 1e30 bytes. `LoadedModel.model` is a weak reference's target, as in Neo.
Left out: low-VRAM partial loads, online (on-the-fly) LoRA, pinned memory, streams, the size bookkeeping.
Install with `install_memory_management(monkeypatch)`; the module's state is reset each time.
"""

from __future__ import annotations

import sys
import uuid
import weakref
from types import ModuleType
from typing import Any

import pytest
import torch

FREE_MEMORY = 0.0
"""The device's free memory for `free_memory`: 0 = every request unloads what it may."""

current_loaded_models: list[LoadedModel] = []
calls: list[tuple[str, Any]] = []
"""What was called, in order: ("load", [patcher classes]), ("unload", class name)."""


def _set_attr(obj: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    """`backend.utils.set_attr`: a new frozen Parameter on `value` at the dotted `key`."""
    *path, name = key.split(".")
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, name, torch.nn.Parameter(value, requires_grad=False))


def _get_attr(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


class ModelPatcher:
    """`backend.patcher.base.ModelPatcher`, reduced to patches, backups, clones and full loads."""

    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device) -> None:
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.patches: dict[str, list[tuple]] = {}
        self.backup: dict[str, torch.Tensor] = {}
        self.object_patches: dict[str, Any] = {}
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.patches_uuid = uuid.uuid4()
        self.parent: ModelPatcher | None = None
        for attr, value in (("model_loaded_weight_memory", 0), ("model_lowvram", False),
                            ("current_weight_patches_uuid", None), ("device", offload_device)):
            if not hasattr(model, attr):
                setattr(model, attr, value)

    def clone(self) -> ModelPatcher:
        n = self.__class__.__new__(self.__class__)
        n.__dict__.update(self.__dict__)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = dict(self.object_patches)
        n.model_options = {"transformer_options": dict(self.model_options["transformer_options"])}
        n.parent = self
        return n

    def is_clone(self, other: Any) -> bool:
        return self.model is getattr(other, "model", None)

    def add_patches(self, patches: dict[str, torch.Tensor], strength_patch: float = 1.0,
                    strength_model: float = 1.0, *, filename: str | None = None, online_mode: bool | None = None
                    ) -> list[str]:
        keys = self.model.state_dict().keys()
        added = [key for key in patches if key in keys]
        for key in added:
            self.patches.setdefault(key, []).append((strength_patch, patches[key], strength_model, None, None,
                                                     online_mode))
        self.patches_uuid = uuid.uuid4()
        return added

    def patch_weight_to_device(self, key: str, device_to: torch.device | None = None) -> None:
        weight = _get_attr(self.model, key)
        if key not in self.backup:
            self.backup[key] = weight.to(device=self.offload_device)
        merged = weight.detach().to(device_to or weight.device, copy=True)
        for strength, delta, *_ in self.patches[key]:
            merged += strength * delta.to(merged)
        _set_attr(self.model, key, merged)

    def load(self, device_to: torch.device | None = None) -> None:
        for key in self.patches:
            self.patch_weight_to_device(key, device_to)
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
        self.model.model_lowvram = False
        self.model.model_loaded_weight_memory = 1
        self.model.current_weight_patches_uuid = self.patches_uuid

    def unpatch_model(self, device_to: torch.device | None = None, unpatch_weights: bool = True) -> None:
        if unpatch_weights:
            for key, weight in list(self.backup.items()):
                _set_attr(self.model, key, weight)
            self.backup.clear()
            self.model.current_weight_patches_uuid = None
            if device_to is not None:
                self.model.to(device_to)
                self.model.device = device_to
            self.model.model_loaded_weight_memory = 0

    def partially_load(self, device_to: torch.device, extra_memory: float = 0, force_patch_weights: bool = False
                       ) -> float:
        current = self.model.current_weight_patches_uuid
        unpatch = current is not None and current != self.patches_uuid
        self.unpatch_model(self.offload_device, unpatch_weights=unpatch)
        if not self.model.model_lowvram and self.model.model_loaded_weight_memory > 0:
            return 0
        self.load(device_to)
        return 1

    def detach(self, unpatch_all: bool = True) -> torch.nn.Module:
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=True)
        return self.model


class LoadedModel:
    """`memory_management.LoadedModel`: a weak reference to the patcher, compared by patcher identity."""

    def __init__(self, model: ModelPatcher) -> None:
        self._model = weakref.ref(model)
        self.device = model.load_device

    @property
    def model(self) -> ModelPatcher | None:
        return self._model()

    def model_load(self) -> None:
        self.model.partially_load(self.device, 1e32)

    def model_unload(self) -> bool:
        self.model.detach(True)
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoadedModel) and self.model is other.model


def free_memory(memory_required: float, device: torch.device, keep_loaded: list[LoadedModel] = []) -> list:  # noqa: B006
    unloaded = []
    for i in range(len(current_loaded_models) - 1, -1, -1):
        loaded = current_loaded_models[i]
        if FREE_MEMORY >= memory_required:
            break
        if loaded.device == device and loaded not in keep_loaded and loaded.model is not None:
            calls.append(("unload", type(loaded.model.model).__name__))
            loaded.model_unload()
            unloaded.append(current_loaded_models.pop(i))
    return unloaded


def load_models_gpu(models: list[ModelPatcher], memory_required: float = 0, force_patch_weights: bool = False,
                    minimum_memory_required: float | None = None, force_full_load: bool = False) -> None:
    calls.append(("load", [type(m.model).__name__ for m in models]))
    to_load = []
    for patcher in models:
        loaded = LoadedModel(patcher)
        if loaded in current_loaded_models:
            to_load.append(current_loaded_models[current_loaded_models.index(loaded)])
            continue
        to_load.append(loaded)
    for loaded in to_load:
        for i in range(len(current_loaded_models) - 1, -1, -1):
            other = current_loaded_models[i]
            if other is not loaded and loaded.model.is_clone(other.model):
                current_loaded_models.pop(i).model.detach(unpatch_all=False)
    devices = {loaded.device for loaded in to_load}
    for device in devices:
        free_memory(memory_required, device, keep_loaded=to_load)
    for loaded in to_load:
        loaded.model_load()
        if loaded in current_loaded_models:
            current_loaded_models.remove(loaded)
        current_loaded_models.insert(0, loaded)


def load_model_gpu(model: ModelPatcher) -> None:
    load_models_gpu([model])


def unload_all_models() -> None:
    free_memory(1e30, torch.device("cpu"))


def install_memory_management(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Put this module into sys.modules as `backend.memory_management` (undone by monkeypatch), state reset."""
    module = sys.modules[__name__]
    current_loaded_models.clear()
    calls.clear()
    monkeypatch.setattr(module, "FREE_MEMORY", 0.0)
    backend = ModuleType("backend")
    backend.__path__ = []
    backend.memory_management = module
    monkeypatch.setitem(sys.modules, "backend", backend)
    monkeypatch.setitem(sys.modules, "backend.memory_management", module)
    return module
