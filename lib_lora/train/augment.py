"""Pixels for the VAE and the augmentations on them: alpha on white, [-1, 1] tensors, flip, sd-scripts' colour aug.

Random crop lives with the bucket crop (`buckets.crop_offset(plan, rng)`); everything random here takes a seeded
`random.Random`, so a (seed, epoch) pair gives the same pixels again.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

HUE_SHIFT_LIMIT = 8 / 180
"""sd-scripts shifts the hue by up to ±8 on OpenCV's 0..180 hue circle, i.e. ±8/180 of a turn."""
COLOR_AUG_PROBABILITY = 0.33
GAMMA_RANGE = (0.95, 1.05)


def flatten_alpha(image: Image.Image) -> Image.Image:
    """RGB: transparent pixels composited on white; other modes converted."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def image_to_pixels(image: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 in [-1, 1] from an RGB(A) image (alpha on white)."""
    array = np.asarray(flatten_alpha(image), dtype=np.float32)
    return torch.from_numpy(array.copy()).permute(2, 0, 1) / 127.5 - 1.0


def flip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Mirror [..., H, W] pixels (or latents) left to right."""
    return torch.flip(pixels, dims=(-1,))


def color_aug(image: Image.Image, rng: random.Random) -> Image.Image:
    """sd-scripts' weak colour change: a third of the time, half a hue shift (±8/180 turn), half a gamma 0.95–1.05.

    The gamma here is applied to values in 0..1 (sd-scripts raises 0..255 values to it and clips, which mostly
    brightens); the hue shift goes through PIL's HSV (0..255 hue) instead of OpenCV's.
    """
    if rng.random() > COLOR_AUG_PROBABILITY:
        return image
    rgb = flatten_alpha(image)
    if rng.random() > 0.5:
        shift = rng.uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT)
        hsv = np.asarray(rgb.convert("HSV"), dtype=np.int16).copy()
        hsv[..., 0] = (hsv[..., 0] + round(shift * 256)) % 256
        return Image.frombytes("HSV", rgb.size, hsv.astype(np.uint8).tobytes()).convert("RGB")
    gamma = rng.uniform(*GAMMA_RANGE)
    values = np.asarray(rgb, dtype=np.float32) / 255.0
    return Image.fromarray(np.clip(np.rint(values**gamma * 255.0), 0, 255).astype(np.uint8))
