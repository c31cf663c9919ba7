"""The effective-block analyzer: which blocks of one LoRA change the image, ranked by the share of pixels changed.

For one LoRA at weight w and a fixed seed (after LBW's Effective Block Analyzer, shared/research/lbw.md §5):
1. the image without the LoRA (reference, for scale), and the image with every block of the format on — a
   literal vector of ones, so blocks the format omits are off in every image (17 ones leave a LoCon's IN00,
   IN03, … off; ask for the 26/20-value format to include them);
2. for each block of the format (SD1/SD2 17 or 26 values, SDXL 12 or 20; BASE = the text encoders) the image
   with that block at 0 and the others at 1;
3. the share of pixels changed against the all-on image: a pixel counts as changed when any of its R, G, B
   values differs by more than `threshold` (0–255; default 16, about 6%, above the noise of re-encoding);
   blocks that change something are ranked by that share (equal shares share a rank: 1, 2, 2, 4), blocks that
   change nothing are left unranked (listed last, in format order).

A block the LoRA has no module in changes nothing: its image is bit-identical to the all-on image (0%). When
nothing changes at all, `AnalyzeResult.summary()` says that the LoRA has no measurable effect instead of naming a
"most effective" block.
Pure core (numpy + PIL, no gradio); rendering goes through a LoraSession, like the XY grid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..arch import Arch, get_arch
from ..errors import LoraStudioError
from .grid import LoraRenderer
from .grid_image import compose_grid
from .presets import FORMATS, LORA_LENGTH, family_of
from .rendering import render_image
from .syntax import LoraCall, format_call

if TYPE_CHECKING:
    from ..hosts.base import GenerationRequest
    from ..jobs import JobControl

__all__ = [
    "ANALYZE_SETTINGS_KEY",
    "DEFAULT_THRESHOLD",
    "AnalyzeError",
    "AnalyzeResult",
    "AnalyzeSpec",
    "BlockEffect",
    "analyze_blocks",
    "changed_share",
    "percent_text",
    "rank_effects",
]

DEFAULT_THRESHOLD = 16
ANALYZE_SETTINGS_KEY = "lora_studio_analyze"
TILE_COLUMNS = 5

THRESHOLD_HELP = (
    "a pixel counts as changed when one of its R, G, B values differs by more than this (0–254) "
    f"from the all-blocks-on image; default {DEFAULT_THRESHOLD}"
)


class AnalyzeError(LoraStudioError):
    """The analyzer cannot run as asked (bad weight, threshold or format); the message names the setting."""


@dataclass(frozen=True)
class AnalyzeSpec:
    """One analysis: the LoRA and its weight, the generation settings, the threshold and the vector format.

    `length` None means the family's LoRA format (17 for SD1/SD2, 12 for SDXL).
    """

    lora: str
    weight: float = 1.0
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    threshold: int = DEFAULT_THRESHOLD
    length: int | None = None

    def __post_init__(self) -> None:
        if not self.lora:
            raise AnalyzeError("choose a LoRA to analyze")
        if not math.isfinite(self.weight):
            raise AnalyzeError(f"weight {self.weight!r} is not a finite number")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or not 0 <= self.threshold < 255:
            raise AnalyzeError(f"threshold must be a whole number from 0 to 254, got {self.threshold!r}")
        if self.seed < 0:
            raise AnalyzeError(f"seed {self.seed} is negative; seeds are 0 or more")
        try:
            self.request(self.prompt)
        except ValueError as error:
            raise AnalyzeError(str(error)) from None

    def request(self, prompt: str) -> GenerationRequest:
        from ..hosts.base import GenerationRequest  # torch: imported when an analysis runs, not with the CLI

        return GenerationRequest(prompt=prompt, negative_prompt=self.negative_prompt, steps=self.steps,
                                 cfg_scale=self.cfg_scale, width=self.width, height=self.height, seed=self.seed)

    def blocks(self, arch: Arch | str) -> tuple[str, ...]:
        """The blocks of the chosen format for `arch`, in LBW's order; AnalyzeError for a length it lacks."""
        family = family_of(arch)
        length = self.length if self.length is not None else LORA_LENGTH[family]
        order = FORMATS[family].get(length)
        if order is None:
            name = arch.name if isinstance(arch, Arch) else arch
            lengths = " or ".join(str(n) for n in FORMATS[family])
            raise AnalyzeError(f"format {length}: {name.upper()} vectors have {lengths} values")
        return order

    def tag(self, vector: Sequence[float]) -> str:
        text = ",".join(f"{value:g}" for value in vector)
        return format_call(LoraCall(self.lora, te=self.weight, unet=self.weight, blocks=text))

    def prompt_with(self, tag: str) -> str:
        return f"{self.prompt.rstrip()} {tag}".strip()


def percent_text(share: float) -> str:
    """A share as a percentage that never reads 0 for a change: "0%", "<0.01%", "12.34%"."""
    if share <= 0:
        return "0%"
    if share < 0.0001:
        return "<0.01%"
    return f"{100 * share:.2f}%"


@dataclass(frozen=True)
class BlockEffect:
    """One block switched off: its rank (1 = most effective; None when it changes nothing), the share of pixels
    changed, image and change mask."""

    rank: int | None
    block: str
    share: float
    image: Image.Image
    mask: Image.Image

    @property
    def percent(self) -> str:
        return percent_text(self.share)


def rank_effects(shares: Sequence[float]) -> list[tuple[int, int | None]]:
    """(format index, rank) in display order: changing blocks by share, equal shares sharing a rank (1, 2, 2, 4),
    then the blocks that change nothing, unranked, in format order."""
    order = sorted(range(len(shares)), key=lambda index: (-shares[index], index))
    ranked: list[tuple[int, int | None]] = []
    for position, index in enumerate(order):
        if shares[index] <= 0:
            ranked.append((index, None))
        elif position and shares[order[position - 1]] == shares[index]:
            ranked.append((index, ranked[-1][1]))
        else:
            ranked.append((index, position + 1))
    return ranked


@dataclass(frozen=True)
class AnalyzeResult:
    """Ranked rows, the reference images, the labelled grid, its infotext and where it was saved."""

    spec: AnalyzeSpec
    arch: str
    blocks: tuple[str, ...]
    without_lora: Image.Image
    all_on: Image.Image
    lora_share: float  # pixels the whole LoRA changes (all-on vs without it)
    rows: tuple[BlockEffect, ...]
    image: Image.Image
    parameters: str
    path: Path | None = None

    def table(self) -> list[list[object]]:
        """[rank, block, changed %] rows as text, most effective first; an unranked block's rank is "–"."""
        return [["–" if row.rank is None else str(row.rank), row.block, row.percent] for row in self.rows]

    @property
    def most_effective(self) -> tuple[BlockEffect, ...]:
        """The blocks ranked 1 (several when tied); none when no block changes anything."""
        return tuple(row for row in self.rows if row.rank == 1)

    def summary(self) -> str:
        """One or two sentences: what the LoRA changes and its most effective block(s), or that nothing changes."""
        threshold = f"by more than {self.spec.threshold} in R, G or B"
        top = self.most_effective
        if self.lora_share <= 0 and not top:
            return (f"The LoRA has no measurable effect here: no pixel changes {threshold}, neither with it nor "
                    f"with any block off, so no block is ranked. Try a higher weight, another prompt or seed, or a "
                    f"lower threshold.")
        whole = f"The LoRA changes {percent_text(self.lora_share)} of pixels (all blocks on vs without it)"
        if not top:
            return (f"{whole}, but switching off any one block changes no pixel {threshold}, so no block is ranked: "
                    "the effect needs several blocks at once, or lies in blocks this format leaves out.")
        names = ", ".join(row.block for row in top)
        label = "most effective block" if len(top) == 1 else f"most effective blocks ({len(top)} tied)"
        unranked = sum(row.rank is None for row in self.rows)
        rest = f"; {unranked} of {len(self.rows)} blocks change nothing" if unranked else ""
        return f"{whole}; {label}: {names} ({top[0].percent}){rest}."

    def to_json(self) -> dict[str, object]:
        return {
            "lora": self.spec.lora, "weight": self.spec.weight, "arch": self.arch, "format": len(self.blocks),
            "threshold": self.spec.threshold, "seed": self.spec.seed, "lora_share": self.lora_share,
            "rows": [{"rank": r.rank, "block": r.block, "share": r.share} for r in self.rows],
            "path": str(self.path) if self.path else None,
        }


def changed_share(reference: Image.Image, image: Image.Image, threshold: int) -> tuple[float, Image.Image]:
    """The share of pixels where some RGB value differs by more than `threshold`, and the mask (white = changed)."""
    a = np.asarray(reference.convert("RGB"), dtype=np.int16)
    b = np.asarray(image.convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        raise AnalyzeError(f"images of different sizes: {reference.size} and {image.size}")
    changed = (np.abs(a - b) > threshold).any(axis=2)
    mask = Image.fromarray(changed.astype(np.uint8) * 255, mode="L")
    return float(changed.mean()) if changed.size else 0.0, mask


def analyze_blocks(
    spec: AnalyzeSpec,
    renderer: LoraRenderer,
    control: JobControl,
    *,
    arch: Arch | str,
    model_name: str,
    save_to: Path | None = None,
) -> AnalyzeResult:
    """Render without the LoRA, with every block on, and with each block off; rank the blocks; compose and save.

    The LoRA's name and the vectors are checked through `renderer` before any image; progress is reported per
    image and a cancel stops before the next one (JobCancelled). The grid is written to `save_to` when given.
    """
    from ..pnginfo import save_png

    resolved = arch if isinstance(arch, Arch) else get_arch(arch)
    blocks = spec.blocks(resolved)
    ones = [1.0] * len(blocks)
    all_on_prompt = spec.prompt_with(spec.tag(ones))
    total = len(blocks) + 2
    control.progress(0, total, "checking the LoRA")
    renderer.check(all_on_prompt)
    for index in range(len(blocks)):
        renderer.check(spec.prompt_with(spec.tag(_off(ones, index))))

    def render(done: int, what: str, prompt: str) -> Image.Image:
        return render_image(renderer, spec.request(prompt), control, done=done, total=total, what=what).image

    without = render(0, "without the LoRA", spec.prompt)
    all_on = render(1, "all blocks on", all_on_prompt)
    lora_share, _ = changed_share(without, all_on, spec.threshold)
    effects = []
    for index, block in enumerate(blocks):
        image = render(2 + index, f"{block} off", spec.prompt_with(spec.tag(_off(ones, index))))
        share, mask = changed_share(all_on, image, spec.threshold)
        effects.append((block, share, image, mask))
    rows = tuple(BlockEffect(rank, *effects[index]) for index, rank in rank_effects([e[1] for e in effects]))
    grid = draw_analysis(spec, len(blocks), without, all_on, lora_share, rows)
    parameters = analysis_parameters(spec, resolved, blocks, rows, model_name)
    result = AnalyzeResult(spec, resolved.name, blocks, without, all_on, lora_share, rows, grid, parameters)
    if save_to is not None:
        settings = json.dumps({**result.to_json(), "path": str(save_to), "model": model_name})
        result = replace(result, path=save_png(grid, save_to, parameters, extra_text={ANALYZE_SETTINGS_KEY: settings}))
    control.progress(total, total, f"saved {result.path}" if result.path else "done")
    return result


def _off(ones: Sequence[float], index: int) -> list[float]:
    vector = list(ones)
    vector[index] = 0.0
    return vector


def analysis_parameters(spec: AnalyzeSpec, arch: Arch, blocks: Sequence[str], rows: Sequence[BlockEffect],
                        model_name: str) -> str:
    """The grid's infotext: prompt, negative, shared fields, the LoRA, the format, threshold and the ranking."""
    from ..pnginfo import parameters_text

    ranking = "; ".join(f"{row.block} {row.percent}" for row in rows)
    fields = {
        "Block analysis": json.dumps(f"{spec.lora} at {spec.weight:g}, {len(blocks)}-value {arch.name} format, "
                                     f"threshold {spec.threshold}"),
        "Changed pixels": json.dumps(ranking),
    }
    return parameters_text(spec.prompt, spec.request(spec.prompt), model=model_name, extra_fields=fields)


def draw_analysis(spec: AnalyzeSpec, length: int, without: Image.Image, all_on: Image.Image, lora_share: float,
                  rows: Sequence[BlockEffect]) -> Image.Image:
    """Tiles in rank order (image with the block off beside its change mask), after the two references."""
    blank = Image.new("L", without.size, 0)
    tiles = [(_pair(without, blank), "without LoRA"),
             (_pair(all_on, blank), f"all {length} on: {100 * lora_share:.1f}% vs none")]
    tiles += [(_pair(row.image, row.mask), f"#{row.rank} {row.block} off: {row.percent}" if row.rank is not None
               else f"{row.block} off: no change") for row in rows]
    grid_tiles = [[tile for tile, _ in tiles[i:i + TILE_COLUMNS]] for i in range(0, len(tiles), TILE_COLUMNS)]
    labels = [[label for _, label in tiles[i:i + TILE_COLUMNS]] for i in range(0, len(tiles), TILE_COLUMNS)]
    title = (f"Effective blocks of {spec.lora} at {spec.weight:g}, seed {spec.seed}, threshold {spec.threshold} "
             f"(right: changed pixels in white)\n{spec.prompt}")
    return compose_grid(grid_tiles, tile_labels=labels, title=title)


def _pair(image: Image.Image, mask: Image.Image) -> Image.Image:
    pair = Image.new("RGB", (image.width * 2 + 2, image.height), (255, 255, 255))
    pair.paste(image.convert("RGB"), (0, 0))
    pair.paste(mask.convert("RGB"), (image.width + 2, 0))
    return pair

