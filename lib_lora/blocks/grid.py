"""XY comparison grids of one LoRA over two axes (one may be absent: one row); the axis kinds are in grid_axes.py
(preset, strength, lora, seed, x, block-only, block-off).

Pure core (PIL, no gradio): `GridSpec` (what the user asked, validated) -> `plan_grid` (one `GridCell` per image:
the prompt with a `<lora:…>` tag built by `format_call`, and the seed; R, U and X in the block weights resolved
with the spec's random seed and the cell's X) -> `check_plan` (every axis value resolved through the session before
anything is generated) -> `run_grid` (cells rendered through a LoraSession, progress per sampling step, cancel
within a cell; a labelled grid image, saved with the settings in its PNG text).

Axis values are separated by commas, or by `|` when the text has one (so a preset axis can hold literal vectors:
`preset: ALL | 1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import LoraStudioError
from .grid_axes import (
    AXIS_HELP,
    AXIS_KINDS,
    BLOCK_KINDS,
    EACH,
    Axis,
    BlockContext,
    CellBlocks,
    GridError,
    cell_blocks,
    each_block,
    number_text,
    seed_value,
    strength_value,
)
from .grid_image import compose_grid
from .presets import PresetBook
from .recipe import DEFAULT_X, RANDOM_FIELD, WeightRecipe, with_field
from .rendering import render_image
from .syntax import LoraCall, format_call

if TYPE_CHECKING:
    from PIL import Image

    from ..hosts.base import GenerationRequest
    from ..jobs import JobControl
    from .session import Generated

__all__ = [
    "AXIS_HELP",
    "AXIS_KINDS",
    "Axis",
    "GridCell",
    "GridError",
    "GridPlan",
    "GridResult",
    "GridSpec",
    "LoraRenderer",
    "check_plan",
    "new_output_path",
    "plan_grid",
    "run_grid",
]

GRID_SETTINGS_KEY = "lora_studio_grid"
"""The PNG text chunk holding the grid's settings as JSON (beside A1111's `parameters`)."""


class LoraRenderer(Protocol):
    """What grids and the analyzer need from a LoraSession (one with `reports_steps` also takes `on_step`)."""

    def check(self, prompt: str) -> list[LoraCall]: ...

    def generate(self, request: GenerationRequest) -> Generated: ...


@dataclass(frozen=True)
class GridSpec:
    """A grid: base prompt and generation settings, the LoRA's default name/strength/preset, and the axes.

    `lora` may be omitted only when an axis is `lora`; `preset` None applies the LoRA without block weights. R and
    U in the block weights are drawn with `random_seed` (the same numbers in every cell), X is `x` unless an `x` axis
    sets it.
    """

    prompt: str
    x: Axis | None
    y: Axis | None = None
    lora: str | None = None
    strength: float = 1.0
    preset: str | None = None
    seed: int = 0
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    random_seed: int = 0
    x_value: float = DEFAULT_X

    def __post_init__(self) -> None:
        if self.x is None and self.y is None:
            raise GridError("a grid needs at least one axis")
        if self.x is not None and self.y is not None and self.x.kind == self.y.kind:
            raise GridError(f"both axes are {self.x.kind}; choose two different kinds")
        if sum(kind in BLOCK_KINDS for kind in self.kinds) > 1:
            raise GridError("block-only and block-off on one grid leave nothing to compare; choose one of them")
        if not 0 <= self.random_seed < 2**32:
            raise GridError(f"random seed {self.random_seed} is outside 0…{2**32 - 1}")
        if not math.isfinite(self.x_value):
            raise GridError(f"X value {self.x_value!r} is not a finite number")
        if not self.lora and "lora" not in self.kinds:
            raise GridError("choose a LoRA (or make one axis `lora`)")
        if not math.isfinite(self.strength):
            raise GridError(f"strength {self.strength!r} is not a finite number")
        if self.seed < 0:
            raise GridError(f"seed {self.seed} is negative; seeds are 0 or more")
        try:
            self.request(self.prompt, self.seed)
        except ValueError as error:
            raise GridError(str(error)) from None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(axis.kind for axis in (self.x, self.y) if axis is not None)

    @property
    def needs_family(self) -> bool:
        """Whether planning needs the model's family and presets (a block-only/block-off axis)."""
        return any(kind in BLOCK_KINDS for kind in self.kinds)

    def request(self, prompt: str, seed: int) -> GenerationRequest:
        from ..hosts.base import GenerationRequest  # torch: imported when a grid runs, not with the CLI

        return GenerationRequest(prompt=prompt, negative_prompt=self.negative_prompt, steps=self.steps,
                                 cfg_scale=self.cfg_scale, width=self.width, height=self.height, seed=seed)

    def settings(self) -> dict[str, object]:
        """The spec as JSON-ready data (stored in the grid PNG)."""
        return {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt,
            "x": self.x.text() if self.x else None, "y": self.y.text() if self.y else None,
            "lora": self.lora, "strength": self.strength, "preset": self.preset, "seed": self.seed,
            "steps": self.steps, "cfg_scale": self.cfg_scale, "width": self.width, "height": self.height,
            "random_seed": self.random_seed, "x_value": self.x_value,
        }


@dataclass(frozen=True)
class GridCell:
    """One image of the grid: its column and row, the LoRA call and the generation request (prompt with the tag)."""

    column: int
    row: int
    call: LoraCall
    request: GenerationRequest
    axis_values: tuple[tuple[str, str], ...] = field(default=())  # ((kind, value), …): X first
    blocks: CellBlocks | None = None  # how R, U and X were resolved, when they were


@dataclass(frozen=True)
class GridPlan:
    """Every cell, row by row; `column_labels`/`row_labels` are empty for an absent axis."""

    spec: GridSpec
    cells: tuple[GridCell, ...]
    columns: int
    rows: int
    column_labels: tuple[str, ...]
    row_labels: tuple[str, ...]


def _cell_call(spec: GridSpec, values: dict[str, str], context: BlockContext) -> tuple[LoraCall, int, CellBlocks]:
    name = values.get("lora", spec.lora or "")
    strength = strength_value(values["strength"]) if "strength" in values else spec.strength
    x = strength_value(values["x"], "x") if "x" in values else spec.x_value
    blocks = cell_blocks(values.get("preset", spec.preset), values, context, seed=spec.random_seed, x=x)
    seed = seed_value(values["seed"]) if "seed" in values else spec.seed
    return LoraCall(name=name, te=strength, unet=strength, blocks=blocks.spec), seed, blocks


def _values(axis: Axis | None, spec: GridSpec, context: BlockContext) -> tuple[str, ...]:
    """The axis' values, `each` expanded to the blocks of the base weights' format; ("",) for no axis."""
    if axis is None:
        return ("",)
    if axis.values == (EACH,):
        return each_block(spec.preset, context, axis.kind)
    return axis.values


def plan_grid(spec: GridSpec, *, presets: PresetBook | None = None, arch: str | None = None) -> GridPlan:
    """The cells of `spec`, row by row, each prompt = base prompt + the cell's tag (built with `format_call`).

    `presets` and `arch` (the model's) are needed to read preset names under a block-only/block-off axis.
    """
    context = BlockContext(presets, arch)
    x_values, y_values = _values(spec.x, spec, context), _values(spec.y, spec, context)
    cells = []
    for row, y_value in enumerate(y_values):
        for column, x_value in enumerate(x_values):
            pairs = tuple((axis.kind, value) for axis, value in ((spec.x, x_value), (spec.y, y_value)) if axis)
            where = ", ".join(f"{kind} {value!r}" for kind, value in pairs)
            try:
                call, seed, blocks = _cell_call(spec, dict(pairs), context)
                tag = format_call(call)
            except LoraStudioError as error:
                raise GridError(f"{where}: {error}") from error
            prompt = f"{spec.prompt.rstrip()} {tag}".strip()
            cells.append(GridCell(column, row, call, spec.request(prompt, seed), pairs, blocks))
    if "x" in spec.kinds and not any(cell.blocks and cell.blocks.recipe and cell.blocks.recipe.uses_x
                                     for cell in cells):
        raise GridError("x axis: the block weights have no X, so every column would be the same; write X where a "
                        "block should take the axis' value (e.g. 1,X,X,…) or choose another axis")
    return GridPlan(
        spec=spec,
        cells=tuple(cells),
        columns=len(x_values),
        rows=len(y_values),
        column_labels=tuple(spec.x.label(v) for v in x_values) if spec.x else (),
        row_labels=tuple(spec.y.label(v) for v in y_values) if spec.y else (),
    )


def check_plan(plan: GridPlan, renderer: LoraRenderer) -> None:
    """Resolve every axis value (LoRA names, presets for the model's family) before generating anything.

    Raises GridError naming the axis and value, with the resolver's message (close names included).
    """
    checked: set[str] = set()
    names = {0: "X", 1: "Y"} if plan.spec.x else {0: "Y"}
    for cell in plan.cells:
        if cell.request.prompt in checked:
            continue
        checked.add(cell.request.prompt)
        try:
            renderer.check(cell.request.prompt)
        except LoraStudioError as error:
            axes = ", ".join(f"{names[i]} axis {kind} {value!r}" for i, (kind, value) in enumerate(cell.axis_values))
            raise GridError(f"{axes}: {error}") from error


@dataclass(frozen=True)
class GridResult:
    """The rendered cells (plan order; each keeps its own infotext), the grid image, its text and where it went."""

    plan: GridPlan
    cells: tuple[Generated, ...]
    image: Image.Image
    parameters: str
    settings: dict[str, object]
    path: Path | None = None

    @property
    def warnings(self) -> list[str]:
        """The cells' warnings (LoRAs whose modules matched in part), each once."""
        return list(dict.fromkeys(warning for cell in self.cells for warning in getattr(cell, "warnings", ())))


def new_output_path(folder: Path, kind: str) -> Path:
    """`folder/<YYYYmmdd-HHMMSS>-<kind>.png`, with `-2`, `-3`… added when that name is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(folder) / f"{stamp}-{kind}.png"
    number = 2
    while path.exists():
        path = Path(folder) / f"{stamp}-{kind}-{number}.png"
        number += 1
    return path


def grid_parameters(spec: GridSpec, model_name: str) -> str:
    """The grid's infotext: base prompt, negative prompt, then the shared fields and the axes."""
    from ..pnginfo import parameters_text

    fields = {"XY grid": json.dumps("; ".join(f"{n}: {a.text()}" for n, a in (("X", spec.x), ("Y", spec.y)) if a))}
    if spec.lora:
        fields["LoRA"] = spec.lora
    fields["Strength"] = number_text(spec.strength)
    if spec.preset:
        fields["Blocks"] = json.dumps(spec.preset)
    if random_weights(spec):
        fields["Random seed"] = str(spec.random_seed)
    return parameters_text(spec.prompt, spec.request(spec.prompt, spec.seed), model=model_name, extra_fields=fields)


def run_grid(
    plan: GridPlan,
    renderer: LoraRenderer,
    control: JobControl,
    *,
    model_name: str,
    save_to: Path | None = None,
    on_cell: Callable[[int, GridCell, Generated], None] | None = None,
) -> GridResult:
    """Check the plan, render each cell (progress per sampling step, see rendering.py), compose and save.

    The grid is written to `save_to` when given (see `new_output_path`), with the base prompt, axes, values,
    seed and model in its `parameters` text and the settings and each cell's infotext as JSON in
    `lora_studio_grid`; a cell whose weights had R, U or X records them in `Lora random weights`. A cancel
    raises JobCancelled within the current cell; `on_cell(index, cell, generated)` runs after each cell.
    """
    from ..pnginfo import save_png

    total = len(plan.cells)
    control.progress(0, total, "checking the axes")
    check_plan(plan, renderer)
    rendered: list[Generated] = []
    for index, cell in enumerate(plan.cells):
        generated = render_image(renderer, cell.request, control, done=index, total=total, what=_cell_title(cell))
        record = cell.blocks.record() if cell.blocks is not None else None
        if record is not None:
            generated = replace(generated, parameters=with_field(generated.parameters, RANDOM_FIELD, record))
        rendered.append(generated)
        control.progress(index + 1, total, f"image {index + 1}/{total} done")
        if on_cell is not None:
            on_cell(index, cell, generated)
    image = draw_grid(plan, [g.image for g in rendered])
    parameters = grid_parameters(plan.spec, model_name)
    settings = {**plan.spec.settings(), "model": model_name,
                "cells": [{"column": c.column, "row": c.row, "parameters": g.parameters}
                          for c, g in zip(plan.cells, rendered)]}
    path = None
    if save_to is not None:
        path = save_png(image, save_to, parameters, extra_text={GRID_SETTINGS_KEY: json.dumps(settings)})
    control.progress(total, total, f"saved {path}" if path else "done")
    return GridResult(plan, tuple(rendered), image, parameters, settings, path)


def random_weights(spec: GridSpec) -> bool:
    """Whether some block weights of the grid (the base, or a preset axis value) draw R or U."""
    texts = [spec.preset] + list(spec.x.values if spec.x and spec.x.kind == "preset" else ())
    texts += list(spec.y.values if spec.y and spec.y.kind == "preset" else ())
    return any(text and "," in text and _draws(text) for text in texts)


def _draws(text: str) -> bool:
    try:
        return WeightRecipe.parse(text).random
    except LoraStudioError:
        return False


def _cell_title(cell: GridCell) -> str:
    return ", ".join(f"{kind} {value}" for kind, value in cell.axis_values)


def draw_grid(plan: GridPlan, images: Sequence[Image.Image]) -> Image.Image:
    """The cells' images in the plan's rows and columns, axis values as labels, the LoRA and prompt as title."""
    if len(images) != len(plan.cells):
        raise GridError(f"{len(images)} images for {len(plan.cells)} cells")
    tiles: list[list[Image.Image | None]] = [[None] * plan.columns for _ in range(plan.rows)]
    for cell, image in zip(plan.cells, images):
        tiles[cell.row][cell.column] = image
    spec = plan.spec
    title = []
    if spec.lora and "lora" not in spec.kinds:
        title.append(f"LoRA {spec.lora}")
    if "strength" not in spec.kinds:
        title.append(f"strength {number_text(spec.strength)}")
    if spec.preset and "preset" not in spec.kinds:
        title.append(f"blocks {spec.preset}")
    if random_weights(spec):
        title.append(f"random seed {spec.random_seed}")
    if "seed" not in spec.kinds:
        title.append(f"seed {spec.seed}")
    return compose_grid(tiles, column_labels=plan.column_labels, row_labels=plan.row_labels,
                        title=", ".join(title) + (f"\n{spec.prompt}" if spec.prompt else ""))
