"""Put LoRAs on a host: merged into the weights for generation, or attached with hooks for training/step gating.

Merging keeps every weight's original values before its first change and always rebuilds from them
(backup + Σ deltas), never by subtracting, so `restore()` gives bit-identical weights. By default the backup is
a copy on `backup_device` (CPU, saving GPU memory) and merged values are written into the weight's own storage,
so code holding the parameter's storage keeps seeing it and steps run on the same memory as before. With
`swap_storage=True`, a weight already on `backup_device` keeps its original tensor as the backup and the
merged values get new storage: nothing is copied and restoring is a swap (faster apply; new memory). What is merged is
remembered per weight as a signature (which modules, which multipliers), so applying the same set again
touches nothing and a changed set rebuilds only the weights whose contributions changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import LoraFormatError
from .formats.base import NetworkModule
from .keys import Target, TargetIndex


@dataclass(frozen=True)
class AppliedLora:
    """One LoRA of a set: its modules, multipliers for the text encoders and the UNet, per-block UNet weights.

    `identity` names the file's content (its hash, or path and mtime) so the same file is recognised across
    calls; `block_weights` maps block ids (IN00…, M00, OUT00…, time_embed, …) to a factor, missing ones are 1.
    """

    name: str
    modules: Mapping[str, NetworkModule]
    identity: str
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    block_weights: Mapping[str, float] = field(default_factory=dict)

    def multiplier_for(self, target: Target) -> float:
        """The factor this LoRA's module on `target` is merged with."""
        if target.root != "unet":
            return self.te_multiplier
        return self.unet_multiplier * self.block_weights.get(target.block, 1.0)


@dataclass
class ApplyReport:
    """What an `apply` did: weights rebuilt, weights left as they were, keys that matched no module."""

    rebuilt: int = 0
    unchanged: int = 0
    restored: int = 0
    unmatched: dict[str, list[str]] = field(default_factory=dict)


# A weight slot: the parameter (or its q/k/v rows) that one or more LoRA modules change.
SlotId = tuple[int, str, int | None, int | None]
Contribution = tuple[str, str, float]  # (lora identity, module key, multiplier)


@dataclass
class _Slot:
    """One weight or bias a set changes. `swapped`: the original tensor is the backup and the parameter was given
    new storage for the merged values (no copy); otherwise `backup` is a copy and merges write in place."""

    target: Target
    param_name: str
    backup: torch.Tensor
    swapped: bool
    signature: tuple[Contribution, ...] = ()


def _slot_id(target: Target, param_name: str) -> SlotId:
    rows = target.rows
    return (id(target.module), param_name, rows.start if rows else None, rows.stop if rows else None)


def _parameter(target: Target, param_name: str) -> torch.Tensor:
    """The tensor a slot writes: the weight (sliced to its rows) or the bias."""
    if param_name == "bias":
        return target.module.bias
    return target.weight


class WeightMerger:
    """Merges sets of LoRAs into the modules of one TargetIndex, with exact backups (see module docstring)."""

    def __init__(self, index: TargetIndex, *, backup_device: torch.device | str = "cpu",
                 swap_storage: bool = False) -> None:
        self.index = index
        self.backup_device = torch.device(backup_device)
        self.swap_storage = swap_storage
        self._slots: dict[SlotId, _Slot] = {}

    @property
    def merged_slots(self) -> int:
        """How many weights currently differ from their backups' values (hold at least one LoRA)."""
        return sum(1 for slot in self._slots.values() if slot.signature)

    def apply(self, loras: Sequence[AppliedLora]) -> ApplyReport:
        """Make the merged state equal `loras`.

        Every module of a weight that will be rebuilt is checked against it before anything is written
        (LoraShapeError names the key; unchanged weights were checked when merged); if merging still fails, the
        base weights are restored and the error raised.
        """
        report = ApplyReport()
        wanted = self._wanted(loras, report)
        by_identity = {lora.identity: lora for lora in loras}
        changed = {
            slot_id: entry for slot_id, entry in wanted.items()
            if (slot := self._slots.get(slot_id)) is None or slot.signature != entry[2]
        }
        for target, param_name, contributions in changed.values():
            if param_name != "bias":
                for identity, key, _ in contributions:
                    by_identity[identity].modules[key].check_fits(target.shape)
        report.unchanged = len(wanted) - len(changed)
        try:
            for slot_id, (target, param_name, contributions) in changed.items():
                slot = self._slots.get(slot_id) or self._new_slot(slot_id, target, param_name)
                self._rebuild(slot, contributions, by_identity)
                report.rebuilt += 1
            for slot_id in [s for s in self._slots if s not in wanted]:
                self._restore_slot(self._slots.pop(slot_id))
                report.restored += 1
        except BaseException:
            self.restore()
            raise
        return report

    def restore(self) -> None:
        """Copy every backup back (bit-identical base weights) and forget all merged state."""
        with torch.no_grad():
            for slot in self._slots.values():
                self._restore_slot(slot)
        self._slots.clear()

    @contextmanager
    def applied(self, loras: Sequence[AppliedLora]) -> Iterator[ApplyReport]:
        """Merge `loras` for the duration of the block; restore on exit, also when it raises."""
        try:
            yield self.apply(loras)
        finally:
            self.restore()

    # --- steps ---------------------------------------------------------------------------------------------
    def _wanted(
        self, loras: Sequence[AppliedLora], report: ApplyReport
    ) -> dict[SlotId, tuple[Target, str, tuple[Contribution, ...]]]:
        """Per slot, the contributions the set asks for (slots with none are left out)."""
        wanted: dict[SlotId, tuple[Target, str, list[Contribution]]] = {}
        for lora in loras:
            matched, unmatched = self.index.match(lora.modules.keys())
            if unmatched:
                report.unmatched[lora.name] = unmatched
            for key, target in matched.items():
                multiplier = lora.multiplier_for(target)
                if multiplier == 0.0:
                    continue
                module = lora.modules[key]
                names = [target.param_name]
                if module.bias_delta(1.0) is not None:
                    if getattr(target.module, "bias", None) is None or target.rows is not None:
                        raise LoraFormatError("has a bias delta but its target has no bias", key=key)
                    names.append("bias")
                for param_name in names:
                    slot_id = _slot_id(target, param_name)
                    entry = wanted.setdefault(slot_id, (target, param_name, []))
                    entry[2].append((lora.identity, key, multiplier))
        return {sid: (t, p, tuple(c)) for sid, (t, p, c) in wanted.items()}

    def _new_slot(self, slot_id: SlotId, target: Target, param_name: str) -> _Slot:
        param = getattr(target.module, param_name)
        if self.swap_storage and target.rows is None and param.device == self.backup_device:
            # The weight already lives where its backup would: keep the original tensor as the backup and give
            # the parameter fresh storage, so backing up copies nothing and restoring is a swap.
            original = param.data
            param.data = torch.empty_like(original)
            slot = _Slot(target, param_name, original, swapped=True)
        else:
            current = _parameter(target, param_name)
            slot = _Slot(target, param_name, current.detach().to(self.backup_device, copy=True), swapped=False)
        self._slots[slot_id] = slot
        return slot

    def _rebuild(self, slot: _Slot, contributions: tuple[Contribution, ...],
                 by_identity: Mapping[str, AppliedLora]) -> None:
        """Write backup + Σ deltas into the slot's tensor (in float32, cast once), then check it is finite."""
        modules = [(by_identity[identity].modules[key], multiplier) for identity, key, multiplier in contributions]
        param = _parameter(slot.target, slot.param_name)
        base = slot.backup.to(param.device, torch.float32)
        with torch.no_grad():
            if slot.param_name == "bias":
                total = base.clone()
                for module, multiplier in modules:
                    total += module.bias_delta(multiplier).to(total.device).reshape(total.shape)
                param.copy_(total)
            elif param.dtype == torch.float32 and param.is_contiguous():
                _merge_weight_into(param, base, modules)
            else:
                total = torch.empty_like(base)
                _merge_weight_into(total, base, modules)
                param.copy_(total)
            # NaN/Inf anywhere (including an fp16 overflow after the cast) makes the float32 sum non-finite
            if not torch.isfinite(param.sum(dtype=torch.float32)):
                raise LoraFormatError("merging gives non-finite weights", key=contributions[0][1])
        slot.signature = contributions

    def _restore_slot(self, slot: _Slot) -> None:
        with torch.no_grad():
            if slot.swapped:
                getattr(slot.target.module, slot.param_name).data = slot.backup
            else:
                param = _parameter(slot.target, slot.param_name)
                param.copy_(slot.backup.to(param.device))
        slot.signature = ()


def _merge_weight_into(out: torch.Tensor, base: torch.Tensor, modules: Sequence[tuple[NetworkModule, float]]) -> None:
    """out = base + Σ multiplier·ΔW (float32): plain low-rank modules in one matrix product, the others one by one."""
    rows = base.shape[0]
    flat = base.reshape(rows, -1)
    ups, downs, others = [], [], []
    for module, multiplier in modules:
        factors = module.low_rank_factors(base.device)
        if factors is not None and factors[0].shape[0] == rows and factors[1].shape[1] == flat.shape[1]:
            ups.append(factors[0] * multiplier)
            downs.append(factors[1])
        else:
            others.append((module, multiplier))  # delta_weight reshapes or raises LoraShapeError
    if ups:
        torch.addmm(flat, torch.cat(ups, 1), torch.cat(downs, 0), out=out.view(rows, -1))
    else:
        out.copy_(base)
    for module, multiplier in others:
        out += module.delta_weight(base, multiplier)


# --- hooks: training and step-gated application --------------------------------------------------------------


def _functional_delta(module: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """What `delta` added to the module's weight would add to its output, for linear and conv-shaped weights."""
    if delta.dim() == 2:
        return F.linear(x, delta)
    if delta.dim() == 4:
        return F.conv2d(
            x,
            delta,
            stride=getattr(module, "stride", 1),
            padding=getattr(module, "padding", 0),
            dilation=getattr(module, "dilation", 1),
            groups=getattr(module, "groups", 1),
        )
    raise LoraFormatError(f"cannot hook a weight of {delta.dim()} dimensions")


class HookedLoras:
    """LoRAs attached with forward hooks: no module replaced, no weight written; `detach()` removes every hook.

    Multipliers can change between calls (`set_multipliers`), which is how `start=`/`stop=` gate LoRAs by
    sampling step. Fused open_clip attention (q/k/v rows of in_proj) cannot be hooked; merge those instead.
    """

    def __init__(self, index: TargetIndex, loras: Sequence[AppliedLora]) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._scales: dict[str, float] = {lora.identity: 1.0 for lora in loras}
        self.unmatched: dict[str, list[str]] = {}
        try:
            self._attach(index, loras)
        except BaseException:
            self.detach()
            raise

    def _attach(self, index: TargetIndex, loras: Sequence[AppliedLora]) -> None:
        for lora in loras:
            matched, unmatched = index.match(lora.modules.keys())
            if unmatched:
                self.unmatched[lora.name] = unmatched
            for key, target in matched.items():
                if target.rows is not None or target.param_name != "weight":
                    raise LoraFormatError("fused attention weights can be merged but not hooked", key=key)
                base = target.weight.detach().float()
                delta = lora.modules[key].delta_weight(base, lora.multiplier_for(target)).to(target.weight.dtype)
                self._handles.append(target.module.register_forward_hook(self._hook(lora.identity, delta)))

    def _hook(self, identity: str, delta: torch.Tensor):
        def add_delta(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            scale = self._scales[identity]
            if scale == 0.0:
                return output
            return output + scale * _functional_delta(module, args[0], delta.to(args[0].device))

        return add_delta

    def set_multipliers(self, scales: Mapping[str, float]) -> None:
        """Scale each attached LoRA (by identity) on top of its own multipliers; 0 switches it off."""
        unknown = set(scales) - set(self._scales)
        if unknown:
            raise KeyError(f"no attached LoRA with identity {sorted(unknown)}")
        self._scales.update(scales)

    def detach(self) -> None:
        """Remove every hook this object added (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def hooked(index: TargetIndex, loras: Sequence[AppliedLora]) -> Iterator[HookedLoras]:
    """Attach `loras` with hooks for the block; detached on exit, also when it raises."""
    attached = HookedLoras(index, loras)
    try:
        yield attached
    finally:
        attached.detach()
