"""Per-block strengths on the networks A1111 1.10's built-in Lora loaded, through its own merge and cache.

How the built-in works (extensions-builtin/Lora, v1.10.1): `networks.load_networks` fills
`networks.loaded_networks` with `Network`s, reused as objects while their name stays in the prompt. Each patched
layer's forward calls `network_apply_weights`, which compares the layer's `network_current_names` with
`wanted_names = tuple((net.name, net.te_multiplier, net.unet_multiplier, net.dyn_dim) for net in loaded_networks)`
and only when they differ copies the layer's CPU backup back into its weight and adds each module's
`calc_updown()`, which every module type ends with `finalize_updown(...)`: `updown * scale * self.multiplier()`.

The hook, and why:
1. Per-module strength: each `NetworkModule` of a network with block weights or a step window gets an instance
   attribute `multiplier` (a `ModuleMultiplier`) that shadows the class method for that object only:
   te × BASE for text-encoder modules, unet × the block weight for UNet modules (× 1 for `time_embed`,
   `label_emb`, `out` and modules no block covers), and 0 for the UNet while its step window is closed. Every
   module type (LoRA, LoCon, LoHa, LoKr, …) reads its strength through `multiplier()`, so no file is reloaded, no
   tensor of the network is touched and nothing global is patched. Whether a module belongs to the text encoder
   or the UNet is read from where its layer (`sd_module`) sits: inside `sd_model.model.diffusion_model` or not.
2. Cache identity: the network's `te_multiplier`/`unet_multiplier` become `TaggedMultiplier`s, floats equal to
   the numbers the built-in parsed that also carry the block weights and the step-window state. `wanted_names`
   therefore changes exactly when the applied weights change: the same set twice merges nothing, while new block
   weights or a step switch make each layer restore its backup (a copy, never a subtraction) and re-merge.
Rejected: renaming networks as LBW does (`load_networks` reuses networks by name, so the file is read again on
every generation), scaling `up` tensors in place (no exact way back), and class-level patches of
`NetworkModule.multiplier` or `network_apply_weights` (global, seen by every other extension).

`BlockWeightPatch.restore()` deletes every attribute it set and turns its tags back into plain floats, leaving
the networks as the built-in made them; the next forward re-merges with the built-in's own multipliers.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ...arch import Arch
from ...blocks.step_window import active_steps, is_gated
from ...blocks.syntax import LoraCall
from ...unet_blocks import BASE, block_of_ldm_path, is_weighted_block

__all__ = ["BlockWeightPatch", "ModuleMultiplier", "NetworkPlan", "TaggedMultiplier", "unet_module_paths"]


class TaggedMultiplier(float):
    """A multiplier the built-in reads as a number, whose equality also compares what we apply on top of it.

    Equal to another TaggedMultiplier only when number and `identity` are equal; never equal to a plain number,
    so a network goes back to the built-in's own merge as soon as the tag is gone.
    """

    identity: tuple[Any, ...]

    def __new__(cls, value: float, identity: tuple[Any, ...]) -> TaggedMultiplier:
        tagged = super().__new__(cls, value)
        tagged.identity = identity
        return tagged

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TaggedMultiplier):
            return float(self) == float(other) and self.identity == other.identity
        return False

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((float(self), self.identity))

    def __repr__(self) -> str:
        return f"TaggedMultiplier({float(self)!r}, {self.identity!r})"


@dataclass
class NetworkPlan:
    """What one loaded network gets: BASE (× te), a weight per UNet block (× unet) and the call's step window.

    `weights` is the expanded table of `presets.resolve` (BASE and every block of the arch), or None for a call
    with a step window but no block weights. `unet_on` is the state of the window at the current step.
    """

    call: LoraCall
    weights: Mapping[str, float] | None = None
    unet_on: bool = True
    base: float = field(init=False)

    def __post_init__(self) -> None:
        self.base = float(self.weights.get(BASE, 1.0)) if self.weights else 1.0

    @property
    def needed(self) -> bool:
        """Whether anything differs from the built-in's own application."""
        return self.weights is not None or is_gated(self.call)

    def block_weight(self, block: str | None) -> float:
        """The weight of a UNet block; 1 for parts no block covers (time_embed, label_emb, out) and for None."""
        if self.weights is None or not is_weighted_block(block):
            return 1.0
        return float(self.weights.get(block, 1.0))

    def identity(self) -> tuple[Any, ...]:
        blocks = tuple(sorted(self.weights.items())) if self.weights is not None else None
        return ("lora_studio", blocks, self.call.start, self.call.stop, self.unet_on)

    def unet_on_at(self, step: int, total: int) -> bool:
        """Whether the window is open at 0-based `step` of `total` (steps past the end count as the last)."""
        if not is_gated(self.call):
            return True
        total = max(int(total), 1)
        return min(max(int(step), 0), total - 1) in active_steps(self.call, total)


class ModuleMultiplier:
    """Set as `module.multiplier` on one NetworkModule: the strength the built-in scales its delta with."""

    __slots__ = ("block_weight", "network", "plan", "text_encoder")

    def __init__(self, network: Any, plan: NetworkPlan, *, text_encoder: bool, block_weight: float) -> None:
        self.network = network
        self.plan = plan
        self.text_encoder = text_encoder
        self.block_weight = block_weight

    def __call__(self) -> float:
        if self.text_encoder:
            return float(self.network.te_multiplier) * self.plan.base
        if not self.plan.unet_on:
            return 0.0
        return float(self.network.unet_multiplier) * self.block_weight


_UNET_PATHS: weakref.WeakKeyDictionary[nn.Module, dict[int, str]] = weakref.WeakKeyDictionary()


def unet_module_paths(unet: nn.Module) -> dict[int, str]:
    """{id(module): its dotted path in `unet`} for every module of the UNet (cached per UNet object)."""
    paths = _UNET_PATHS.get(unet)
    if paths is None:
        paths = {id(module): path for path, module in unet.named_modules()}
        _UNET_PATHS[unet] = paths
    return paths


class BlockWeightPatch:
    """Installs per-module multipliers and tags on the built-in's loaded networks, and removes them exactly."""

    def __init__(self) -> None:
        self._modules: weakref.WeakSet[Any] = weakref.WeakSet()
        self._networks: list[tuple[Any, NetworkPlan]] = []

    @property
    def active(self) -> bool:
        """Whether some network currently carries our multipliers."""
        return bool(self._networks)

    def apply(self, loaded_networks: Iterable[Any], plans: Mapping[str, NetworkPlan], unet: nn.Module,
              arch: Arch) -> list[str]:
        """Restore, then patch each loaded network that has a plan (by mentioned name); returns the names patched."""
        self.restore()
        paths = unet_module_paths(unet)
        patched: list[str] = []
        for network in loaded_networks:
            name = network_name(network)
            plan = plans.get(name)
            if plan is None or not plan.needed:
                continue
            for module in getattr(network, "modules", {}).values():
                path = paths.get(id(getattr(module, "sd_module", None)))
                block = block_of_ldm_path(path, arch) if path is not None else BASE
                module.multiplier = ModuleMultiplier(
                    network, plan, text_encoder=path is None, block_weight=plan.block_weight(block)
                )
                self._modules.add(module)
            self._networks.append((network, plan))
            self._tag(network, plan)
            patched.append(name)
        return patched

    def set_step(self, step: int, total: int) -> bool:
        """Open or close each step window for 0-based `step` of `total`; True when some UNet part switched."""
        switched = False
        for network, plan in self._networks:
            on = plan.unet_on_at(step, total)
            if on != plan.unet_on:
                plan.unet_on = on
                self._tag(network, plan)
                switched = True
        return switched

    def restore(self) -> None:
        """Remove every multiplier attribute and tag this patch set (tags the built-in replaced are left alone)."""
        for module in list(self._modules):
            if isinstance(vars(module).get("multiplier"), ModuleMultiplier):
                del module.multiplier
        self._modules = weakref.WeakSet()
        for network, _plan in self._networks:
            for attr in ("te_multiplier", "unet_multiplier"):
                value = getattr(network, attr, None)
                if isinstance(value, TaggedMultiplier):
                    setattr(network, attr, float(value))
        self._networks = []

    @staticmethod
    def _tag(network: Any, plan: NetworkPlan) -> None:
        identity = plan.identity()
        for attr in ("te_multiplier", "unet_multiplier"):
            setattr(network, attr, TaggedMultiplier(float(getattr(network, attr)), identity))


def network_name(network: Any) -> str:
    """The name the prompt used for a loaded network (`mentioned_name`, else `name`)."""
    return str(getattr(network, "mentioned_name", None) or network.name)
