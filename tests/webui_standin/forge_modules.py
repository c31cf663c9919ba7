"""A minimal fake of Forge Neo's `modules` and `modules_forge` packages: what lib_lora/hosts/forge_neo*.py touches.

- `modules.shared`: `sd_model`, `opts` (CLIP_stop_at_last_layers = 2, Neo's default; sdxl crops; `data` with the
  model options; `save(filename)` recorded), `config_filename`.
- `modules.sd_models`: `model_data` (sd_model, forge_loading_parameters, forge_hash) and `forge_model_reload()`,
  which "loads" (serves `shared.sd_model`, counting `reloads`) only when the parameters changed, as Neo's does.
- `modules.processing`: `need_global_unload`, `StableDiffusionProcessing` (class-level prompt caches); no
  `process_images` unless a test adds it.
- `modules.prompt_parser.SdConditioning`.
- `modules_forge.forge_version.version` ("neo"), and `modules_forge.main_entry` with `checkpoint_change`, which
  stores and saves the option before calling `refresh_model_loading_parameters()` by its global name, as Neo's does.
- `backend.memory_management`: forge_memory.py.
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from .fake_modules import SdConditioning
from .forge_memory import install_memory_management


class Options:
    """`shared.opts`: attribute access over `data`, `set`, `save` (recorded)."""

    def __init__(self, **data: Any) -> None:
        self.__dict__["data"] = data
        self.__dict__["saved"] = []

    def __getattr__(self, name: str) -> Any:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self.data[name] = value

    def set(self, key: str, value: Any) -> bool:
        self.data[key] = value
        return True

    def save(self, filename: str) -> None:
        self.saved.append((filename, dict(self.data)))


def make_neo_opts(**overrides: Any) -> Options:
    return Options(**{"CLIP_stop_at_last_layers": 2, "sdxl_crop_top": 0, "sdxl_crop_left": 0,
                      "sd_model_checkpoint": "tiny.safetensors", "forge_additional_modules": [],
                      "forge_unet_storage_dtype": "Automatic", **overrides})


def _main_entry(opts: Options) -> ModuleType:
    main_entry = ModuleType("modules_forge.main_entry")
    main_entry.refreshes = []

    def refresh_model_loading_parameters(*, refresh: bool = True) -> None:
        main_entry.refreshes.append(opts.sd_model_checkpoint)

    def checkpoint_change(ckpt_name: str, preset: str | None, save: bool = True, refresh: bool = True) -> bool:
        if ckpt_name == opts.sd_model_checkpoint:
            return False
        opts.set("sd_model_checkpoint", ckpt_name)
        if preset is not None:
            opts.set(f"forge_checkpoint_{preset}", ckpt_name)
        if save:
            opts.save("config.json")
        if refresh:
            main_entry.refresh_model_loading_parameters()  # looked up at call time, as Neo's global name is
        return True

    main_entry.refresh_model_loading_parameters = refresh_model_loading_parameters
    main_entry.checkpoint_change = checkpoint_change
    return main_entry


def install_neo_modules(monkeypatch: pytest.MonkeyPatch, sd_model: Any, opts: Options, *,
                        version: str = "neo") -> SimpleNamespace:
    """Put the fake packages into sys.modules for the test (undone by monkeypatch)."""
    modules = ModuleType("modules")
    modules.__path__ = []
    shared = ModuleType("modules.shared")
    shared.sd_model, shared.opts, shared.config_filename = sd_model, opts, "config.json"
    sd_models = ModuleType("modules.sd_models")
    sd_models.model_data = SimpleNamespace(sd_model=sd_model, forge_loading_parameters={"checkpoint_info": "tiny"},
                                           forge_hash="")
    sd_models.reloads = 0

    def forge_model_reload() -> tuple[Any, bool]:
        """Neo's: loads when the chosen parameters changed since the last load (here: serves `shared.sd_model`)."""
        data = sd_models.model_data
        current = str(data.forge_loading_parameters)
        if data.forge_hash == current:
            return data.sd_model, False
        sd_models.reloads += 1
        data.sd_model, data.forge_hash = shared.sd_model, current
        return data.sd_model, True

    sd_models.forge_model_reload = forge_model_reload
    processing = ModuleType("modules.processing")
    processing.need_global_unload = False
    processing.StableDiffusionProcessing = type("StableDiffusionProcessing", (), {
        "cached_c": [None, None, None], "cached_uc": [None, None, None]})
    prompt_parser = ModuleType("modules.prompt_parser")
    prompt_parser.SdConditioning = SdConditioning
    forge = ModuleType("modules_forge")
    forge.__path__ = []
    forge_version = ModuleType("modules_forge.forge_version")
    forge_version.version = version
    main_entry = _main_entry(opts)
    for name, module in (("shared", shared), ("sd_models", sd_models), ("processing", processing),
                         ("prompt_parser", prompt_parser)):
        setattr(modules, name, module)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    for name, module in (("forge_version", forge_version), ("main_entry", main_entry)):
        setattr(forge, name, module)
        monkeypatch.setitem(sys.modules, f"modules_forge.{name}", module)
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules_forge", forge)
    memory = install_memory_management(monkeypatch)
    return SimpleNamespace(modules=modules, shared=shared, sd_models=sd_models, processing=processing,
                           forge_version=forge_version, main_entry=main_entry, memory=memory)
