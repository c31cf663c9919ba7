"""The XY grid's axes and the block weights of each cell (pure: no images).

Axis kinds: `preset` (names or literal vectors), `strength`, `lora`, `seed`; `x`, the value LBW's `X` takes in the
block weights (`1,X,X,…` with `x: 0, 0.5, 1`); and the per-block sweeps `block-only` (each block alone: the others
at 0) and `block-off` (each block at 0, the others as set), both starting from the block weights of the cell
(the sliders, or the `preset` axis), with block ids or `each` (every block of that vector's format).
`cell_blocks` resolves a cell's weights to what a tag carries: a preset name, or numbers (R, U and X drawn with
the grid's random seed and the cell's X; recipe.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import LoraStudioError
from .presets import FORMATS, PresetBook, family_of, shortest_length, vector_for
from .recipe import WeightRecipe

__all__ = ["AXIS_HELP", "AXIS_KINDS", "BLOCK_KINDS", "EACH", "Axis", "CellBlocks", "GridError", "cell_blocks"]

BLOCK_KINDS: tuple[str, ...] = ("block-only", "block-off")
AXIS_KINDS: tuple[str, ...] = ("preset", "strength", "lora", "seed", "x", *BLOCK_KINDS)
MAX_AXIS_VALUES = 16
MAX_BLOCK_VALUES = max(length for formats in FORMATS.values() for length in formats)
EACH = "each"
_KNOWN_BLOCKS = frozenset(block for formats in FORMATS.values() for order in formats.values() for block in order)

AXIS_HELP = (
    "kind: values — kind is preset, strength, lora, seed, x (the value of X in the block weights), block-only "
    "(each block alone) or block-off (each block switched off); values are separated by commas (or by | when a "
    "value is a literal block vector), e.g. `preset: NONE, ALL, CHAR`, `strength: 0.5, 1`, `block-off: each` or "
    "`block-only: IN04, OUT05`"
)


class GridError(LoraStudioError):
    """A grid's axes or values are invalid; the message names the axis and the value."""


def number_text(value: float) -> str:
    return f"{value:g}"


def strength_value(text: str, kind: str = "strength") -> float:
    try:
        value = float(text)
    except ValueError:
        raise GridError(f"{kind} axis: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise GridError(f"{kind} axis: {text!r} is not a finite number")
    return value


def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise GridError(f"seed axis: {text!r} is not a whole number") from None
    if value < 0:
        raise GridError(f"seed axis: {text!r} is negative; seeds are 0 or more")
    return value


@dataclass(frozen=True)
class Axis:
    """One axis: a kind from AXIS_KINDS and its values as typed (strengths and X numbers, seeds integers, blocks
    block ids or `each`)."""

    kind: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in AXIS_KINDS:
            raise GridError(f"unknown axis kind {self.kind!r}; expected one of {', '.join(AXIS_KINDS)}")
        values = tuple(str(value).strip() for value in self.values)
        if not values or any(not value for value in values):
            raise GridError(f"{self.kind} axis: empty value in {', '.join(self.values) or '(nothing)'}")
        most = MAX_BLOCK_VALUES if self.kind in BLOCK_KINDS else MAX_AXIS_VALUES
        if len(values) > most:
            raise GridError(f"{self.kind} axis: {len(values)} values; at most {most} are allowed")
        if self.kind in BLOCK_KINDS:
            values = _block_values(self.kind, values)
        for value in values:
            if self.kind in ("strength", "x"):
                strength_value(value, self.kind)
            elif self.kind == "seed":
                seed_value(value)
        object.__setattr__(self, "values", values)

    @classmethod
    def parse(cls, text: str) -> Axis:
        """`kind: v1, v2, …` (or `kind: v1 | v2` for values with commas); GridError names what is wrong."""
        kind, colon, rest = text.partition(":")
        if not colon:
            raise GridError(f"axis {text.strip()!r} has no ':'; write {AXIS_HELP}")
        separator = "|" if "|" in rest else ","
        return cls(kind.strip().lower(), tuple(rest.split(separator)))

    def text(self) -> str:
        """The axis as `parse` reads it back."""
        separator = " | " if any("," in value for value in self.values) else ", "
        return f"{self.kind}: {separator.join(self.values)}"

    def label(self, value: str) -> str:
        return f"{self.kind}: {value}"


def _block_values(kind: str, values: tuple[str, ...]) -> tuple[str, ...]:
    if EACH in (value.lower() for value in values):
        if len(values) > 1:
            raise GridError(f"{kind} axis: `each` stands for every block and goes alone, got {', '.join(values)}")
        return (EACH,)
    blocks = tuple(value.upper() for value in values)
    unknown = [value for value, block in zip(values, blocks) if block not in _KNOWN_BLOCKS]
    if unknown:
        raise GridError(f"{kind} axis: {', '.join(map(repr, unknown))} is not a block id (BASE, IN00…IN11, M00, "
                        "OUT00…OUT11), nor `each`")
    if len(set(blocks)) != len(blocks):
        raise GridError(f"{kind} axis: a block is listed twice in {', '.join(values)}")
    return blocks


@dataclass(frozen=True)
class CellBlocks:
    """What a cell's tag carries (`spec`: a preset name, numbers, or None for no block weights) and, when it was
    written with R, U or X, the vector as written and the seed and X that resolved it."""

    spec: str | None
    recipe: WeightRecipe | None = None
    seed: int = 0
    x: float = 1.0

    def record(self) -> str | None:
        """`Lora random weights`' value for this cell, or None when no R, U or X was resolved."""
        return None if self.recipe is None else self.recipe.record(seed=self.seed, x=self.x)


@dataclass(frozen=True)
class BlockContext:
    """What reading block weights needs beyond the text: the presets and the model's arch (None when unknown)."""

    presets: PresetBook | None = None
    arch: str | None = None


def base_recipe(base: str | None, context: BlockContext, *, needed_by: str) -> WeightRecipe:
    """The vector of `base` (None: every block of the family's LoRA format at 1); a preset name needs the book
    and the arch."""
    if base is not None and "," in base:
        return WeightRecipe.parse(base)
    arch, presets = context.arch, context.presets
    if arch is not None and base is None:
        return WeightRecipe((1.0,) * min(FORMATS[family_of(arch)]))
    if arch is None or presets is None or base is None:
        raise GridError(f"{needed_by} needs the model's family to read the block weights {base or '(none)'!r}; "
                        "give them as a vector")
    weights = presets.get(base, arch)
    return WeightRecipe(tuple(vector_for(weights, arch, shortest_length(weights, arch))))


def format_blocks(recipe: WeightRecipe) -> tuple[str, ...]:
    """The blocks of the vector's format, in order; GridError for a length no family has."""
    for formats in FORMATS.values():
        if len(recipe) in formats:
            return formats[len(recipe)]
    raise GridError(f"block weights {recipe.text()!r} have {len(recipe)} values; a vector has 17 or 26 (SD1/SD2), "
                    "12 or 20 (SDXL)")


def cell_blocks(base: str | None, values: Mapping[str, str], context: BlockContext, *, seed: int,
                x: float) -> CellBlocks:
    """The block weights of a cell whose axis values are `values` ({kind: value}), from `base`."""
    sweep = next((kind for kind in BLOCK_KINDS if kind in values), None)
    if sweep is None and (base is None or "," not in base):
        return CellBlocks(base)
    recipe = base_recipe(base, context, needed_by=f"the {sweep} axis" if sweep else "a grid")
    if sweep is None and recipe.plain:
        return CellBlocks(base)
    if sweep is not None:
        order = format_blocks(recipe)
        block = values[sweep]
        if block not in order:
            raise GridError(f"{sweep} axis: {block} is not in the {len(order)}-value format of these block weights "
                            f"({', '.join(order[:4])}, …, {order[-1]}); use the longer format to reach it")
        index = order.index(block)
        recipe = recipe.only(index) if sweep == "block-only" else recipe.replaced(index, 0.0)
    if recipe.plain:
        return CellBlocks(recipe.text())
    numbers = recipe.resolve(seed=seed, x=x)
    return CellBlocks(",".join(number_text(value) for value in numbers), recipe, seed, x)


def each_block(base: str | None, context: BlockContext, kind: str) -> tuple[str, ...]:
    """The blocks `each` stands for on a `kind` axis: those of the format of `base`."""
    return format_blocks(base_recipe(base, context, needed_by=f"the {kind} axis"))
