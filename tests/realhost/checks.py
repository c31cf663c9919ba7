"""Image comparisons and prompts for the real-host tests, with failure messages that say how far apart images are."""

from __future__ import annotations

from typing import Any

import numpy as np
from hosts import BASE_PROMPT
from results import Generated, mean_abs_difference

VISIBLE_LEVELS = 3.0
"""A LoRA "visibly changes" an image: mean absolute difference above this many 0–255 levels."""
DIFFERENT_LEVELS = 0.5
"""Two images "differ": above this mean difference, so rounding noise never passes for a real change."""

HIRES: dict[str, object] = {"enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5, "hr_second_pass_steps": 2}
LATENT_UPSCALER = "Latent"
IMAGE_UPSCALER = "None"
"""For a host without latent upscalers (this Forge Neo lists none; its upscalers are "None" and ESRGAN, which
downloads a model), hires fix resizes the decoded image: "None" is a plain Lanczos resize."""


def hires(host: Any) -> dict[str, object]:
    """The hires-fix payload keys for `host`: scale 2, denoising 0.5, 2 second-pass steps, the "Latent" upscaler
    where the host has it (A1111), else "None" (a Lanczos resize of the decoded image, also deterministic)."""
    latent = {mode["name"] for mode in host.api("GET", "/sdapi/v1/latent-upscale-modes")}
    upscaler = LATENT_UPSCALER if LATENT_UPSCALER in latent else IMAGE_UPSCALER
    if upscaler == IMAGE_UPSCALER:
        assert IMAGE_UPSCALER in {item["name"] for item in host.api("GET", "/sdapi/v1/upscalers")}
    neo = {"hr_additional_modules": ["Use same choices"]} if host.kind == "neo" else {}  # Neo's API fails without it
    return {**HIRES, "hr_upscaler": upscaler, **neo}


def prompt_with(tags: str) -> str:
    """The base prompt followed by `tags` (`<lora:…>` tags); the base prompt alone when `tags` is empty."""
    return f"{BASE_PROMPT} {tags}" if tags else BASE_PROMPT


def assert_same(got: Generated, expected: Generated, what: str) -> None:
    """Pixel for pixel equal."""
    assert got.image.shape == expected.image.shape, f"{what}: shapes {got.image.shape} vs {expected.image.shape}"
    if not np.array_equal(got.image, expected.image):
        changed = float((got.image != expected.image).any(axis=-1).mean())
        raise AssertionError(f"{what}: images differ (mean {mean_abs_difference(got.image, expected.image):.3f} "
                             f"levels, {changed:.1%} of pixels)\n  {got.payload['prompt']!r}\n"
                             f"  {expected.payload['prompt']!r}")


def assert_differs(got: Generated, other: Generated, what: str, *, levels: float = DIFFERENT_LEVELS) -> None:
    """Apart by more than `levels` on average."""
    difference = mean_abs_difference(got.image, other.image)
    assert difference > levels, (f"{what}: images are {difference:.3f} levels apart, want > {levels}\n"
                                 f"  {got.payload['prompt']!r}\n  {other.payload['prompt']!r}")


def assert_sound(result: Generated, what: str) -> None:
    """Not a degenerate image (all one colour, as NaNs decode to): some spread of pixel values."""
    spread = float(result.image.astype(np.float32).std())
    assert spread > 2.0, f"{what}: the image is flat (std {spread:.2f} levels): NaN or a broken model?"
