"""Stand-ins for lllyasviel's Forge 2 (main, 2025): its `ModelPatcher` + `LoraLoader` and `backend.memory_management`.

Written from Forge 2's backend/patcher/{base,lora}.py and backend/memory_management.py; the engine is the Neo
stand-in's (the engine classes are the same in both), with these patchers swapped in (`build_forge2_engine`).
- A patcher carries `lora_patches` {(filename, strength_patch, strength_model, online): {key: [patch…]}};
  `clone()` copies the dict; every patcher of one model shares the model's `lora_loader`.
- `LoraLoader.refresh(lora_patches, offload_device)` does nothing when the patch set's hash is the loaded one;
  otherwise it puts every backed-up original Parameter back (`set_attr_raw`, the same objects), then merges the
  new set: the original goes into `backup`, a new Parameter with weight + strength·delta takes its place.
- `load_models_gpu(models)` skips a patcher already loaded (no refresh); for the others it unloads their clones
  (`unload_model_clones`, without unpatching) and loads them: `model_load` moves the model and calls
  `refresh_loras()`. `SWAP` = True makes loads keep part of the model in CPU memory (`model_accelerated`).
- `free_memory(memory_required, device, keep_loaded=[], free_all=False)`; `unload_all_models()`.
Install with `install_forge2(monkeypatch)` after the Neo fake modules (it replaces `backend.memory_management`).
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

from .forge_memory import _get_attr

CPU = torch.device("cpu")
SWAP = False
current_loaded_models: list[LoadedModel] = []


def _set_attr_raw(obj: Any, key: str, value: Any) -> None:
    *path, name = key.split(".")
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, name, value)


class LoraLoader:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.backup: dict[str, torch.nn.Parameter] = {}
        self.online_backup: list[Any] = []
        self.loaded_hash = str([])

    def refresh(self, lora_patches: dict, offload_device: torch.device = CPU, force_refresh: bool = False) -> None:
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        for key, weight in self.backup.items():
            _set_attr_raw(self.model, key, weight)
        self.backup = {}
        for (_, strength, _, _), patches in lora_patches.items():
            for key, deltas in patches.items():
                weight = _get_attr(self.model, key)
                if key not in self.backup:
                    self.backup[key] = weight.to(device=offload_device)
                merged = weight.detach().clone().float()
                for delta in deltas:
                    merged += strength * delta.to(merged)
                _set_attr_raw(self.model, key, torch.nn.Parameter(merged.to(weight.dtype), requires_grad=False))
        self.loaded_hash = hashes


class ModelPatcher:
    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device) -> None:
        self.model = model
        self.lora_patches: dict[tuple, dict[str, list[torch.Tensor]]] = {}
        self.object_patches: dict[str, Any] = {}
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.load_device, self.offload_device, self.current_device = load_device, offload_device, offload_device
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader

    def clone(self) -> ModelPatcher:
        n = ModelPatcher(self.model, self.load_device, self.offload_device)
        n.lora_patches = self.lora_patches.copy()
        return n

    def is_clone(self, other: Any) -> bool:
        return self.model is getattr(other, "model", None)

    def add_patches(self, *, filename: str, patches: dict[str, torch.Tensor], strength_patch: float = 1.0,
                    strength_model: float = 1.0, online_mode: bool = False) -> set[str]:
        keys = {k for k, _ in self.model.named_parameters()}
        this = {key: [delta] for key, delta in patches.items() if key in keys}
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = this
        return set(this)

    def refresh_loras(self) -> None:
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)


class LoadedModel:
    def __init__(self, model: ModelPatcher) -> None:
        self.model = model
        self.device = model.load_device
        self.model_accelerated = False

    def model_load(self) -> None:
        self.model.model.to(self.device)
        self.model_accelerated = SWAP
        self.model.refresh_loras()

    def model_unload(self, avoid_model_moving: bool = False) -> None:
        self.model_accelerated = False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoadedModel) and self.model is other.model


def free_memory(memory_required: float, device: torch.device, keep_loaded: Any = (), free_all: bool = False) -> None:
    for i in range(len(current_loaded_models) - 1, -1, -1):
        loaded = current_loaded_models[i]
        if loaded.device == device and loaded not in keep_loaded:
            current_loaded_models.pop(i).model_unload()


def load_models_gpu(models: list[ModelPatcher], memory_required: float = 0, hard_memory_preservation: float = 0
                    ) -> None:
    for patcher in models:
        loaded = LoadedModel(patcher)
        if loaded in current_loaded_models:
            continue
        for i in range(len(current_loaded_models) - 1, -1, -1):
            if patcher.is_clone(current_loaded_models[i].model):
                current_loaded_models.pop(i).model_unload(avoid_model_moving=True)
        loaded.model_load()
        current_loaded_models.insert(0, loaded)


def unload_all_models() -> None:
    free_memory(1e30, torch.device("cpu"), free_all=True)


def install_forge2(monkeypatch: pytest.MonkeyPatch) -> Any:
    """This module as `backend.memory_management` and version "2.0.1v1.10.1" (state reset; undone by monkeypatch)."""
    module = sys.modules[__name__]
    current_loaded_models.clear()
    monkeypatch.setattr(module, "SWAP", False)
    monkeypatch.setitem(sys.modules, "backend.memory_management", module)
    monkeypatch.setattr(sys.modules["backend"], "memory_management", module)
    monkeypatch.setattr(sys.modules["modules_forge.forge_version"], "version", "2.0.1v1.10.1")
    return module


def use_forge2_patchers(engine: Any) -> Any:
    """Swap the Neo stand-in engine's patchers for Forge 2's (same models); returns the engine."""
    objects = engine.forge_objects
    unet = ModelPatcher(objects.unet.model, objects.unet.load_device, objects.unet.offload_device)
    objects.clip.patcher = ModelPatcher(objects.clip.cond_stage_model, objects.unet.load_device,
                                        objects.unet.offload_device)
    objects.vae.patcher = ModelPatcher(objects.vae.first_stage_model, objects.unet.load_device,
                                       objects.unet.offload_device)
    objects.unet = unet
    engine.forge_objects_original = objects.shallow_copy()
    engine.forge_objects_after_applying_lora = objects.shallow_copy()
    return engine


def apply_loras(engine: Any, loras: list[tuple[dict[str, torch.Tensor], float]]) -> None:
    """Forge 2's `load_networks`: clones of the original patchers with `add_patches(filename=…)`, and the hash."""
    engine.current_lora_hash = str([[id(patches), strength] for patches, strength in loras])
    unet, clip = engine.forge_objects_original.unet, engine.forge_objects_original.clip
    for index, (patches, strength) in enumerate(loras):
        unet = unet.clone()
        unet.add_patches(filename=f"lora{index}", patches=patches, strength_patch=strength)
        clip = clip.clone()
        clip.patcher.add_patches(filename=f"lora{index}", patches=patches, strength_patch=strength)
    engine.forge_objects.unet, engine.forge_objects.clip = unet, clip
    engine.forge_objects_after_applying_lora = engine.forge_objects.shallow_copy()
