"""XY grids: axis parsing, the plan's prompts and seeds, checks before any image, cells equal to single renders,
cancel between cells, the labelled image, and the settings in the saved PNG (tiny SD1, 2 steps, 64 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from blocks_testing import FAST, RecordingRenderer, write_lora
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from lib_lora.blocks.grid import (
    GRID_SETTINGS_KEY,
    Axis,
    GridError,
    GridSpec,
    new_output_path,
    plan_grid,
    run_grid,
)
from lib_lora.blocks.grid_image import compose_grid, text_width, wrap_text
from lib_lora.jobs import Job, JobCancelled
from lib_lora.pnginfo import read_parameters

# --- pure: axes, specs, plans, drawing --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind", "values"), [
    ("preset: NONE, ALL, CHAR", "preset", ("NONE", "ALL", "CHAR")),
    ("Strength:0.5,1", "strength", ("0.5", "1")),
    ("seed: 1, 2, 3", "seed", ("1", "2", "3")),
    ("lora: a_b, c", "lora", ("a_b", "c")),
    ("preset: ALL | 1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0", "preset", ("ALL", "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0")),
])
def test_axis_parse(text, kind, values):
    axis = Axis.parse(text)
    assert (axis.kind, axis.values) == (kind, values)
    assert Axis.parse(axis.text()) == axis


@pytest.mark.parametrize(("text", "needle"), [
    ("NONE, ALL", "has no ':'"),
    ("blocks: NONE", "unknown axis kind 'blocks'"),
    ("strength: 0.5, x", "'x' is not a number"),
    ("strength: 1, inf", "not a finite number"),
    ("seed: 1.5", "not a whole number"),
    ("seed: -1", "negative"),
    ("preset: NONE,,ALL", "empty value"),
    ("preset:", "empty value"),
    ("seed: " + ",".join(str(n) for n in range(17)), "at most 16"),
])
def test_axis_parse_errors(text, needle):
    with pytest.raises(GridError, match=needle):
        Axis.parse(text)


@given(st.sampled_from(["preset", "lora"]),
       st.lists(st.text(alphabet="ABCxyz_0123456789.", min_size=1, max_size=8), min_size=1, max_size=6))
@settings(max_examples=50, deadline=None)
def test_axis_text_round_trips(kind, values):
    axis = Axis(kind, tuple(values))
    assert Axis.parse(axis.text()) == axis


@pytest.mark.parametrize(("changes", "needle"), [
    ({"x": None}, "at least one axis"),
    ({"y": Axis.parse("preset: ALL")}, "both axes are preset"),
    ({"lora": None}, "choose a LoRA"),
    ({"seed": -3}, "negative"),
    ({"width": 65}, "multiple of 8"),
    ({"strength": float("nan")}, "not a finite number"),
])
def test_spec_errors(changes, needle):
    base = {"prompt": "a cat", "x": Axis.parse("preset: NONE, ALL"), "lora": "part"}
    with pytest.raises(GridError, match=needle):
        GridSpec(**{**base, **changes})


def test_plan_prompts_and_seeds():
    spec = GridSpec(prompt="a cat", x=Axis.parse("preset: NONE, CHAR"), y=Axis.parse("seed: 3, 4"), lora="part",
                    strength=0.8, **FAST)
    plan = plan_grid(spec)
    assert (plan.columns, plan.rows) == (2, 2)
    assert plan.column_labels == ("preset: NONE", "preset: CHAR") and plan.row_labels == ("seed: 3", "seed: 4")
    assert [(c.column, c.row, c.request.prompt, c.request.seed) for c in plan.cells] == [
        (0, 0, "a cat <lora:part:0.8:0.8:lbw=NONE>", 3),
        (1, 0, "a cat <lora:part:0.8:0.8:lbw=CHAR>", 3),
        (0, 1, "a cat <lora:part:0.8:0.8:lbw=NONE>", 4),
        (1, 1, "a cat <lora:part:0.8:0.8:lbw=CHAR>", 4),
    ]
    assert all((c.request.steps, c.request.width) == (2, 64) for c in plan.cells)


@pytest.mark.parametrize(("x", "y", "defaults", "prompts", "shape"), [
    ("strength: 0.5, 1", None, {"preset": "NCNF"},
     ["<lora:part:0.5:0.5:lbw=NCNF>", "<lora:part:1:1:lbw=NCNF>"], (2, 1)),
    (None, "lora: a, b", {"lora": None, "strength": 0.7},
     ["<lora:a:0.7:0.7>", "<lora:b:0.7:0.7>"], (1, 2)),
    ("preset: ALL | 1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0", None, {},
     ["<lora:part:1:1:lbw=ALL>", "<lora:part:1:1:lbw=1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0>"], (2, 1)),
])
def test_plan_one_axis(x, y, defaults, prompts, shape):
    spec = GridSpec(**{"prompt": "", "x": Axis.parse(x) if x else None, "y": Axis.parse(y) if y else None,
                       "lora": "part", **defaults})
    plan = plan_grid(spec)
    assert [c.request.prompt for c in plan.cells] == prompts
    assert (plan.columns, plan.rows) == shape


def solid(color: tuple[int, int, int], size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def boxes(image: Image.Image, color: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the pixels of exactly `color`."""
    array = np.asarray(image)
    ys, xs = np.nonzero((array == color).all(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def dark_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    return int((np.asarray(image.crop(box).convert("L")) < 128).sum())


@pytest.mark.parametrize("labelled", [True, False])
def test_compose_grid_places_tiles_and_labels(labelled):
    colors = [[(200, 0, 0), (0, 200, 0)], [(0, 0, 200), (200, 200, 0)]]
    tiles = [[solid(c) for c in row] for row in colors]
    labels = {"column_labels": ["preset: NONE", "preset: CHAR"], "row_labels": ["strength: 0.5", "strength: 1"],
              "title": "LoRA part"} if labelled else {}
    grid = compose_grid(tiles, **labels)
    found = [[boxes(grid, c) for c in row] for row in colors]
    assert all(box[2:] == (64, 64) for row in found for box in row)
    assert found[0][0][0] < found[0][1][0] and found[0][0][1] == found[0][1][1]  # columns left to right
    assert found[0][0][1] < found[1][0][1] and found[0][0][0] == found[1][0][0]  # rows top to bottom
    left, top = found[0][0][:2]
    header = dark_pixels(grid, (left, 0, grid.width, top))
    side = dark_pixels(grid, (0, top, left, grid.height))
    assert (header > 0 and side > 0) if labelled else (header == 0 and side == 0)


@given(st.text(alphabet="abc ,01:", min_size=0, max_size=80), st.integers(min_value=20, max_value=200))
@settings(max_examples=60, deadline=None)
@example(",000", 20)  # the part after the comma is wider than the line by itself
@example("0aa ", 22)  # fits without its trailing space, which is not drawn
def test_wrap_text_fits_and_keeps_every_character(text, width):
    lines = wrap_text(text, width)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert all(len(line) == 1 or text_width(line) <= width for line in lines if line)


def test_new_output_path_never_reuses_a_name(tmp_path):
    first = new_output_path(tmp_path, "xy")
    first.write_bytes(b"x")
    second = new_output_path(tmp_path, "xy")
    assert first.name.endswith("-xy.png") and second != first and not second.exists()


# --- rendering through a real LoraSession on the tiny SD1 model ----------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("diffusers")
    from lib_lora.blocks.apply import LoraLibrary
    from lib_lora.blocks.presets import PresetBook
    from lib_lora.blocks.session import LoraSession
    from lib_lora.hosts.diffusers import load_diffusers_host

    host = load_diffusers_host("tiny")
    folder = tmp_path_factory.mktemp("loras")
    write_lora(host, folder / "part.safetensors", blocks={"BASE", "IN04", "IN05", "OUT05"})
    write_lora(host, folder / "other.safetensors", seed=1)
    return LoraSession(host, LoraLibrary([folder]), PresetBook.builtin(), model_name="tiny")


def grid_spec(**changes) -> GridSpec:
    base = {"prompt": "a cat", "x": Axis.parse("preset: NONE, CHAR"), "y": Axis.parse("strength: 0.5, 1"),
            "lora": "part", "seed": 7, **FAST}
    return GridSpec(**{**base, **changes})


def test_grid_cells_equal_single_renders_and_png_keeps_settings(tiny, tmp_path):
    plan = plan_grid(grid_spec())
    target = tmp_path / "grids" / "g.png"
    result = Job("grid", lambda control: run_grid(plan, tiny, control, model_name="tiny", save_to=target)).run_here()
    assert len(result.cells) == 4 and result.path == target
    arrays = [np.asarray(generated.image) for generated in result.cells]
    for cell, array in zip(plan.cells, arrays):
        assert np.array_equal(array, np.asarray(tiny.generate(cell.request).image))
    assert not np.array_equal(arrays[0], arrays[1])  # NONE vs CHAR at 0.5: the blocks matter
    assert not np.array_equal(arrays[1], arrays[3])  # CHAR at 0.5 vs 1: the strength matters
    assert "lbw=CHAR" in result.cells[1].parameters and "blocks=CHAR" in result.cells[1].parameters

    with Image.open(target) as saved:
        assert saved.size == result.image.size and saved.width > 2 * 64 and saved.height > 2 * 64
        stored = json.loads(saved.info[GRID_SETTINGS_KEY])
    text = read_parameters(target)
    assert text.splitlines()[0] == "a cat"
    for needle in ("Seed: 7", "Model: tiny", "X: preset: NONE, CHAR", "Y: strength: 0.5, 1", "LoRA: part"):
        assert needle in text
    assert stored["x"] == "preset: NONE, CHAR" and stored["y"] == "strength: 0.5, 1" and stored["model"] == "tiny"
    assert [c["parameters"] for c in stored["cells"]] == [g.parameters for g in result.cells]


@pytest.mark.parametrize(("changes", "needle"), [
    ({"x": Axis.parse("preset: NONE, CHRA")}, "X axis preset 'CHRA'.*did you mean CHAR"),
    ({"y": Axis.parse("lora: part, prat")}, "Y axis lora 'prat'.*did you mean part"),
    ({"x": Axis.parse("preset: ALL | 1,0,1")}, "expected 17 or 26 values"),
    ({"x": Axis.parse("preset: NONE, ALL"), "lora": "missing"}, "no LoRA named 'missing'"),
])
def test_invalid_values_raise_before_any_image(tiny, changes, needle):
    renderer = RecordingRenderer(tiny)
    plan = plan_grid(grid_spec(**changes))
    job = Job("grid", lambda control: run_grid(plan, renderer, control, model_name="tiny"))
    with pytest.raises(GridError, match=needle):
        job.run_here()
    assert renderer.generated == [] and job.snapshot().done == 0


def test_cancel_stops_between_cells(tiny):
    renderer = RecordingRenderer(tiny)
    plan = plan_grid(grid_spec())
    job: Job = Job("grid", lambda control: run_grid(
        plan, renderer, control, model_name="tiny", on_cell=lambda index, *_: index == 1 and job.cancel()))
    with pytest.raises(JobCancelled):
        job.run_here()
    snapshot = job.snapshot()
    assert snapshot.state == "cancelled" and snapshot.done == 2 and snapshot.total == 4
    assert len(renderer.generated) == 2


def test_saves_nothing_without_a_target(tiny, tmp_path):
    plan = plan_grid(grid_spec(x=Axis.parse("lora: part, other"), y=None, lora=None))
    result = Job("grid", lambda control: run_grid(plan, tiny, control, model_name="tiny")).run_here()
    assert result.path is None and list(Path(tmp_path).iterdir()) == []
    assert [c.calls[0].name for c in result.cells] == ["part", "other"]
