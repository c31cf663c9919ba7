"""Stand-ins for what the built-in Loras do with keys that match no layer, for tests/test_hostile_matching.py.

- `BuiltinLoraWithErrors`: builtin_lora.BuiltinLora whose `network_apply_weights` catches a module that does not
  fit its layer as A1111 1.10 does (networks.py: `except RuntimeError` → logged at debug level, counted in
  `extra_network_lora.errors`, here `errors`), so a LoRA for another family merges what fits and goes on.
- `NeoKohyaNetworks`: Neo's `networks` module over kohya files (neo-2.26 sd_forge_lora/networks.py): `load_networks`
  with its cache key and reset, per LoRA `load_lora_for_models` looked up on the module (as Neo's global is), which
  maps module names to parameter keys (`key_map`, like `model_lora_keys_unet/clip`), builds one adapter per module
  with its tensors (`weights`; `loaded_keys` is the set of the whole pass, as in Neo's `load_lora`), skips a LoRA
  whose unmatched keys are more than half (Neo: "[LORA] LoRA mismatch"), and adds the rest to clones of the
  patchers, which it returns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .builtin_lora import BuiltinLora
from .forge_lora_loader import ForgeModelStandIn, ForgeNetworksStandIn


class BuiltinLoraWithErrors(BuiltinLora):
    """BuiltinLora whose merge skips and counts a module that does not fit its layer, as A1111 1.10 does."""

    def __init__(self, sd_model: Any, lora_files: dict[str, Path]) -> None:
        super().__init__(sd_model, lora_files)
        self.errors: Counter[str] = Counter()

    def network_apply_weights(self, layer: nn.Module) -> None:
        name = getattr(layer, "network_layer_name", None)
        if name is None or not isinstance(getattr(layer, "weight", None), torch.Tensor):
            return
        current = getattr(layer, "network_current_names", ())
        wanted = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in self.loaded_networks)
        if getattr(layer, "network_weights_backup", None) is None and wanted != ():
            layer.network_weights_backup = layer.weight.to("cpu", copy=True)
        if current == wanted:
            return
        self.network_restore_weights_from_backup(layer)
        for net in self.loaded_networks:
            module = net.modules.get(name)
            if module is None:
                continue
            try:
                with torch.no_grad():
                    updown, _ = module.calc_updown(layer.weight)
                    layer.weight.copy_((layer.weight.to(updown.dtype) + updown).to(layer.weight.dtype))
            except RuntimeError:
                self.errors[net.name] += 1
        layer.network_current_names = wanted


@dataclass
class AdapterStandIn:
    """Neo's `LoRAAdapter`: `loaded_keys` (the set its whole pass shares, as Neo passes one) and its tensors."""

    loaded_keys: set[str]
    weights: tuple[Any, ...]


class NeoKohyaNetworks(ForgeNetworksStandIn):
    """Neo's loader over kohya files: `files` maps a name to its file, `key_map` a module name to a parameter key."""

    def __init__(self, sd_model: ForgeModelStandIn, files: dict[str, Path], key_map: dict[str, str]) -> None:
        super().__init__(sd_model, {})
        self.lora_files = files
        self.key_map = key_map
        self.skipped: list[str] = []

    def load_networks(self, names: list[str], te_multipliers: list[float] | None = None,
                      unet_multipliers: list[float] | None = None) -> None:
        model = self.sd_model
        on_disk = [SimpleNamespace(filename=str(self.lora_files[name])) for name in names]
        self.loaded_networks[:] = [SimpleNamespace(name=name, mentioned_name=name, network_on_disk=disk)
                                   for name, disk in zip(names, on_disk)]
        targets = [[disk.filename, u, t, False] for disk, u, t in zip(on_disk, unet_multipliers, te_multipliers)]
        if model.current_lora_hash == str(targets):
            return
        model.current_lora_hash = str(targets)
        objects = model.forge_objects
        objects.unet, objects.clip = model.forge_objects_original.unet, model.forge_objects_original.clip
        for filename, strength_model, strength_clip, online in targets:
            self.reads.append(filename)
            objects.unet, objects.clip = self.load_lora_for_models(  # the module's global, looked up per call
                objects.unet, objects.clip, load_file(filename), strength_model, strength_clip, filename=filename,
                online_mode=online)
        model.forge_objects_after_applying_lora = objects.shallow_copy()

    def load_lora_for_models(self, model: Any, clip: Any, lora: dict[str, torch.Tensor], strength_model: float,
                             strength_clip: float, filename: str = "default", online_mode: bool = False) -> Any:
        patches, loaded = {}, set()
        for part in ("diffusion_model.", "clip_l."):  # Neo's UNet pass, then its CLIP pass
            shared: set[str] = set()  # as `load_lora`'s set: every adapter of a pass holds the same one
            for module, param_key in self.key_map.items():
                up, down, alpha = (f"{module}.lora_up.weight", f"{module}.lora_down.weight", f"{module}.alpha")
                if param_key.startswith(part) and up in lora and down in lora:
                    shared |= {up, down} | ({alpha} if alpha in lora else set())
                    patches[param_key] = AdapterStandIn(shared, (lora[up], lora[down], lora.get(alpha)))
            loaded |= shared
        if len(set(lora) - loaded) / len(lora) > 0.5:
            self.skipped.append(filename)
            return model, clip
        new_model = model.clone()
        new_model.add_patches(patches={k: v for k, v in patches.items() if k in model.keys}, filename=filename,
                              strength_patch=strength_model, online_mode=online_mode)
        new_clip = SimpleNamespace(patcher=clip.patcher.clone())
        new_clip.patcher.add_patches(patches={k: v for k, v in patches.items() if k in clip.patcher.keys},
                                     filename=filename, strength_patch=strength_clip, online_mode=online_mode)
        return new_model, new_clip
