"""Per-block strengths on Forge Neo's LoRA patches, through its own loader and cache.

How Neo's built-in Lora works (extensions-builtin/sd_forge_lora, neo-2.26): `ExtraNetworkLora.activate` parses
te/unet as floats and calls `networks.load_networks(names, te, unet)`. That function skips all work when
`sd_model.current_lora_hash == str([[filename, unet, te, online], …])`; otherwise it starts again from
`forge_objects_original` and, per LoRA, `load_lora_for_models` clones the UNet and CLIP patchers and
`add_patches(patches, strength_patch=unet|te)` appends `(strength, adapter, strength_model, offset, function,
online)` to `patcher.patches[param_key]`. The weights are merged when the patcher is loaded for sampling; a key
whose entry is "online" is merged on the fly at every forward instead (`LowVramPatch`).

The hook, and why:
1. Cache identity: for the length of one generation, `networks.load_networks` is replaced on the module by a
   wrapper that turns the te/unet multipliers of each LoRA with block weights into `TaggedMultiplier`s carrying the
   block spec. `str()` of the list shows the tag, so Neo's own hash changes exactly when the block weights change:
   the same set twice loads and merges nothing, a changed set reloads once, and a plain set after a weighted one
   reloads (no leak). The wrapper is removed when the generation ends.
2. Per-block strength: right after a load, each patch entry whose strength is tagged is replaced by one with the
   strength × its block's weight (UNet keys, by their LDM path) or × BASE (text-encoder keys). The entries are
   Neo's own, in the new patchers `load_lora_for_models` made, so the original patchers are never touched.
3. Step windows (`start=`/`stop=`): the UNet entries of a windowed LoRA are marked online, so Neo merges them at
   every forward from the entry list, and `set_step` swaps their strength between the weight and 0 at the
   window's edges. The text-encoder part is in the conditioning, computed before sampling, and is not gated.
4. Module counts: `blockweight_matching.NeoLoadCounts` wraps `load_lora_for_models` for the same span, to record
   how many of each LoRA's modules Neo placed (`counts`).
Rejected: splitting a LoRA into one `add_patches` call per block group (a second read of the file and of Neo's key
map), and keeping our own copy of the merged weights (a second copy of the base weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

from ...arch import Arch
from ...blocks.step_window import is_gated, never_closes
from ...hosts.forge_neo import NEO_VERSION, forge_version
from ...unet_blocks import block_of_ldm_path
from .matching import NeoLoadCounts
from .networks import NetworkPlan, TaggedMultiplier

__all__ = ["ForgePatchWeights", "PlanKey", "UNET_PREFIX", "entry_lists", "is_neo", "plan_key"]

UNET_PREFIX = "diffusion_model."
"""Neo's UNet parameter keys start here; what follows is the LDM module path (`input_blocks.4.1.…`)."""
_STRENGTH, _ONLINE, _NEO_ENTRY_LENGTH = 0, 5, 6

PlanKey = tuple[str, float, float]
"""(name as mentioned in the prompt, te, unet): what `load_networks` receives for one LoRA."""


def plan_key(name: str, te: float, unet: float) -> PlanKey:
    return (str(name), float(te), float(unet))


def entry_lists(patcher: Any) -> Iterator[tuple[str, MutableSequence[Any]]]:
    """(param key, its list of patch entries) of a Neo patcher (`patches[key]`, tuples) or a Forge 2 one
    (`lora_patches[(filename, strength, strength_model, online)][key]`, lists)."""
    patches = getattr(patcher, "patches", None)
    if isinstance(patches, dict):
        yield from patches.items()
    for per_key in (getattr(patcher, "lora_patches", None) or {}).values():
        yield from per_key.items()


def is_neo() -> bool:
    """Whether this WebUI is Forge Neo (`modules_forge.forge_version.version == "neo"`)."""
    return forge_version() == NEO_VERSION


@dataclass
class _WindowEntry:
    """One online patch entry of a windowed LoRA: where it sits and its strength while the window is open."""

    entries: MutableSequence[tuple[Any, ...]]
    index: int
    strength: float
    plan: NetworkPlan


def _identity(plan: NetworkPlan) -> tuple[Any, ...]:
    """What the load depends on: the block table and the window (not whether the window is open now)."""
    blocks = tuple(sorted(plan.weights.items())) if plan.weights is not None else None
    return ("lora_studio", blocks, plan.call.start, plan.call.stop)


class ForgePatchWeights:
    """Installs the `load_networks` wrapper for one generation and scales the patches each load adds."""

    def __init__(self) -> None:
        self._networks: Any = None
        self._original: Callable[..., Any] | None = None
        self._own_attribute = True
        self._plans: dict[PlanKey, NetworkPlan] = {}
        self._by_identity: dict[tuple[Any, ...], NetworkPlan] = {}
        self._windows: list[_WindowEntry] = []
        self._sd_model: Any = None
        self._arch: Arch | None = None
        self.loads = 0
        """How many times Neo reloaded LoRAs through the wrapper (its cache missed); for tests and the bench."""
        self.counts = NeoLoadCounts()

    @property
    def installed(self) -> bool:
        return self._original is not None

    def install(self, networks: Any, sd_model: Any, arch: Arch) -> None:
        """Wrap `networks.load_networks` until `restore()`; no plans yet (every LoRA loads as the built-in does)."""
        self.restore()
        self._networks, self._sd_model, self._arch = networks, sd_model, arch
        self._original = networks.load_networks
        self._own_attribute = "load_networks" in vars(networks)
        networks.load_networks = self._load_networks
        self.counts.install(networks)

    def set_plans(self, plans: Mapping[PlanKey, NetworkPlan]) -> None:
        """The block weights for the next loads, by what `load_networks` receives for each LoRA."""
        self._plans = {key: plan for key, plan in plans.items() if plan.needed}

    def restore(self) -> None:
        """Put Neo's `load_networks` back (if nobody replaced our wrapper meanwhile); open every window."""
        if self._networks is not None and self._original is not None:
            if vars(self._networks).get("load_networks") == self._load_networks:
                if self._own_attribute:
                    self._networks.load_networks = self._original
                else:  # it came from the class: exact means removing ours
                    del self._networks.load_networks
        self.counts.restore()
        self._networks = self._original = self._sd_model = None
        self._plans = {}
        self._set_windows(lambda plan: True)

    def set_step(self, step: int, total: int) -> bool:
        """Open or close each step window for 0-based `step` of `total`; True when some strength switched."""
        return self._set_windows(lambda plan: plan.unet_on_at(step, total))

    # --- internals -----------------------------------------------------------------------------------------------

    def _load_networks(self, names: list[str], te_multipliers: list[float] | None = None,
                       unet_multipliers: list[float] | None = None, *args: Any, **kwargs: Any) -> Any:
        te = list(te_multipliers if te_multipliers is not None else [1.0] * len(names))
        unet = list(unet_multipliers if unet_multipliers is not None else [1.0] * len(names))
        self._by_identity = {}
        for index, name in enumerate(names):
            plan = self._plans.get(plan_key(name, te[index], unet[index]))
            if plan is None:
                continue
            identity = _identity(plan)
            self._by_identity[identity] = plan
            te[index] = TaggedMultiplier(float(te[index]), identity)
            unet[index] = TaggedMultiplier(float(unet[index]), identity)
        assert self._original is not None
        result = self._original(names, te, unet, *args, **kwargs)
        self._scale_new_entries()
        return result

    def _scale_new_entries(self) -> None:
        """Replace every tagged entry of the current patchers by its block-weighted one. Only a load that Neo did
        not skip leaves tagged entries; its windowed entries replace the ones registered before."""
        objects = getattr(self._sd_model, "forge_objects", None)
        unet = getattr(objects, "unet", None)
        clip = getattr(getattr(objects, "clip", None), "patcher", None)
        windows: list[_WindowEntry] = []
        fresh = False
        for patcher, is_unet in ((unet, True), (clip, False)):
            for key, entries in entry_lists(patcher):
                for index, entry in enumerate(entries):
                    strength = entry[_STRENGTH]
                    if isinstance(strength, TaggedMultiplier):
                        fresh = True
                        plan = self._by_identity[strength.identity]
                        entries[index] = self._scaled(entry, key, plan, is_unet)
                        if is_unet and _windowed(plan) and len(entry) == _NEO_ENTRY_LENGTH:
                            windows.append(_WindowEntry(entries, index, float(entries[index][_STRENGTH]), plan))
        if fresh:
            self.loads += 1
            self._windows = windows

    def _scaled(self, entry: Sequence[Any], key: str, plan: NetworkPlan, is_unet: bool) -> Sequence[Any]:
        """The entry (same type: Neo's tuple, Forge 2's list) with its strength × BASE (text encoder) or × its
        block's weight (UNet; a windowed Neo entry also goes online)."""
        if not is_unet:
            return type(entry)((float(entry[_STRENGTH]) * plan.base, *entry[1:]))
        assert self._arch is not None
        block = block_of_ldm_path(key.removeprefix(UNET_PREFIX), self._arch)
        scaled = [float(entry[_STRENGTH]) * plan.block_weight(block), *entry[1:]]
        if _windowed(plan) and len(entry) == _NEO_ENTRY_LENGTH:
            scaled[_ONLINE] = True
        return type(entry)(scaled)

    def _set_windows(self, is_open: Callable[[NetworkPlan], bool]) -> bool:
        switched = False
        for window in self._windows:
            on = is_open(window.plan)
            window.plan.unet_on = on
            entry = window.entries[window.index]
            wanted = window.strength if on else 0.0
            if entry[_STRENGTH] != wanted:
                window.entries[window.index] = (wanted, *entry[1:])
                switched = True
        return switched


def _windowed(plan: NetworkPlan) -> bool:
    """Whether the LoRA's UNet entries must go online (merged at each forward) for a window that opens or closes.
    A window open in every step stays merged as a plain LoRA: on a UNet stored in bf16 or fp8 an online merge rounds
    differently from Neo's one-time merge, and `start=0` would then not give the plain LoRA's image."""
    return is_gated(plan.call) and not never_closes(plan.call)
