"""The vector box and the sliders agree: a preset's name loads the preset, R/U/X mark their sliders, a moved slider
keeps the rest of the box as written, and input the box cannot take changes nothing but the note under it, while
Generate and the grid refuse it with the same message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lib_lora.errors import BlockWeightError
from lib_lora.ui import StudioContext
from lib_lora.ui.blocks.editor import RANDOM_NOTE, SLIDER_KEYS, BlockEditor, read_box
from lib_lora.ui.blocks.runs import BlockRuns

pytestmark = pytest.mark.hostcompat

CHAR_17 = "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0"
RANDOM_17 = "1,R,U,X,X-0.5" + ",0" * 12


@pytest.fixture()
def editor(tmp_path: Path) -> BlockEditor:
    return BlockEditor(lambda: tmp_path / "presets.txt")


@pytest.mark.parametrize(("text", "arch", "preset", "length", "first"), [
    (CHAR_17, "sd1", None, 17, (1.0, 0.0, 0.0, 1.0)),
    (" CHAR ", "sd1", "CHAR", 17, (1.0, 0.0, 0.0, 1.0)),
    ("FACE", "sd1", "FACE", 26, (0.0, 1.0, 1.0, 1.0)),  # a 26-value preset lays out every block
    ("CHAR", "sdxl", "CHAR", 12, (1.0, 0.0, 0.0, 1.0)),
    (RANDOM_17, "sd1", None, 17, (1.0, "R", "U", "X")),
])
def test_the_box_takes_vectors_names_and_lbw_letters(editor, text, arch, preset, length, first):
    box = read_box(text, arch, editor.book())
    assert (box.preset, box.layout.length, box.recipe.weights[:4]) == (preset, length, first)


@pytest.mark.parametrize(("text", "arch", "needle"), [
    ("CHRA", "sd1", "did you mean CHAR"),
    ("FACE", "sdxl", "no SDXL vector"),
    ("1", "sd1", "expected 17 or 26 values for SD1/SD2, got 1"),
    ("1,0,1", "sd1", "got 3"),
    ("  ", "sd1", "the box is empty"),
    ("1,Q" + ",1" * 15, "sd1", "value 2: 'Q' is not a number, R, U, X"),
    (",".join(["3"] * 17), "sd1", "outside the sliders' range"),
])
def test_input_the_box_cannot_take_is_refused_everywhere_with_one_message(editor, tmp_path, text, arch, needle):
    with pytest.raises(BlockWeightError, match=re.escape(needle)) as refused:
        read_box(text, arch, editor.book())
    shown = editor.from_vector(text, arch, False, "part", 1.0, "ALL")
    assert set(shown) == {"vector_note", "status"}  # sliders, tag, preset and the box's text are left alone
    assert "Not applied" in shown["vector_note"] and needle in shown["vector_note"]
    runs = BlockRuns(StudioContext.for_folder(lambda: None, tmp_path), editor)
    with pytest.raises(BlockWeightError) as generate:  # Generate refuses before anything is rendered
        next(runs.generate("part", 1.0, text, "ALL", arch, -1, "a cat", "", 0, 2, 1, 64, 64))
    with pytest.raises(BlockWeightError) as grid:
        next(runs.run_grid("strength: 0.5, 1", "", "part", 1.0, text, "ALL", arch, -1, "a cat", "", 0, 2, 1, 64, 64))
    assert str(generate.value) == str(grid.value) == str(refused.value)


def test_a_preset_name_in_the_box_loads_the_preset(editor):
    shown = editor.from_vector("CHAR", "sd1", False, "part", 0.8, "ALL")
    assert shown["vector"] == CHAR_17 and shown["preset"] == "CHAR" and shown["tag"] == "<lora:part:0.8:CHAR>"
    assert [shown[key]["value"] for key in SLIDER_KEYS[:17]] == [float(v) for v in CHAR_17.split(",")]
    assert "Preset **CHAR** loaded" in shown["status"] and shown["vector_note"] == ""


def test_lbw_letters_mark_their_sliders_and_leave_their_values(editor):
    shown = editor.from_vector(RANDOM_17, "sd1", False, "part", 1.0, "ALL")
    assert shown["vector"] == RANDOM_17 and shown["tag"] == "" and shown["vector_note"] == RANDOM_NOTE
    assert [shown[key]["label"] for key in SLIDER_KEYS[1:5]] == ["IN01 = R", "IN02 = U", "IN04 = X", "IN05 = X-0.5"]
    assert all("value" not in shown[key] for key in SLIDER_KEYS[1:5]) and shown[SLIDER_KEYS[0]]["value"] == 1.0


@pytest.mark.parametrize(("index", "vector"), [
    (0, "0.5,R,U,X,X-0.5" + ",0" * 12),   # another slider: the letters stay
    (1, "1,0.5,U,X,X-0.5" + ",0" * 12),   # R's own slider: R becomes the number
])
def test_a_moved_slider_keeps_the_rest_of_the_box(editor, index, vector):
    values = [0.5 if i == index else 0.0 for i in range(len(SLIDER_KEYS))]
    moved = editor.from_slider(index, RANDOM_17, "sd1", False, "part", 1.0, None, *values)
    assert moved["vector"] == vector and moved[SLIDER_KEYS[index]]["label"] == ("BASE", "IN01")[index]


def test_a_moved_slider_rewrites_a_box_that_does_not_fit(editor):
    values = [1.0] * 17 + [0.0] * 9
    moved = editor.from_slider(2, "1,0,oops", "sd1", False, "part", 1.0, None, *values)
    assert moved["vector"] == ",".join(["1"] * 17) and moved["vector_note"] == ""


def test_switching_format_keeps_the_letters(editor):
    wide = editor.switch_format(True, RANDOM_17, "sd1", None, 1.0, None)
    assert wide["vector"].split(",")[:6] == ["1", "0", "R", "U", "0", "X"]  # IN00 and IN03 join at 0
