"""Module paths in each spelling a LoRA file may use: diffusers <-> LDM UNet paths, text-encoder paths as HF CLIP's.

UNet paths are spelled two ways, diffusers (`down_blocks.0.attentions.0.proj_in`, what kohya writes for SD1/SD2)
and LDM (`input_blocks.1.1.proj_in`, what kohya writes for SDXL); the tables below convert one into the other
(layers_per_block 2, as in SD1, SD2 and SDXL). Text-encoder names are HF CLIP's; an open_clip encoder (A1111's SD2
encoder and SDXL te2) is reached through them. `kohya_name` turns a path into the module name a file holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "diffusers_to_ldm_unet_path",
    "kohya_name",
    "ldm_to_diffusers_unet_path",
    "resolve_ldm_unet_path",
    "te_path_to_hf",
]

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


def te_path_to_hf(path: str) -> str | None:
    """The HF CLIP path of a text-encoder module path (HF or open_clip naming); None when unknown."""
    for pattern, replacement in _OPENCLIP_TO_HF:
        if pattern.fullmatch(path):
            return pattern.sub(replacement, path)
    return None
