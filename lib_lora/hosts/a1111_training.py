"""What training on A1111's loaded model sets aside for the length of a run, and puts back after.

--medvram: the WebUI's `modules.lowvram` keeps the parts of the model on the CPU and moves the one in use to the GPU
from forward pre-hooks; `medvram_paused` takes those off and puts the whole model on the device for the run.

Model switches: A1111 applies a new checkpoint, VAE or SD-UNet choice in the setting's `onchange` callback, which
`Options.set` runs after storing the value; when the callback raises, `Options.set` shows the error, puts the old
value back and reports no change, so the quick-settings dropdown snaps back. Loading other weights into the model
being trained would change the base mid-run (and `send_model_to_trash` would move it to the meta device), so
`model_switches_refused` replaces each of these callbacks by one that raises, for the run.

Lazy LoRA merges: the built-in Lora merges (and takes back out) a layer's LoRAs in that layer's class-level forward.
A run that gives layers instance forwards (`fp8_base`) first does for them what that forward would
(`builtin_lora_settled`), so they hold the base weights.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import HostError

LOWVRAM_HOOK_NAME = "send_me_to_gpu"
"""The name of the forward pre-hook `modules.lowvram.setup_for_low_vram` registers (A1111 1.0 to 1.10)."""

_Placement = list[tuple[torch.nn.Module, str, bool, torch.device]]


def _remove_lowvram_hooks(module: torch.nn.Module) -> None:
    """Drop the WebUI's medvram/lowvram pre-hooks from `module` (only those: other hooks stay)."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if getattr(hook, "__name__", None) == LOWVRAM_HOOK_NAME:
            del module._forward_pre_hooks[key]
            getattr(module, "_forward_pre_hooks_with_kwargs", {}).pop(key, None)


def _tensor_placement(root: torch.nn.Module) -> _Placement:
    """Where each parameter and buffer under `root` is: (module, name, is_parameter, device)."""
    placement: _Placement = []
    for module in root.modules():
        placement += [(module, name, True, p.device) for name, p in module._parameters.items() if p is not None]
        placement += [(module, name, False, b.device) for name, b in module._buffers.items() if b is not None]
    return placement


def _restore_placement(placement: _Placement) -> None:
    """Move each recorded tensor back to its device; parameters stay the same objects (as `Module.to` does)."""
    for module, name, is_parameter, device in placement:
        tensors = module._parameters if is_parameter else module._buffers
        tensor = tensors.get(name)
        if tensor is None or tensor.device == device:
            continue
        if is_parameter:
            tensor.data = tensor.data.to(device)
        else:
            tensors[name] = tensor.to(device)


@contextmanager
def medvram_paused(model: Any, device: torch.device) -> Iterator[None]:
    """With --medvram (`sd_model.lowvram` set, no --lowvram): the whole model on the device for the run.

    The WebUI's `modules.lowvram` keeps the text encoder, VAE and UNet on the CPU and moves "the one in use" to
    the GPU from forward pre-hooks (`send_me_to_gpu`), sending the previous one back. Training must not see
    that: a swap between a forward and its backward would move weights the autograd graph holds, and swapping
    every step would be slow. So the hooks are taken off (`preserved_state` puts them back), nothing counts as
    "the module in the GPU" (the WebUI's processing may send that one to the CPU between samples), every part
    goes to the device, and on exit each tensor goes back where it was and `module_in_gpu` is restored.
    """
    if not getattr(model, "lowvram", False) or not isinstance(model, torch.nn.Module):
        yield
        return
    lowvram = sys.modules.get("modules.lowvram")
    module_in_gpu = getattr(lowvram, "module_in_gpu", None)
    placement = _tensor_placement(model)
    try:
        for module in model.modules():
            _remove_lowvram_hooks(module)
        if lowvram is not None:
            lowvram.module_in_gpu = None
        model.to(device)
        yield
    finally:
        _restore_placement(placement)
        if lowvram is not None:
            lowvram.module_in_gpu = module_in_gpu


MODEL_SETTINGS = ("sd_model_checkpoint", "sd_vae", "sd_unet")
"""The WebUI settings whose change loads other weights into (or around) the loaded model."""


@contextmanager
def model_switches_refused(opts: Any, holder: str) -> Iterator[list[str]]:
    """Make every MODEL_SETTINGS change through `opts` (A1111's `shared.opts`) fail with a HostError naming
    `holder` ("training") until exit; yields the settings guarded. Settings without a callback, or an `opts`
    without `data_labels` (not A1111's Options), are left as they are; a callback someone else replaced meanwhile
    is kept on exit."""
    labels = getattr(opts, "data_labels", None)
    guarded: list[tuple[str, Any, Callable[[], Any], Callable[[], Any]]] = []
    try:
        for key in MODEL_SETTINGS if isinstance(labels, dict) else ():
            info = labels.get(key)
            original = getattr(info, "onchange", None)
            if original is None:
                continue
            refuse = _refusal(key, holder)
            info.onchange = refuse
            guarded.append((key, info, original, refuse))
        yield [key for key, *_ in guarded]
    finally:
        for _, info, original, refuse in guarded:
            if info.onchange is refuse:
                info.onchange = original


def _refusal(key: str, holder: str) -> Callable[[], None]:
    def refuse() -> None:
        raise HostError(f"LoRA Studio: {key} cannot change while the loaded model is busy with {holder}; "
                        "stop it in the Train tab (or wait for it to finish), then switch")

    return refuse


def builtin_lora_settled(layers: Iterable[torch.nn.Module]) -> int:
    """Do now, for each of `layers`, what A1111's built-in Lora does at its next forward: bring its weights to the
    wanted set of networks (during a run: none, so a LoRA the last generation left merged is copied back out of
    the built-in's own backup). For layers whose forward a run replaces by an instance forward (`fp8_base`), which
    skips the built-in's class-level forward. Returns how many layers were settled; 0 outside A1111."""
    networks = sys.modules.get("networks")
    apply = getattr(networks, "network_apply_weights", None)
    if not callable(apply):
        return 0
    pending = [layer for layer in layers if getattr(layer, "network_current_names", ())]
    with torch.no_grad():
        for layer in pending:
            apply(layer)
    return len(pending)
