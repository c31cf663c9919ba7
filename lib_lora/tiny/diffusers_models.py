"""Tiny SD1 and SDXL diffusers pipelines with the real block structure, random weights, built offline.

The UNets keep the real level/block layout (SD1: 4 levels, cross-attention in the first three; SDXL: 3
levels, none in the first, deeper transformers lower down, text-time conditioning) so LoRA key names and
block ids are the real ones; only channel widths and transformer depth are cut. `lib_lora.tiny.ldm_models`
builds the same shapes in LDM layout.
"""

from __future__ import annotations

from typing import Any

import torch

from .clip import build_tiny_text_encoder, build_tiny_tokenizer

# Real SD1.5: block_out_channels (320, 640, 1280, 1280), 8 heads, cross-attention 768. Tiny keeps the
# ×1,2,4,4 widths, so every level change that has a conv_shortcut in SD1.5 has one here.
TINY_SD1_UNET: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 128, 128),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=2,
    norm_num_groups=32,
)

# Real SDXL: block_out_channels (320, 640, 1280), transformer depth (1, 2, 10), cross-attention 2048,
# text-time embedding of 6 sizes × 256 + pooled 1280 = 2816. Tiny keeps the ×1,2,4 widths and 16-wide heads.
TINY_SDXL_UNET: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 128),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 4, 8),
    cross_attention_dim=64,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80,
    norm_num_groups=32,
)

# Real VAE: 4 levels (128, 256, 512, 512); kept at 4 levels so the downscale is 8 as in the real one.
TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=32,
    sample_size=64,
)

# The SD noise schedule: scaled-linear betas 0.00085..0.012 over 1000 steps.
SD_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build()


def build_tiny_sd1_pipeline(seed: int = 0):
    """A `StableDiffusionPipeline` of tiny random models (64×64 images → 8×8 latents), eval mode, float32."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = _seeded(seed, lambda: UNet2DConditionModel(**TINY_SD1_UNET))
    vae = _seeded(seed + 1, lambda: AutoencoderKL(**TINY_VAE, scaling_factor=0.18215))
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=build_tiny_text_encoder(seed + 2),
        tokenizer=build_tiny_tokenizer(),
        unet=unet.eval(),
        scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A `StableDiffusionXLPipeline` of tiny random models (two text encoders, 64×64 images), eval, float32."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = _seeded(seed, lambda: UNet2DConditionModel(**TINY_SDXL_UNET))
    vae = _seeded(seed + 1, lambda: AutoencoderKL(**TINY_VAE, scaling_factor=0.13025))
    scheduler_config = {k: v for k, v in SD_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=build_tiny_text_encoder(seed + 2),
        text_encoder_2=build_tiny_text_encoder(seed + 3, with_projection=True),
        tokenizer=build_tiny_tokenizer(),
        tokenizer_2=build_tiny_tokenizer(pad_token="!"),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**scheduler_config),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_PIPELINES = {"sd1": build_tiny_sd1_pipeline, "sdxl": build_tiny_sdxl_pipeline}
