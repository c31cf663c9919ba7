"""kohya module names <-> host modules: diffusers- and LDM-layout UNets, HF CLIP and open_clip text encoders.

A kohya module name is a prefix (`lora_unet`, `lora_te`, `lora_te1`, `lora_te2`) and a module path with every
"." turned into "_". UNet paths are spelled two ways, diffusers (`down_blocks.0.attentions.0.proj_in`, what
kohya writes for SD1/SD2) and LDM (`input_blocks.1.1.proj_in`, what kohya writes for SDXL); the tables of
`module_paths` convert one into the other (its functions are re-exported here). Text-encoder names are HF CLIP's;
an open_clip encoder (A1111's SD2 encoder and SDXL te2) is reached through them, its fused attention
`in_proj_weight` split into q/k/v row ranges.

`build_target_index` lists every weight of a host once (a `Target`) and answers to all spellings of it, so a
file in either spelling applies to a host in either layout. `Target.key` is the spelling we write: diffusers
for SD1/SD2 UNets, LDM for SDXL UNets, HF names for text encoders (the kohya standard of each family).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..arch import Arch, get_arch
from ..errors import HostError
from ..unet_blocks import BASE, block_of_ldm_path
from .module_paths import (
    diffusers_to_ldm_unet_path,
    kohya_name,
    ldm_to_diffusers_unet_path,
    resolve_ldm_unet_path,
    te_path_to_hf,
)

if TYPE_CHECKING:
    from ..hosts.base import Host

__all__ = [
    "UNET_PREFIX",
    "Target",
    "TargetIndex",
    "build_target_index",
    "build_target_index_for",
    "diffusers_to_ldm_unet_path",
    "kohya_name",
    "ldm_to_diffusers_unet_path",
    "resolve_ldm_unet_path",
    "te_path_to_hf",
]

UNET_PREFIX = "lora_unet"

_FUSED_QKV = ("q_proj", "k_proj", "v_proj")


# --- targets -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One weight a LoRA module can change: a module's `param_name`, or the q/k/v `rows` of a fused in_proj.

    `key` is the kohya name we write; `root` is "unet", "te1" or "te2" (SD1/SD2's one encoder is "te1");
    `module_path` is dotted within that root; `block` is the block id (`lib_lora.unet_blocks`): BASE for
    text encoders, None for a UNet module no rule places.
    """

    key: str
    root: str
    module_path: str
    module: nn.Module = field(repr=False)
    param_name: str = "weight"
    rows: slice | None = None
    block: str | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The parameter, or a view of its `rows` (write through it under `torch.no_grad()`)."""
        tensor = getattr(self.module, self.param_name)
        return tensor if self.rows is None else tensor[self.rows]

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    def __hash__(self) -> int:  # slices are unhashable before Python 3.12
        rows = None if self.rows is None else (self.rows.start, self.rows.stop)
        return hash((self.key, self.root, self.module_path, id(self.module), self.param_name, rows))


class TargetIndex:
    """Every weight of a host's UNet and text encoders, found under each kohya spelling it has."""

    def __init__(self, arch: Arch, entries: Iterable[tuple[Target, tuple[str, ...]]]) -> None:
        """`entries`: (target, its spellings, canonical first); raises HostError if two targets share a name."""
        self.arch = arch
        self._targets: list[Target] = []
        self._by_name: dict[str, Target] = {}
        self._spellings: dict[str, tuple[str, ...]] = {}
        for target, spellings in entries:
            if not spellings or spellings[0] != target.key:
                raise ValueError(f"the spellings of {target.key!r} must start with it, got {spellings}")
            for name in spellings:
                other = self._by_name.setdefault(name, target)
                if other is not target:
                    raise HostError(
                        f"two modules share the kohya name {name!r}: {other.root}.{other.module_path} and "
                        f"{target.root}.{target.module_path}"
                    )
            self._targets.append(target)
            self._spellings[target.key] = spellings

    def lookup(self, key: str) -> Target | None:
        """The target of a kohya key (module name, or tensor key: the part before its first '.'), or None."""
        return self._by_name.get(key.split(".", 1)[0])

    def match(self, keys: Iterable[str]) -> tuple[dict[str, Target], list[str]]:
        """({key: target} for the keys found, [keys not found] in their order)."""
        matched: dict[str, Target] = {}
        unmatched: list[str] = []
        for key in keys:
            target = self.lookup(key)
            if target is None:
                unmatched.append(key)
            else:
                matched[key] = target
        return matched, unmatched

    def targets(self) -> tuple[Target, ...]:
        """Every target once (UNet, then te1, te2), each under its canonical key."""
        return tuple(self._targets)

    def spellings(self, target: Target) -> tuple[str, ...]:
        """Every kohya name `target` answers to, canonical first."""
        return self._spellings[target.key]

    def __len__(self) -> int:
        return len(self._targets)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.lookup(key) is not None


_CANONICAL_UNET_SPELLING: dict[str, tuple[str, str]] = {
    "sd1": ("diffusers", "ldm"),
    "sd2": ("diffusers", "ldm"),
    "sdxl": ("ldm", "diffusers"),
}
"""UNet spellings per family, the one kohya writes first."""


def _weighted_modules(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) for every module carrying a tensor `weight` of ≥1 dimension, whatever its class.

    That is Linear, Conv2d, Embedding, the norms (1-D weights, for LyCORIS "full"/norm diffs) and any op class
    that is no nn.Linear/nn.Conv2d subclass but holds a weight (as Forge's may).
    """
    for path, module in root.named_modules():
        weight = getattr(module, "weight", None)
        if path and isinstance(weight, torch.Tensor) and weight.ndim >= 1:
            yield path, module


def _unet_entries(unet: nn.Module, layout: str, arch: Arch) -> Iterator[tuple[Target, tuple[str, ...]]]:
    if layout not in ("diffusers", "ldm"):
        raise HostError(f"unknown UNet layout {layout!r}; expected 'diffusers' or 'ldm'")
    module_names = {name for name, _ in unet.named_modules()}
    order = _CANONICAL_UNET_SPELLING.get(arch.name, ("diffusers", "ldm"))
    for path, module in _weighted_modules(unet):
        if layout == "diffusers":
            spelled = {"diffusers": path,
                       "ldm": resolve_ldm_unet_path(diffusers_to_ldm_unet_path(path), module_names.__contains__)}
        else:
            candidates = ldm_to_diffusers_unet_path(path)
            spelled = {"ldm": path, "diffusers": candidates[0] if len(candidates) == 1 else None}
        names = tuple(kohya_name(UNET_PREFIX, spelled[s]) for s in order if spelled[s]) or (
            kohya_name(UNET_PREFIX, path),
        )
        ldm_path = spelled["ldm"]
        block = block_of_ldm_path(ldm_path, arch) if ldm_path else None
        yield Target(names[0], "unet", path, module, block=block), names


def _text_encoder_entries(encoder: nn.Module, root: str, prefix: str) -> Iterator[tuple[Target, tuple[str, ...]]]:
    for path, module in encoder.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            yield from _fused_attention_entries(module, path, root, prefix)
            continue
        weight = getattr(module, "weight", None)
        if path and isinstance(weight, torch.Tensor) and weight.ndim >= 1:
            key = kohya_name(prefix, te_path_to_hf(path) or path)
            yield Target(key, root, path, module, block=BASE), (key,)


def _fused_attention_entries(
    module: nn.MultiheadAttention, path: str, root: str, prefix: str
) -> Iterator[tuple[Target, tuple[str, ...]]]:
    """q/k/v targets of an nn.MultiheadAttention: row ranges of in_proj_weight (or its separate q/k/v weights)."""
    base = te_path_to_hf(path) or path
    width = module.embed_dim
    for i, name in enumerate(_FUSED_QKV):
        key = kohya_name(prefix, f"{base}.{name}")
        if module.in_proj_weight is not None:
            target = Target(key, root, path, module, "in_proj_weight", slice(i * width, (i + 1) * width), BASE)
        else:
            target = Target(key, root, path, module, f"{name[0]}_proj_weight", None, BASE)
        yield target, (key,)


def build_target_index_for(
    unet: nn.Module | None,
    layout: str,
    text_encoders: Sequence[nn.Module],
    arch: Arch | str,
) -> TargetIndex:
    """The TargetIndex of a UNet in `layout` ("diffusers" or "ldm") and the family's text encoders, in kohya order.

    Raises HostError when the number of text encoders is not the family's, the layout is unknown, or two
    modules would share a kohya name.
    """
    arch = arch if isinstance(arch, Arch) else get_arch(arch)
    if len(text_encoders) != arch.text_encoder_count:
        raise HostError(f"{arch.title} has {arch.text_encoder_count} text encoder(s), got {len(text_encoders)}")
    entries: list[tuple[Target, tuple[str, ...]]] = []
    if unet is not None:
        entries.extend(_unet_entries(unet, layout, arch))
    for number, (encoder, prefix) in enumerate(zip(text_encoders, arch.te_prefixes), start=1):
        entries.extend(_text_encoder_entries(encoder, f"te{number}", prefix))
    return TargetIndex(arch, entries)


def build_target_index(host: Host) -> TargetIndex:
    """The TargetIndex of a host's UNet and text encoders."""
    return build_target_index_for(host.unet, host.layout, host.text_encoders, host.arch)
