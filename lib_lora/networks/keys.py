"""kohya module names <-> host modules: diffusers- and LDM-layout UNets, HF CLIP and open_clip text encoders.

A kohya module name is a prefix (`lora_unet`, `lora_te`, `lora_te1`, `lora_te2`) and a module path with every
"." turned into "_". UNet paths are spelled two ways, diffusers (`down_blocks.0.attentions.0.proj_in`, what
kohya writes for SD1/SD2) and LDM (`input_blocks.1.1.proj_in`, what kohya writes for SDXL); the tables below
convert one into the other (layers_per_block 2, as in SD1, SD2 and SDXL). Text-encoder names are HF CLIP's;
an open_clip encoder (A1111's SD2 encoder and SDXL te2) is reached through them, its fused attention
`in_proj_weight` split into q/k/v row ranges.

`build_target_index` lists every weight of a host once (a `Target`) and answers to all spellings of it, so a
file in either spelling applies to a host in either layout. `Target.key` is the spelling we write: diffusers
for SD1/SD2 UNets, LDM for SDXL UNets, HF names for text encoders (the kohya standard of each family).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..arch import Arch, get_arch
from ..errors import HostError
from ..unet_blocks import BASE, block_of_ldm_path

if TYPE_CHECKING:
    from ..hosts.base import Host

UNET_PREFIX = "lora_unet"

# --- UNet module paths: diffusers <-> LDM -------------------------------------------------------------------

_TOP_LEVEL: tuple[tuple[str, str], ...] = (
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
)
"""UNet modules outside the down/mid/up blocks: (diffusers path, LDM path)."""

_ATTENTION_CHILDREN = ("norm", "proj_in", "proj_out", "transformer_blocks")
_INTERNALS: dict[str, tuple[tuple[str, str], ...]] = {
    "resnets": (
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("conv_shortcut", "skip_connection"),
    ),
    "attentions": tuple((name, name) for name in _ATTENTION_CHILDREN),  # same names below these in both
    "downsamplers": (("conv", "op"),),
    "upsamplers": (("conv", "conv"),),
}
"""Inside a block: (diffusers child, LDM child) per block kind; what follows the child is the same in both."""

_TO_LDM_BLOCK: dict[tuple[str, str], tuple[int, Callable[[int, int], tuple[str, ...]]]] = {
    ("down_blocks", "resnets"): (2, lambda i, j: (f"input_blocks.{3 * i + j + 1}.0",)),
    ("down_blocks", "attentions"): (2, lambda i, j: (f"input_blocks.{3 * i + j + 1}.1",)),
    ("down_blocks", "downsamplers"): (1, lambda i, j: (f"input_blocks.{3 * i + 3}.0",)),
    ("mid_block", "resnets"): (2, lambda i, j: (f"middle_block.{2 * j}",)),
    ("mid_block", "attentions"): (1, lambda i, j: ("middle_block.1",)),
    ("up_blocks", "resnets"): (3, lambda i, j: (f"output_blocks.{3 * i + j}.0",)),
    ("up_blocks", "attentions"): (3, lambda i, j: (f"output_blocks.{3 * i + j}.1",)),
    # after the resnet, or after the attention when the output block has one: resolve against the tree
    ("up_blocks", "upsamplers"): (1, lambda i, j: (f"output_blocks.{3 * i + 2}.1", f"output_blocks.{3 * i + 2}.2")),
}
"""(diffusers block list, kind) -> (how many of that kind per level, LDM block prefix(es) of level i, item j)."""

_DIFFUSERS_BLOCK = re.compile(
    r"(?P<side>down_blocks|up_blocks|mid_block)(?:\.(?P<level>\d+))?\.(?P<kind>[a-z]+)\.(?P<item>\d+)(?P<rest>\..+)?"
)
_LDM_BLOCK = re.compile(r"(?P<part>input_blocks|output_blocks)\.(?P<n>\d+)\.(?P<slot>\d+)(?P<rest>\..+)?")
_LDM_MIDDLE = re.compile(r"middle_block\.(?P<slot>\d+)(?P<rest>\..+)?")

_Place = tuple[str, int, str, int]  # (diffusers block list, level, kind, item)
_MIDDLE_SLOTS: dict[int, _Place] = {
    0: ("mid_block", 0, "resnets", 0),
    1: ("mid_block", 0, "attentions", 0),
    2: ("mid_block", 0, "resnets", 1),
}
"""`middle_block.N` -> the diffusers mid-block item it is."""


def _swap_prefix(path: str, pairs: Iterable[tuple[str, str]]) -> str | None:
    """`path` with its leading segments `src` replaced by `dst` for the first (src, dst) that fits, else None."""
    for src, dst in pairs:
        if path == src or path.startswith(src + "."):
            return dst + path[len(src):]
    return None


def _convert_rest(rest: str | None, kind: str, *, to_ldm: bool) -> str | None:
    """The part of a path below its block ("" or ".child…") in the other spelling; None for unknown children."""
    if not rest:
        return ""
    pairs = _INTERNALS[kind] if to_ldm else tuple((ldm, dif) for dif, ldm in _INTERNALS[kind])
    converted = _swap_prefix(rest[1:], pairs)
    return None if converted is None else "." + converted


def diffusers_to_ldm_unet_path(path: str) -> tuple[str, ...]:
    """The LDM spellings of a diffusers UNet module (or parameter) path: one, two for an upsampler, none if unknown.

    An upsampler (`up_blocks.i.upsamplers.0…`) is `output_blocks.{3i+2}.1…` or `.2…` depending on whether that
    output block has an attention; `resolve_ldm_unet_path` picks the one a given tree has.
    """
    top = _swap_prefix(path, _TOP_LEVEL)
    if top is not None:
        return (top,)
    match = _DIFFUSERS_BLOCK.fullmatch(path)
    if match is None or (match["side"] == "mid_block") != (match["level"] is None):
        return ()
    rule = _TO_LDM_BLOCK.get((match["side"], match["kind"]))
    item = int(match["item"])
    if rule is None or item >= rule[0]:
        return ()
    rest = _convert_rest(match["rest"], match["kind"], to_ldm=True)
    if rest is None:
        return ()
    return tuple(prefix + rest for prefix in rule[1](int(match["level"] or 0), item))


def _diffusers_places(path: str) -> tuple[tuple[_Place, str | None], ...]:
    """The diffusers blocks an LDM block path may be, each with the rest of the path below it."""
    match = _LDM_MIDDLE.fullmatch(path)
    if match is not None:
        place = _MIDDLE_SLOTS.get(int(match["slot"]))
        return ((place, match["rest"]),) if place else ()
    match = _LDM_BLOCK.fullmatch(path)
    if match is None:
        return ()
    n, slot, rest = int(match["n"]), int(match["slot"]), match["rest"]
    if match["part"] == "input_blocks":
        if n == 0:
            return ()
        if n % 3 == 0:
            return ((("down_blocks", n // 3 - 1, "downsamplers", 0), rest),) if slot == 0 else ()
        kind = {0: "resnets", 1: "attentions"}.get(slot)
        return ((("down_blocks", (n - 1) // 3, kind, (n - 1) % 3), rest),) if kind else ()
    level, item = divmod(n, 3)
    places: list[_Place] = []
    if slot in (0, 1):
        places.append(("up_blocks", level, ("resnets", "attentions")[slot], item))
    if slot in (1, 2) and item == 2:
        places.append(("up_blocks", level, "upsamplers", 0))
    return tuple((place, rest) for place in places)


def ldm_to_diffusers_unet_path(path: str) -> tuple[str, ...]:
    """The diffusers spellings of an LDM UNet module (or parameter) path: one for every weight, none if unknown.

    Only a bare block path such as `output_blocks.2.1` has two (the attention or the upsampler there).
    """
    top = _swap_prefix(path, ((ldm, dif) for dif, ldm in _TOP_LEVEL))
    if top is not None:
        return (top,)
    spellings = []
    for (side, level, kind, item), rest in _diffusers_places(path):
        converted = _convert_rest(rest, kind, to_ldm=False)
        if converted is not None:
            block = side if side == "mid_block" else f"{side}.{level}"
            spellings.append(f"{block}.{kind}.{item}{converted}")
    return tuple(spellings)


def resolve_ldm_unet_path(candidates: Sequence[str], has_diffusers_module: Callable[[str], bool]) -> str | None:
    """The candidate (from `diffusers_to_ldm_unet_path`) that fits a diffusers tree; None when there is none.

    The one ambiguous case is the upsampler: it is `output_blocks.N.2…` when output block N has an attention
    (`up_blocks.{N//3}.attentions.{N%3}` exists in the tree), else `output_blocks.N.1…`.
    """
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    for candidate in candidates:
        match = _LDM_BLOCK.fullmatch(candidate)
        if match is None:
            continue
        n, slot = int(match["n"]), int(match["slot"])
        if (slot == 2) == has_diffusers_module(f"up_blocks.{n // 3}.attentions.{n % 3}"):
            return candidate
    return None


def kohya_name(prefix: str, module_path: str) -> str:
    """The kohya module name of `module_path` under `prefix`: `kohya_name("lora_unet", "a.b")` -> "lora_unet_a_b"."""
    return f"{prefix}_{module_path.replace('.', '_')}"


# --- text encoders: HF CLIP names, open_clip reached through them ------------------------------------------

_OPENCLIP_TO_HF: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"transformer\.resblocks\.(\d+)\.attn", r"text_model.encoder.layers.\1.self_attn"),
        (r"transformer\.resblocks\.(\d+)\.attn\.out_proj", r"text_model.encoder.layers.\1.self_attn.out_proj"),
        (r"transformer\.resblocks\.(\d+)\.ln_1", r"text_model.encoder.layers.\1.layer_norm1"),
        (r"transformer\.resblocks\.(\d+)\.ln_2", r"text_model.encoder.layers.\1.layer_norm2"),
        (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc", r"text_model.encoder.layers.\1.mlp.fc1"),
        (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj", r"text_model.encoder.layers.\1.mlp.fc2"),
        (r"token_embedding", "text_model.embeddings.token_embedding"),
        (r"ln_final", "text_model.final_layer_norm"),
        # HF: CLIPTextModel(WithProjection) paths as they are, a bare CLIPTextTransformer's under text_model.
        (r"(?:.+\.)?(text_model\..+)", r"\1"),
        (r"(encoder\..+|embeddings\..+|final_layer_norm)", r"text_model.\1"),
        (r"(text_projection)", r"\1"),
    )
)
"""Text-encoder module path -> HF CLIP path (open_clip's `positional_embedding`/`text_projection` are bare
parameters, not modules, and have no entry)."""

_FUSED_QKV = ("q_proj", "k_proj", "v_proj")


def te_path_to_hf(path: str) -> str | None:
    """The HF CLIP path of a text-encoder module path (HF or open_clip naming); None when unknown."""
    for pattern, replacement in _OPENCLIP_TO_HF:
        if pattern.fullmatch(path):
            return pattern.sub(replacement, path)
    return None


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
