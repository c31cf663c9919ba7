"""While a run holds Forge's loaded model: keep Neo's memory manager off it, and refuse model switches.

Memory (`memory_held`): Neo's `backend.memory_management` frees room for the next model by offloading others
(`free_memory`), swaps a patcher for a clone with other patches by unpatching and reloading the weights
(`load_models_gpu`), and unloads everything on request (`unload_all_models`: the Unload button, the API, a
generation after a model-setting change). For the run, `free_memory` keeps the held models loaded, a load that would
put other patches on a held model is refused (a `<lora:…>` tag in a sample prompt: Neo would merge that LoRA into the
weights being trained), and unloading everything is refused.

Model switches (`switches_refused`): Neo's checkpoint, "VAE / Text Encoder" and "Diffusion in Low Bits" choices
(`modules_forge.main_entry.checkpoint_change` / `modules_change` / `dtype_change`, the settings page and the API)
store the option and then call `refresh_model_loading_parameters()`, which makes the next generation load other
weights. For the run that call is refused: the options it would act on are put back first, so the UI, the saved
config and the loaded model keep agreeing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import HostError

MODEL_OPTIONS = ("sd_model_checkpoint", "forge_checkpoint_", "forge_additional_modules", "forge_unet_storage_dtype")
"""The WebUI options (and their per-preset copies, same prefix) whose change makes Neo load other weights."""

_STOP = "stop it in the Train tab (or wait for it to finish)"


@contextmanager
def patched_attributes(owner: Any, replacements: dict[str, Callable[..., Any]]) -> Iterator[None]:
    """Set each attribute of `owner` for the block; on exit put the original back where ours is still in place."""
    originals = {name: getattr(owner, name) for name in replacements}
    try:
        for name, value in replacements.items():
            setattr(owner, name, value)
        yield
    finally:
        for name, value in replacements.items():
            if getattr(owner, name, None) is value:
                setattr(owner, name, originals[name])


@contextmanager
def memory_held(patchers: list[Any], host_name: str,
                other_patches: Callable[[Any, Any], bool]) -> Iterator[None]:
    """Keep the models of `patchers` loaded as they are for the block (see the module docstring);
    `other_patches(patcher, held)` says whether loading a patcher of a held model would change its weights."""
    memory_management = sys.modules.get("backend.memory_management")
    if memory_management is None:
        yield
        return
    held = {id(patcher.model): patcher for patcher in patchers}
    free_memory = memory_management.free_memory
    load_models_gpu = memory_management.load_models_gpu

    def is_held(loaded: Any) -> bool:
        patcher = loaded.model  # a weak reference's target in Neo's LoadedModel; None once it is gone
        return patcher is not None and id(getattr(patcher, "model", None)) in held

    def keeping_held(memory_required: float, device: Any, keep_loaded: Any = (), **kwargs: Any) -> Any:
        keep = [*keep_loaded, *(m for m in memory_management.current_loaded_models if is_held(m))]
        return free_memory(memory_required, device, keep, **kwargs)

    def refusing_other_patches(models: list[Any], *args: Any, **kwargs: Any) -> Any:
        for patcher in models:
            owner = held.get(id(getattr(patcher, "model", None)))
            if owner is not None and patcher is not owner and other_patches(patcher, owner):
                raise HostError(f"LoRA Studio: this generation would merge a LoRA into the weights being trained "
                                f"({host_name} applies `<lora:…>` tags by changing the weights); take the tag out "
                                f"of the sample prompts, or {_STOP}")
        return load_models_gpu(models, *args, **kwargs)

    def refusing_unload() -> None:
        raise HostError(f"LoRA Studio: the models cannot be unloaded while training holds them; {_STOP}, then unload")

    replacements = {"free_memory": keeping_held, "load_models_gpu": refusing_other_patches,
                    "unload_all_models": refusing_unload}
    with patched_attributes(memory_management, replacements):
        yield


def _model_options(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key.startswith(MODEL_OPTIONS)}


def _put_back(opts: Any, saved: dict[str, Any]) -> None:
    """Set the model options of `opts` back to `saved` (removing ones added since) and save the config if changed."""
    data = getattr(opts, "data", None)
    if not isinstance(data, dict) or _model_options(data) == saved:
        return
    for key in [key for key in data if key.startswith(MODEL_OPTIONS) and key not in saved]:
        del data[key]
    data.update(saved)
    shared = sys.modules.get("modules.shared")
    filename = getattr(shared, "config_filename", None)
    if filename and callable(getattr(opts, "save", None)):
        opts.save(filename)


@contextmanager
def switches_refused(host_name: str, opts: Any | None = None) -> Iterator[bool]:
    """Refuse Neo's model switches for the block (see the module docstring); yields whether the hook is in place
    (False outside the WebUI, where nothing can switch the model)."""
    main_entry = sys.modules.get("modules_forge.main_entry")
    if main_entry is None or not callable(getattr(main_entry, "refresh_model_loading_parameters", None)):
        yield False
        return
    if opts is None:
        opts = getattr(sys.modules.get("modules.shared"), "opts", None)
    data = getattr(opts, "data", None)
    saved = _model_options(data) if isinstance(data, dict) else {}

    def refuse(*args: Any, **kwargs: Any) -> None:
        _put_back(opts, saved)
        raise HostError(f"LoRA Studio: the checkpoint, “VAE / Text Encoder” and “Diffusion in Low Bits” cannot change "
                        f"while training holds {host_name}'s model; {_STOP}, then switch")

    with patched_attributes(main_entry, {"refresh_model_loading_parameters": refuse}):
        yield True
