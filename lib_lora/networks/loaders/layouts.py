"""The layers of a real SD1 or SDXL model, named as the hosts name them, built from our own layouts at no cost.

The tables of the other programs' loaders need the module names of the model they load onto. These come from the
project's own model code, built on the meta device (no memory, no weights): the UNet at the family's real depth,
in LDM layout (`lib_lora.tiny.ldm_models`, real ldm code, what A1111, Forge and ComfyUI run) where ldm is
installed, else in diffusers layout (the real config) with its LDM names from `keys`; HF CLIP text encoders at the
real layer counts (`lib_lora.tiny.full_size`), and for A1111's SDXL second encoder the open_clip layout
(`lib_lora.tiny.openclip`). `keys.build_target_index_for` then names every layer the kohya ways, so a loader
table only adds how its host spells a module. Names do not depend on widths. ldm and diffusers import lazily.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ...arch import get_arch
from ...errors import HostError, UnsupportedArchError
from ..keys import (
    TargetIndex,
    build_target_index_for,
    diffusers_to_ldm_unet_path,
    ldm_to_diffusers_unet_path,
    resolve_ldm_unet_path,
    te_path_to_hf,
)

FAMILIES = ("sd1", "sdxl")
"""The families the loader tables know (SD2 is not checked)."""


@dataclass(frozen=True)
class Layer:
    """One weight a LoRA module can change. `path`: LDM path (UNet), HF or open_clip path (text encoders);
    `hf_path`: the HF CLIP path of a text-encoder layer (a fused q/k/v row range has its q/k/v_proj path);
    `diffusers_path`: the diffusers path of a UNet layer; `kind`: linear, conv, mha (fused attention) or other;
    `names`: its kohya names, the one we write first."""

    root: str
    path: str
    kind: str
    names: tuple[str, ...]
    hf_path: str | None = None
    diffusers_path: str | None = None


@dataclass(frozen=True)
class FamilyLayout:
    """Every layer of a family's real model; `openclip_te2`: the second encoder in open_clip layout (A1111)."""

    arch: str
    openclip_te2: bool
    layers: tuple[Layer, ...]

    def roots(self, root: str) -> Iterator[Layer]:
        return (layer for layer in self.layers if layer.root == root)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.MultiheadAttention):
        return "mha"
    if isinstance(module, nn.Linear):
        return "linear"
    return "conv" if isinstance(module, nn.Conv2d) else "other"


SOURCES = ("ldm", "diffusers")
"""Where the UNet's layout comes from: ldm (A1111's venv has it) or diffusers (the standalone one and Neo's)."""


def _unet(arch: str, source: str) -> nn.Module:
    """The family's UNet at its real depth (built under the caller's meta device): LDM layout from the tiny ldm
    builders at real transformer depths and tiny widths, or diffusers layout from the full-size config."""
    from ...tiny.full_size import SD15_UNET_CONFIG, SDXL_UNET_CONFIG

    config = SD15_UNET_CONFIG if arch == "sd1" else SDXL_UNET_CONFIG
    if source == "diffusers":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**config)
    # The tiny builders' keyword sets are not public API; they are reused here with the real depths.
    from ...tiny.ldm_models import _sd1_kwargs, _sdxl_kwargs, _tiny_sdxl_unet_class, quiet_ldm_construction

    with quiet_ldm_construction():
        if arch == "sd1":
            from ldm.modules.diffusionmodules.openaimodel import UNetModel

            return UNetModel(**_sd1_kwargs())
        depths = tuple(depth if kind.startswith("CrossAttn") else 0 for depth, kind in
                       zip(config["transformer_layers_per_block"], config["down_block_types"]))
        return _tiny_sdxl_unet_class()(**{**_sdxl_kwargs(), "level_depths": depths})


def _text_encoders(arch: str, openclip_te2: bool) -> list[nn.Module]:
    """HF CLIP-L (and bigG, or its open_clip form) with the real layer counts (under the caller's meta device)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ...tiny.full_size import CLIP_BIGG_CONFIG, CLIP_L_CONFIG
    from ...tiny.openclip import TinyOpenCLIPTextModel

    encoders: list[nn.Module] = [CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))]
    if arch == "sdxl":
        big = CLIP_BIGG_CONFIG
        encoders.append(
            TinyOpenCLIPTextModel(vocab_size=big["vocab_size"], width=big["hidden_size"],
                                  heads=big["num_attention_heads"], layers=big["num_hidden_layers"],
                                  mlp_width=big["intermediate_size"], embed_dim=big["projection_dim"])
            if openclip_te2 else CLIPTextModelWithProjection(CLIPTextConfig(**big)))
    return encoders


@functools.lru_cache(maxsize=8)
def family_layout(arch: str, *, openclip_te2: bool = False, source: str | None = None) -> FamilyLayout:
    """The layers of the family's real model (cached), its UNet from `source` or the first of SOURCES installed.

    UnsupportedArchError for a family not in FAMILIES; HostError when neither ldm nor diffusers is installed.
    """
    if arch not in FAMILIES:
        raise UnsupportedArchError(f"the loader check knows {', '.join(FAMILIES)}, not {arch!r}")
    last: ImportError | None = None
    for candidate in (source,) if source else SOURCES:
        try:
            with torch.device("meta"):
                unet = _unet(arch, candidate)
                encoders = _text_encoders(arch, openclip_te2)
        except ImportError as error:
            last = error
            continue
        layout = "ldm" if candidate == "ldm" else "diffusers"
        index = build_target_index_for(unet, layout, encoders, get_arch(arch))
        names = {name for name, _ in unet.named_modules()}
        return FamilyLayout(arch, openclip_te2, tuple(_layers(index, layout, names)))
    raise HostError(f"the loader check needs ldm or diffusers to lay out the {arch.upper()} UNet ({last})")


def _layers(index: TargetIndex, layout: str, unet_names: set[str]) -> Iterator[Layer]:
    for target in index.targets():
        names = index.spellings(target)
        kind = _kind(target.module)
        if target.root == "unet":
            path = target.module_path
            if layout == "ldm":
                ldm, diffusers = path, next(iter(ldm_to_diffusers_unet_path(path)), None)
            else:
                ldm, diffusers = resolve_ldm_unet_path(diffusers_to_ldm_unet_path(path), unet_names.__contains__), path
            if ldm is not None:
                yield Layer("unet", ldm, kind, names, diffusers_path=diffusers)
            continue
        hf = te_path_to_hf(target.module_path)
        if target.rows is not None or target.param_name != "weight":  # a fused q/k/v: its own HF projection
            hf = f"{hf}.{target.key.rsplit('_', 2)[-2]}_proj" if hf else None
        yield Layer(target.root, target.module_path, kind, names, hf_path=hf)
