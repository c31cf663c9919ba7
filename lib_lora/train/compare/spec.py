"""CompareSpec: what a comparison renders and measures, checked on creation (its words and defaults: words.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..sampling import SamplePrompt, parse_prompt_text
from .files import CompareError
from .words import ANALYZE_CHOICES, COMPARE_HELP, DEFAULT_STRENGTHS, MAX_STRENGTHS, parse_strengths, strengths_text

MAX_PROMPTS = 4
MAX_STRENGTH = 4.0
MAX_IMAGES = 256
"""The most grid images one comparison renders (files × strengths × prompts)."""
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_REFERENCE_IMAGES = 64
"""The most training images the similarity compares samples with (spread evenly over the folder)."""

@dataclass(frozen=True)
class CompareSpec:
    """The grid's prompts (sample-prompt lines), strengths, default seed and size, and what to analyze."""

    prompts: str
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    seed: int = 0
    width: int = 512
    height: int = 512
    analyze: str = "best"

    def __post_init__(self) -> None:
        lines = self.sample_prompts()
        if not lines:
            raise ConfigError("prompts", self.prompts, "write at least one sample prompt")
        if len(lines) > MAX_PROMPTS:
            raise ConfigError("prompts", self.prompts, f"{len(lines)} prompts; at most {MAX_PROMPTS}")
        for line in lines:
            if max(line.width or 0, line.height or 0) > MAX_SIDE:
                raise ConfigError("prompts", line.prompt, f"--w and --h are at most {MAX_SIDE}")
        if not self.strengths or len(self.strengths) > MAX_STRENGTHS:
            raise ConfigError("strengths", list(self.strengths), f"give 1 to {MAX_STRENGTHS} strengths")
        for value in self.strengths:
            if not math.isfinite(value) or abs(value) > MAX_STRENGTH:
                raise ConfigError("strengths", value, f"strengths are numbers from -{MAX_STRENGTH:g} to "
                                                      f"{MAX_STRENGTH:g}")
        if len(set(self.strengths)) != len(self.strengths):
            raise ConfigError("strengths", list(self.strengths), "a strength is listed twice")
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError("seed", self.seed, f"seeds are 0 to {2 ** 32 - 1}")
        for key in ("width", "height"):
            value = getattr(self, key)
            if not MIN_SIDE <= value <= MAX_SIDE or value % 8:
                raise ConfigError(key, value, f"a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}")
        if self.analyze not in ANALYZE_CHOICES:
            raise ConfigError("analyze", self.analyze, f"one of {', '.join(ANALYZE_CHOICES)}")

    def sample_prompts(self) -> list[SamplePrompt]:
        return parse_prompt_text(self.prompts, where="prompts")

    def check_size(self, files: int) -> None:
        """CompareError when `files` files would make more than MAX_IMAGES grid images."""
        count = files * len(self.strengths) * len(self.sample_prompts())
        if count > MAX_IMAGES:
            raise CompareError(f"{files} files × {len(self.strengths)} strengths × {len(self.sample_prompts())} "
                               f"prompts = {count} images; at most {MAX_IMAGES}: compare fewer")


__all__ = ["ANALYZE_CHOICES", "COMPARE_HELP", "DEFAULT_STRENGTHS", "MAX_STRENGTHS", "CompareSpec", "parse_strengths",
           "strengths_text"]
