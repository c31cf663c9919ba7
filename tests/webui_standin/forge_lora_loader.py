"""Stand-ins of the built-in Lora loaders of Forge Neo and Forge 2, written from reading their code: neo-2.26 and
lllyasviel's Forge main (2.0.1v1.10.1), extensions-builtin/sd_forge_lora/networks.py `load_networks` /
`load_lora_for_models` and backend/patcher/base.py `ModelPatcher.clone` / `add_patches`.

Kept: the cache key `str([[filename, unet, te, online], …])` compared with `sd_model.current_lora_hash`; the reset
to `forge_objects_original` on a miss; one clone of the UNet and CLIP patchers per LoRA; the entries: Neo appends
`(strength_patch, adapter, strength_model, offset, function, online)` to `patches[key]`; Forge 2 stores
`[strength_patch, adapter, strength_model, offset, function]` in `lora_patches[(filename, strength_patch,
strength_model, online)][key]` and its `LoraLoader.refresh` re-merges when `str(list(lora_patches))` changes.
Left out: reading files (a LoRA here is {param_key: adapter} per part), key mapping, Nunchaku, logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class NeoPatcherStandIn:
    """`ModelPatcher`: per-key patch entry lists; `clone` copies each list, `add_patches` appends."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys
        self.patches: dict[str, list[tuple[Any, ...]]] = {}

    def clone(self) -> NeoPatcherStandIn:
        twin = NeoPatcherStandIn(self.keys)
        twin.patches = {key: entries[:] for key, entries in self.patches.items()}
        return twin

    def add_patches(self, patches: dict[str, Any], strength_patch: float = 1.0, strength_model: float = 1.0, *,
                    filename: str | None = None, online_mode: bool | None = None) -> list[str]:
        for key, adapter in patches.items():
            if key in self.keys:
                self.patches.setdefault(key, []).append((strength_patch, adapter, strength_model, None, None,
                                                         online_mode))
        return [key for key in patches if key in self.keys]


class Forge2PatcherStandIn:
    """Forge 2's `ModelPatcher`: `lora_patches` per LoRA identifier; `clone` copies the outer dict only."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys
        self.lora_patches: dict[tuple[Any, ...], dict[str, list[list[Any]]]] = {}

    def clone(self) -> Forge2PatcherStandIn:
        twin = Forge2PatcherStandIn(self.keys)
        twin.lora_patches = self.lora_patches.copy()
        return twin

    def add_patches(self, *, filename: str, patches: dict[str, Any], strength_patch: float = 1.0,
                    strength_model: float = 1.0, online_mode: bool = False) -> set[str]:
        these = {key: [[strength_patch, adapter, strength_model, None, None]] for key, adapter in patches.items()
                 if key in self.keys}
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = these
        return set(these)

    def refresh_hash(self) -> str:
        """What Forge 2's LoraLoader compares to decide whether to merge again."""
        return str(list(self.lora_patches.keys()))


@dataclass
class ForgeObjects:
    unet: NeoPatcherStandIn
    clip: SimpleNamespace

    def shallow_copy(self) -> ForgeObjects:
        return ForgeObjects(self.unet, self.clip)


@dataclass
class ForgeModelStandIn:
    """The parts of a Forge `sd_model` the loader touches, plus the family flags."""

    unet_keys: set[str]
    clip_keys: set[str]
    is_sd1: bool = True
    is_sdxl: bool = False
    patcher: type = NeoPatcherStandIn
    """NeoPatcherStandIn (Neo) or Forge2PatcherStandIn (Forge 2)."""
    current_lora_hash: str = "[]"
    forge_objects: ForgeObjects = field(init=False)
    forge_objects_original: ForgeObjects = field(init=False)
    forge_objects_after_applying_lora: ForgeObjects = field(init=False)

    def __post_init__(self) -> None:
        original = ForgeObjects(self.patcher(self.unet_keys),
                                SimpleNamespace(patcher=self.patcher(self.clip_keys)))
        self.forge_objects_original = original
        self.forge_objects = original.shallow_copy()
        self.forge_objects_after_applying_lora = original.shallow_copy()


class ForgeNetworksStandIn:
    """The `networks` module: `load_networks(names, te, unet)` with Neo's cache; `files` maps a name to its LoRA."""

    def __init__(self, sd_model: ForgeModelStandIn, files: dict[str, dict[str, Any]]) -> None:
        self.sd_model = sd_model
        self.files = files
        self.loaded_networks: list[Any] = []
        self.reads: list[str] = []

    def load_networks(self, names: list[str], te_multipliers: list[float] | None = None,
                      unet_multipliers: list[float] | None = None) -> None:
        model = self.sd_model
        self.loaded_networks[:] = [SimpleNamespace(name=name, mentioned_name=name) for name in names]
        targets = [[f"/loras/{name}.safetensors", u, t, False]
                   for name, u, t in zip(names, unet_multipliers, te_multipliers)]
        if model.current_lora_hash == str(targets):
            return
        model.current_lora_hash = str(targets)
        objects = model.forge_objects
        objects.unet, objects.clip = model.forge_objects_original.unet, model.forge_objects_original.clip
        for (filename, strength_model, strength_clip, online), name in zip(targets, names):
            self.reads.append(name)
            lora = self.files[name]
            unet = objects.unet.clone()
            unet.add_patches(patches={k: v for k, v in lora.items() if k in unet.keys}, filename=filename,
                             strength_patch=strength_model, online_mode=online)
            clip = SimpleNamespace(patcher=objects.clip.patcher.clone())
            clip.patcher.add_patches(patches={k: v for k, v in lora.items() if k in clip.patcher.keys},
                                     filename=filename, strength_patch=strength_clip, online_mode=online)
            objects.unet, objects.clip = unet, clip
        model.forge_objects_after_applying_lora = objects.shallow_copy()
