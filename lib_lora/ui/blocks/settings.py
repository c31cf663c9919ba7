"""The Block Weight tab's generation settings: read and checked as typed, and defaults that fit the loaded model.

`Settings.read` checks the shared row (prompt, negative, seed, steps, CFG, size); `random_seed` reads the seed R and U
are drawn with (-1: a new one each time). `fitting_settings(host)` picks steps and size for the model and device:
the tiny test models and the CPU get small, quick images, a GPU the family's own size (SD1 512, SD2 768,
SDXL 1024). The tab applies them when it first sees a model (or another model or device), not on every visit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...blocks.recipe import MAX_RANDOM_SEED, draw_seed
from ...errors import LoraStudioError
from ...hosts.base import GenerationRequest, Host

TINY_UNET_PARAMETERS = 100_000_000
"""Below this a UNet is a test model (LoRA Studio's tiny ones have a few million; SD1's has 860 million)."""


class BlocksUIError(LoraStudioError):
    """The tab cannot do what was asked (no model, model changed, a run already going, bad setting)."""


def whole(value: Any, name: str, minimum: int) -> int:
    if value is None or value == "":
        raise BlocksUIError(f"{name} is empty")
    number = float(value)
    if not math.isfinite(number) or number != int(number) or number < minimum:
        raise BlocksUIError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return int(number)


def random_seed(value: Any) -> int:
    """The seed for R and U: the number typed, or a new one for -1 (or an empty box)."""
    if value is None or value == "" or float(value) == -1:
        return draw_seed()
    seed = whole(value, "random seed", 0)
    if seed > MAX_RANDOM_SEED:
        raise BlocksUIError(f"random seed must be -1 or 0…{MAX_RANDOM_SEED}, got {value!r}")
    return seed


@dataclass(frozen=True)
class Settings:
    """The generation settings the three renders share, checked as typed in the page."""

    prompt: str
    negative: str
    seed: int
    steps: int
    cfg: float
    width: int
    height: int

    @classmethod
    def read(cls, prompt: str, negative: str, seed: Any, steps: Any, cfg: Any, width: Any, height: Any) -> Settings:
        if cfg is None or not math.isfinite(float(cfg)):
            raise BlocksUIError(f"CFG scale must be a number, got {cfg!r}")
        settings = cls(prompt or "", negative or "", whole(seed, "seed", 0), whole(steps, "steps", 1),
                       float(cfg), whole(width, "width", 8), whole(height, "height", 8))
        settings.request(settings.prompt)  # sizes: multiples of 8
        return settings

    def request(self, prompt: str) -> GenerationRequest:
        try:
            return GenerationRequest(prompt=prompt, negative_prompt=self.negative, steps=self.steps,
                                     cfg_scale=self.cfg, width=self.width, height=self.height, seed=self.seed)
        except ValueError as error:
            raise BlocksUIError(str(error)) from None


@dataclass(frozen=True)
class FittingSettings:
    """Steps and size for a model and device, and the words that say why."""

    steps: int
    width: int
    height: int
    why: str


def model_key(host: Host) -> str:
    """What the fitting settings depend on: the model's name, family and device."""
    return f"{host.model_name}|{host.arch.name}|{host.device}"


def fitting_settings(host: Host) -> FittingSettings:
    """Quick settings for a test model or the CPU, the family's own size on a GPU."""
    on_cpu = str(host.device).startswith("cpu")
    tiny = sum(parameter.numel() for parameter in host.unet.parameters()) < TINY_UNET_PARAMETERS
    device = "the CPU" if on_cpu else str(host.device)
    if tiny:
        size, steps = (64, 4) if on_cpu else (128, 8)
        return FittingSettings(steps, size, size, f"{host.model_name} is a small test model on {device}")
    full = host.arch.default_resolution
    if on_cpu:
        return FittingSettings(10, full // 2, full // 2, f"{host.model_name} runs on the CPU: half size, 10 steps")
    return FittingSettings(20, full, full, f"{host.model_name} ({host.arch.name.upper()}) on {device}")
