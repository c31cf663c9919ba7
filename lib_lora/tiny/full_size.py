"""Full-size SD1.5 / SDXL UNets and text encoders with random weights, for benchmarks (real configs, no download).

Fast initialisation: modules are constructed on the meta device (no memory, no init kernels), cast to dtype,
then `to_empty(device)` allocates them and each parameter is filled once with a seeded normal of std
fan_in ** -0.5 (norm weights 1, other 1-D parameters 0). Known buffers (CLIP `position_ids`) are rebuilt;
any other buffer is an error, so a new upstream buffer cannot silently hold garbage. `device="meta"` skips
allocation: the parameter count and module tree at no cost. diffusers / transformers / ldm are imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError

SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
"""runwayml/stable-diffusion-v1-5 unet/config.json (values that differ from diffusers' defaults, plus the shape)."""

SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
"""stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (as above)."""

CLIP_L_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
"""CLIP ViT-L/14 text model as in SD1.5's text_encoder/config.json (also SDXL's text_encoder)."""

CLIP_BIGG_CONFIG: dict[str, Any] = {
    **CLIP_L_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
"""OpenCLIP ViT-bigG/14 text model as in SDXL's text_encoder_2/config.json (with projection)."""

ARCHES = ("sd1", "sdxl")


def parameter_count(module: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once); works on meta modules."""
    return sum(p.numel() for p in module.parameters())


def build_full_unet(
    arch: str,
    *,
    layout: str = "diffusers",
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> nn.Module:
    """A full-size UNet with random weights: diffusers UNet2DConditionModel, or ldm UNetModel (sd1 only)."""
    _check_arch(arch)
    if layout == "diffusers":
        from diffusers import UNet2DConditionModel

        config = SD15_UNET_CONFIG if arch == "sd1" else SDXL_UNET_CONFIG
        return build_fast(lambda: UNet2DConditionModel(**config), dtype=dtype, device=device, seed=seed)
    if layout == "ldm":
        if arch != "sd1":
            raise ValueError("layout='ldm' is available for sd1 only: the ldm package cannot build SDXL")
        from ldm.modules.diffusionmodules.openaimodel import UNetModel

        from .ldm_models import SD15_LDM_UNET_CONFIG, quiet_ldm_construction

        def construct() -> nn.Module:
            with quiet_ldm_construction():
                return UNetModel(**SD15_LDM_UNET_CONFIG)

        return build_fast(construct, dtype=dtype, device=device, seed=seed)
    raise ValueError(f"layout must be 'diffusers' or 'ldm', got {layout!r}")


def build_full_text_encoders(
    arch: str,
    *,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[nn.Module, ...]:
    """sd1: (CLIPTextModel CLIP-L,); sdxl: (CLIPTextModel CLIP-L, CLIPTextModelWithProjection bigG)."""
    _check_arch(arch)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    encoders = [
        build_fast(
            lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)), dtype=dtype, device=device, seed=seed
        )
    ]
    if arch == "sdxl":
        encoders.append(
            build_fast(
                lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG_CONFIG)),
                dtype=dtype,
                device=device,
                seed=seed + 1,
            )
        )
    return tuple(encoders)


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")


def build_fast(
    construct: Callable[[], nn.Module], *, dtype: torch.dtype, device: str | torch.device, seed: int
) -> nn.Module:
    """Call construct on the meta device, cast to dtype, then (unless device is meta) allocate and fill_random_."""
    with torch.device("meta"):
        module = construct()
    module = module.to(dtype=dtype)
    device = torch.device(device)
    if device.type == "meta":
        return module.eval()
    module = module.to_empty(device=device)
    fill_random_(module, seed=seed)
    _rebuild_buffers_(module)
    return module.eval()


@torch.no_grad()
def fill_random_(module: nn.Module, *, seed: int = 0) -> None:
    """Fill every parameter in place: norm weights 1, other 1-D parameters 0, the rest N(0, fan_in ** -0.5)."""
    norm_weights = {
        id(m.weight)
        for m in module.modules()
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and getattr(m, "weight", None) is not None
    }
    generator: torch.Generator | None = None
    for param in module.parameters():
        if generator is None:
            generator = torch.Generator(device=param.device).manual_seed(seed)
        if id(param) in norm_weights:
            param.fill_(1.0)
        elif param.ndim < 2:
            param.zero_()
        else:
            param.normal_(0.0, (param.numel() // param.shape[0]) ** -0.5, generator=generator)


@torch.no_grad()
def _rebuild_buffers_(module: nn.Module) -> None:
    """Give buffers left empty by to_empty their values; raise on a buffer this module does not know."""
    for name, buffer in module.named_buffers():
        if name.endswith("position_ids"):
            positions = torch.arange(buffer.shape[-1], device=buffer.device, dtype=buffer.dtype)
            buffer.copy_(positions.expand_as(buffer))
        else:
            raise ModelLoadError(
                f"{type(module).__name__}: no rule to initialise buffer {name!r} after to_empty"
            )
