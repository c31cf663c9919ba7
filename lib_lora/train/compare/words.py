"""The words and defaults of a comparison that the command line needs before anything heavy is imported:
COMPARE_HELP (shown alike by `python -m lib_lora compare` and the Train tab), the default strengths, and reading
strengths from text. No torch here."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError

DEFAULT_STRENGTHS = (0.6, 0.8, 1.0)
MAX_STRENGTHS = 6
ANALYZE_CHOICES = ("best", "all", "none")

COMPARE_HELP: dict[str, str] = {
    "files": "The saved LoRA files to compare (.safetensors; the epochs of one run, or any others), at most 16.",
    "data": "The training images (a folder laid out like train_data_dir): the samples' similarity is measured "
            "against them.",
    "prompts": "Sample prompts, one per line (at most 4), with sd-scripts' options --n (negative) --w --h --d "
               "(seed) --l (CFG) --s (steps); every file is rendered with each at the same seed.",
    "strengths": "LoRA strengths to render each file at, separated by commas (at most 6).",
    "seed": "Seed of prompts that give no --d (the n-th prompt gets seed + n).",
    "size": "Image width and height of prompts that give no --w/--h (multiples of 8, 64 to 2048).",
    "validation_dir": "A folder of validation images to measure every file's validation loss on (fixed noise and "
                      "timesteps); empty: the loss each file's run measured, when all were measured alike.",
    "analyze": "Which files the block analyzer ranks blocks for: the recommended one (best), all, or none.",
    "keep": "Keep the recommended file (or the one chosen) under the run's name and move the others, with their "
            "card files, into an epochs/ folder beside it. Nothing is deleted.",
}


def parse_strengths(text: str) -> tuple[float, ...]:
    """"0.6, 0.8, 1" → (0.6, 0.8, 1.0); ConfigError naming `strengths` for anything else."""
    values: list[float] = []
    for part in (text or "").replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError("strengths", text, f"{part.strip()!r} is not a number") from None
    if not values:
        raise ConfigError("strengths", text, "give at least one strength, e.g. 0.6, 0.8, 1")
    if len(values) > MAX_STRENGTHS:
        raise ConfigError("strengths", text, f"{len(values)} strengths; at most {MAX_STRENGTHS}")
    return tuple(values)


def strengths_text(strengths: Sequence[float]) -> str:
    return ", ".join(f"{value:g}" for value in strengths)
