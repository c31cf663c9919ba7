"""The XY grid's per-block sweeps (block-only, block-off, `each`), LBW's X as an axis, and R/U drawn once per grid
with the seed recorded in every cell and in the grid (pure: a renderer that draws nothing)."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from lib_lora.blocks.grid import Axis, GridError, GridSpec, plan_grid, run_grid
from lib_lora.blocks.presets import FORMATS, PresetBook
from lib_lora.blocks.recipe import RANDOM_FIELD
from lib_lora.blocks.session import Generated
from lib_lora.blocks.syntax import parse_prompt
from lib_lora.jobs import Job

ALL_17 = ",".join(["1"] * 17)
CHAR_17 = "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0"
X_17 = "1," + ",".join(["X"] * 16)


def spec(x: str, y: str | None = None, **fields) -> GridSpec:
    return GridSpec(prompt="a cat", x=Axis.parse(x), y=Axis.parse(y) if y else None,
                    **{"lora": "part", "steps": 2, "width": 64, "height": 64, **fields})


def vectors(plan) -> list[list[float]]:
    return [[float(v) for v in cell.call.blocks.split(",")] for cell in plan.cells]


@pytest.mark.parametrize(("text", "kind", "values"), [
    ("block-off: in04, OUT05", "block-off", ("IN04", "OUT05")),
    ("block-only: EACH", "block-only", ("each",)),
    ("x: 0, 0.5, 1", "x", ("0", "0.5", "1")),
    ("block-off: " + ", ".join(FORMATS["sd1"][26]), "block-off", FORMATS["sd1"][26]),  # 26 blocks fit one axis
])
def test_axis_parse(text, kind, values):
    axis = Axis.parse(text)
    assert (axis.kind, axis.values) == (kind, values) and Axis.parse(axis.text()) == axis


@pytest.mark.parametrize(("text", "needle"), [
    ("block-off: IN99", "'IN99' is not a block id"),
    ("block-only: each, IN04", "`each` stands for every block and goes alone"),
    ("block-off: IN04, in04", "listed twice"),
    ("x: a", "x axis: 'a' is not a number"),
    ("block-off: " + ", ".join(["IN04"] * 27), "at most 26"),
])
def test_axis_errors(text, needle):
    with pytest.raises(GridError, match=re.escape(needle)):
        Axis.parse(text)


def test_block_off_each_switches_off_one_block_per_column():
    plan = plan_grid(spec("block-off: each", preset=CHAR_17))
    char = [float(v) for v in CHAR_17.split(",")]
    assert plan.columns == 17 and plan.column_labels[3] == "block-off: IN04"
    for index, vector in enumerate(vectors(plan)):
        assert vector == [0.0 if i == index else v for i, v in enumerate(char)]


def test_block_only_keeps_one_block_and_zeroes_the_rest():
    plan = plan_grid(spec("block-only: IN04, OUT05", "strength: 0.5, 1", preset=ALL_17))
    order = FORMATS["sd1"][17]
    for cell, vector in zip(plan.cells, vectors(plan)):
        block = dict(cell.axis_values)["block-only"]
        assert vector == [1.0 if b == block else 0.0 for b in order]
    assert {cell.call.te for cell in plan.cells} == {0.5, 1.0}


@pytest.mark.parametrize(("preset", "arch", "columns"), [
    ("CHAR", "sd1", 17),
    ("FACE", "sd1", 26),  # a 26-value preset sweeps every block
    (None, "sdxl", 12),   # no block weights: every block of the family's LoRA format at 1
])
def test_each_follows_the_format_of_the_weights(preset, arch, columns):
    plan = plan_grid(spec("block-off: each", preset=preset), presets=PresetBook.builtin(), arch=arch)
    assert plan.columns == columns and all(len(vector) == columns for vector in vectors(plan))


@pytest.mark.parametrize(("x_axis", "preset", "needle"), [
    ("block-off: IN04", "CHAR", "needs the model's family to read the block weights 'CHAR'"),  # the CLI, unloaded
    ("block-off: IN00", ALL_17, "IN00 is not in the 17-value format"),
    ("block-only: M00", ",".join(["1"] * 12) + ",0", "have 13 values"),
])
def test_sweep_errors_name_the_cause(x_axis, preset, needle):
    with pytest.raises(GridError, match=re.escape(needle)):
        plan_grid(spec(x_axis, preset=preset))


def test_two_block_axes_are_refused():
    with pytest.raises(GridError, match="block-only and block-off on one grid"):
        spec("block-only: IN04", "block-off: OUT05", preset=ALL_17)


def test_the_x_axis_sets_x_in_the_weights():
    plan = plan_grid(spec("x: 0, 0.5", "block-off: IN01, IN02", preset=X_17))
    for cell, vector in zip(plan.cells, vectors(plan)):
        values = dict(cell.axis_values)
        x, off = float(values["x"]), FORMATS["sd1"][17].index(values["block-off"])
        assert vector == [1.0] + [0.0 if i == off else x for i in range(1, 17)]
        written = ["1"] + ["0" if i == off else "X" for i in range(1, 17)]
        assert cell.blocks.record() == f'"{",".join(written)}: X {x:g}"'


def test_an_x_axis_needs_an_x_in_the_weights():
    with pytest.raises(GridError, match="the block weights have no X"):
        plan_grid(spec("x: 0, 1", preset=CHAR_17))


def test_random_values_are_drawn_once_per_grid_from_its_seed():
    recipe = "1," + ",".join(["R", "U"] * 8)
    plan = plan_grid(spec("strength: 0.5, 1", "seed: 1, 2", preset=recipe, random_seed=5))
    assert len({cell.call.blocks for cell in plan.cells}) == 1  # every cell compares the same drawn weights
    again = plan_grid(spec("strength: 0.5, 1", preset=recipe, random_seed=5))
    other = plan_grid(spec("strength: 0.5, 1", preset=recipe, random_seed=6))
    assert again.cells[0].call.blocks == plan.cells[0].call.blocks != other.cells[0].call.blocks
    assert plan.cells[0].blocks.record() == f'"{recipe}: seed 5"'


class Drawer:
    """A renderer that draws grey squares and writes a WebUI-like infotext."""

    def check(self, prompt: str):
        return parse_prompt(prompt)[1]

    def generate(self, request) -> Generated:
        image = Image.new("RGB", (request.width, request.height), (128, 128, 128))
        return Generated(image, f"{request.prompt}\nSteps: {request.steps}, Seed: {request.seed}",
                         tuple(parse_prompt(request.prompt)[1]))


def test_every_cell_and_the_grid_record_the_random_seed():
    recipe = "1,R,X" + ",0" * 14
    grid = spec("x: 0.5, 1", preset=recipe, random_seed=77)
    result = Job("grid", lambda control: run_grid(plan_grid(grid), Drawer(), control, model_name="m")).run_here()
    for cell, generated in zip(result.plan.cells, result.cells):
        drawn = cell.call.blocks.split(",")
        assert f"lbw={cell.call.blocks}" in generated.parameters.splitlines()[0]  # the numbers are in the tag
        assert drawn[2] == dict(cell.axis_values)["x"]
        assert generated.parameters.endswith(f'{RANDOM_FIELD}: "{recipe}: seed 77, X {drawn[2]}"')
    assert "Random seed: 77" in result.parameters and result.settings["random_seed"] == 77
