"""The Block Weight tab on the installed gradio (3.41.2 in the A1111 env, 4.40 standalone): it builds with prefixed,
unique elem_ids; its handlers, called directly: preset -> sliders -> vector round trips, user presets saved and
deleted on disk (other lines kept, atomic), the LoRA's metadata and family warning, errors as status messages,
jobs polled and cancelled. The last tests render through the tiny SD1 model (standalone env only)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.blocks.presets import FORMATS, PresetBook
from lib_lora.errors import BlockWeightError, LoraStudioError
from lib_lora.networks.files import save_lora_file
from lib_lora.networks.metadata import LoraMetadata
from lib_lora.ui import StudioContext
from lib_lora.ui.blocks.editor import MAX_BLOCKS, SLIDER_KEYS, BlockEditor, copy_tag
from lib_lora.ui.blocks.picker import LoraPicker, describe_lora, filter_names
from lib_lora.ui.blocks.runs import BlockRuns, BlocksUIError, JobSlot, Settings, follow
from lib_lora.ui.blocks.tab import build_blocks_tab
from lib_lora.ui.compat import event_functions
from lib_lora.ui.wiring import bound

pytestmark = pytest.mark.hostcompat

CHAR_17 = [float(v) for v in "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0".split(",")]


def value(update: Any) -> Any:
    """The value an update sets (gr.update is a dict in both gradio versions)."""
    return update["value"] if isinstance(update, dict) else update


def slider_values(updates: dict[str, Any]) -> list[float]:
    return [value(updates[key]) for key in SLIDER_KEYS if updates[key].get("visible", True)]


def visible_labels(updates: dict[str, Any]) -> list[str]:
    return [updates[key]["label"] for key in SLIDER_KEYS if updates[key]["visible"]]


@pytest.fixture()
def editor(tmp_path: Path) -> BlockEditor:
    return BlockEditor(lambda: tmp_path / "lora_studio" / "presets.txt")


# --- building ------------------------------------------------------------------------------------------------


def test_tab_builds_with_prefixed_unique_ids_and_reads_nothing():
    def untouched() -> Any:
        raise AssertionError("read while building")

    context = StudioContext(host_provider=untouched, lora_dirs=untouched, trained_dir=untouched, data_roots=untouched,
                            tagger_dir=untouched, work_dir=untouched)
    with gr.Blocks() as blocks, gr.Tabs():
        build_blocks_tab(context)
    ids = [c["props"].get("elem_id") for c in blocks.config["components"] if c.get("props", {}).get("elem_id")]
    assert ids and all(elem_id.startswith("lora_studio_blocks_") for elem_id in ids), ids
    assert len(ids) == len(set(ids))
    assert {f"lora_studio_blocks_{key}" for key in SLIDER_KEYS} <= set(ids) and len(SLIDER_KEYS) == MAX_BLOCKS == 26
    for needed in ("status", "lora", "preset", "vector", "vector_note", "tag", "generate", "image_cancel",
                   "image_progress", "grid_run", "grid_cancel", "grid_image", "analyzer_run", "analyzer_cancel",
                   "analyzer_table", "steps", "width", "height", "random_seed"):
        assert f"lora_studio_blocks_{needed}" in ids
    names = {fn.__name__ for fn in event_functions(blocks)}
    assert {"block_weight_refresh", "block_weight_load_preset", "block_weight_run_grid", "block_weight_run_analyzer",
            "block_weight_cancel", "block_weight_generate", "block_weight_from_slider_25"} <= names


# --- the editor: presets, sliders, vector, tag -------------------------------------------------------------------


def test_preset_sliders_vector_round_trip(editor):
    loaded = editor.load_preset("CHAR", "sd1", False, "part", 0.8)
    assert slider_values(loaded) == CHAR_17 and loaded["vector"] == "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0"
    assert visible_labels(loaded) == list(FORMATS["sd1"][17]) and loaded["full"] is False
    assert loaded["tag"] == "<lora:part:0.8:CHAR>"

    padded = CHAR_17 + [0.0] * (MAX_BLOCKS - 17)  # the page sends every slider, hidden ones too
    assert editor.from_slider(1, loaded["vector"], "sd1", False, "part", 0.8, "CHAR", *padded) == {}  # not moved
    padded[1] = 0.5
    moved = editor.from_slider(1, loaded["vector"], "sd1", False, "part", 0.8, "CHAR", *padded)
    assert moved["vector"] == "1,0.5,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0"
    assert moved["tag"] == f"<lora:part:0.8:{moved['vector']}>"

    back = editor.from_vector(moved["vector"], "sd1", False, "part", 0.8, "CHAR")
    assert slider_values(back) == padded[:17] and back["tag"] == moved["tag"]


def test_a_release_that_moved_nothing_keeps_the_preset_that_arrives(editor):
    """Picking a preset in gradio 4 ends with a release on the slider under the list, carrying the page from
    before the preset arrived: the old box, the old sliders and the new preset's name. It must write nothing (it
    used to write the old weights back, tagged as a literal vector)."""
    ones = [1.0] * 17 + [0.0] * (MAX_BLOCKS - 17)
    stale = editor.from_slider(4, ",".join(["1"] * 17), "sd1", False, "part", 1.0, "NCNF", *ones)
    assert stale == {}
    loaded = editor.load_preset("NCNF", "sd1", False, "part", 1.0)
    assert loaded["tag"] == "<lora:part:1:NCNF>"


@given(st.lists(st.sampled_from([-1.0, -0.25, 0.0, 0.05, 0.5, 1.0, 1.5, 2.0]), min_size=17, max_size=17))
@settings(max_examples=30, deadline=None)
def test_vector_text_survives_sliders(values):
    editor = BlockEditor(lambda: Path("/nonexistent/presets.txt"))
    text = ",".join(f"{v:g}" for v in values)
    shown = editor.from_vector(text, "sd1", False, "x", 1.0, None)
    again = editor.from_slider(0, "", "sd1", False, "x", 1.0, None, *slider_values(shown), *[0.0] * 9)
    assert shown["vector"] == again["vector"] == text


@pytest.mark.parametrize(("preset", "arch", "length", "full"), [
    ("CHAR", "sdxl", 12, False),
    ("FACE", "sd1", 26, True),  # a 26-value preset switches the sliders to every block
    ("NONE", "sd2", 17, False),
])
def test_presets_lay_out_the_family_blocks(editor, preset, arch, length, full):
    loaded = editor.load_preset(preset, arch, False, None, 1.0)
    family = "sdxl" if arch == "sdxl" else "sd1"
    assert visible_labels(loaded) == list(FORMATS[family][length]) and loaded["full"] is full
    assert loaded["tag"] == ""  # no LoRA picked


@pytest.mark.parametrize(("text", "arch", "needle"), [
    ("1,0,1", "sd1", "expected 17 or 26 values for SD1/SD2, got 3"),
    ("1,1,1,1,1,1,1,1,1,1,1,1", "sd1", "got 12"),
    (",".join(["1"] * 17), "sdxl", "expected 12 or 20 values for SDXL"),
    ("1,x" + ",1" * 15, "sd1", "'x' is not a number"),
    (",".join(["3"] * 17), "sd1", "outside the sliders' range"),
])
def test_bad_vectors_are_errors(editor, text, arch, needle):
    shown = editor.from_vector(text, arch, False, None, 1.0, None)
    assert set(shown) == {"vector_note", "status"}  # sliders, tag and the box's text stay as they are
    assert needle in shown["vector_note"] and needle in shown["status"]


def test_a_typed_26_value_vector_switches_format(editor):
    shown = editor.from_vector(",".join(["1"] * 26), "sd1", False, None, 1.0, None)
    assert shown["full"] is True and len(slider_values(shown)) == 26


def test_switching_format_keeps_the_shared_blocks(editor):
    wide = editor.switch_format(True, "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0", "sd1", None, 1.0, None)
    assert dict(zip(visible_labels(wide), slider_values(wide)))["IN04"] == 1.0
    assert dict(zip(visible_labels(wide), slider_values(wide)))["IN00"] == 0.0
    ones = ",".join(["1"] * 26)
    narrow = editor.switch_format(False, ones, "sd1", None, 1.0, None)
    assert slider_values(narrow) == [1.0] * 17 and "IN00, IN03, IN06" in narrow["status"]


def test_copy_tag_is_a_tag_the_parser_reads():
    assert copy_tag("m4_carbine", 0.8, "NCNF") == "<lora:m4_carbine:0.8:NCNF>"
    assert copy_tag(None, 1, "ALL") == ""
    with pytest.raises(LoraStudioError):
        copy_tag("../escape", 1, "ALL")


# --- user presets on disk --------------------------------------------------------------------------------------

OTHER_LINES = "# my presets\nOTHER:0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1,0\nMINE:1,1,1,1,1,1,1,1,1,1,1,0\n"


def test_save_and_delete_keep_other_lines(editor, tmp_path):
    path = tmp_path / "lora_studio" / "presets.txt"
    path.parent.mkdir()
    path.write_text(OTHER_LINES, encoding="utf-8")
    vector = "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0.5"

    saved = editor.save_preset("MINE", False, "sd1", vector)  # MINE has an SDXL line only: a new SD1 line
    assert path.read_text() == OTHER_LINES + f"MINE:{vector}\n"
    assert "MINE" in saved["preset"]["choices"] and value(saved["preset"]) == "MINE"
    assert "saved" in saved["status"]
    assert editor.book().get("MINE", "sd1")["OUT11"] == 0.5 and editor.book().get("MINE", "sdxl")["OUT05"] == 0.0

    with pytest.raises(BlockWeightError, match="already exists.*tick Overwrite"):
        editor.save_preset("MINE", False, "sd1", "0" + ",1" * 16)
    replaced = editor.save_preset("MINE", True, "sd1", "0" + ",1" * 16)
    assert "replaced" in replaced["status"]
    assert path.read_text() == OTHER_LINES + "MINE:0" + ",1" * 16 + "\n"

    deleted = editor.delete_preset("MINE", "sd1")
    assert path.read_text() == OTHER_LINES and "deleted" in deleted["status"]
    assert "MINE" not in editor.preset_choices("sd1") and "MINE" in editor.preset_choices("sdxl")
    assert sorted(p.name for p in path.parent.iterdir()) == ["presets.txt"]  # no temp file left behind


@pytest.mark.parametrize(("name", "overwrite", "needle"), [
    ("CHAR", False, "'CHAR' already exists \\(LoRA Studio"),
    ("a b", True, "invalid preset name"),
    ("x:y", True, "invalid preset name"),
    ("", True, "type a name"),
])
def test_bad_saves_change_nothing(editor, tmp_path, name, overwrite, needle):
    with pytest.raises(BlockWeightError, match=needle):
        editor.save_preset(name, overwrite, "sd1", ",".join(["1"] * 17))
    assert not (tmp_path / "lora_studio" / "presets.txt").exists()


def test_overriding_a_builtin_and_deleting_it_brings_the_builtin_back(editor):
    editor.save_preset("CHAR", True, "sd1", ",".join(["1"] * 17))
    assert editor.book().get("CHAR", "sd1")["IN01"] == 1.0
    deleted = editor.delete_preset("CHAR", "sd1")
    assert "built-in one applies again" in deleted["status"]
    assert editor.book().get("CHAR", "sd1") == PresetBook.builtin().get("CHAR", "sd1")
    with pytest.raises(BlockWeightError, match="built-in presets cannot be deleted"):
        editor.delete_preset("ALL", "sd1")


def test_an_unreadable_preset_file_is_never_rewritten(editor, tmp_path):
    path = tmp_path / "lora_studio" / "presets.txt"
    path.parent.mkdir()
    path.write_text("BROKEN:1,2\n", encoding="utf-8")
    with pytest.raises(BlockWeightError, match="line 1"):
        editor.save_preset("NEW", True, "sd1", ",".join(["1"] * 17))
    assert path.read_text() == "BROKEN:1,2\n"


# --- the picker: names, metadata, family warning -----------------------------------------------------------


@pytest.mark.parametrize(("search", "found"), [
    ("", ["Alpha_Style", "beta", "m4_carbine"]),
    ("STYLE", ["Alpha_Style"]),
    ("m4 carb", ["m4_carbine"]),
    ("zzz", []),
])
def test_filter_names(search, found):
    assert filter_names(["Alpha_Style", "beta", "m4_carbine"], search) == found


def sdxl_lora(path: Path) -> Path:
    """A small SDXL-layout LoRA file (two modules) with trained-LoRA metadata."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for key, (out_dim, in_dim) in {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (8, 8),
                                   "lora_te1_text_model_encoder_layers_0_mlp_fc1": (16, 8)}.items():
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, in_dim, generator=generator)
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_dim, 4, generator=generator)
        tensors[f"{key}.alpha"] = torch.tensor(2.0)
    metadata = LoraMetadata(arch="sdxl", network_dim=4, network_alpha=2, steps=1200, epoch=3,
                            tag_frequency={"5_carbine": {"m4 carbine": 20, "gun": 12, "outdoors": 3}})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora_file(path, tensors, metadata.to_metadata())
    return path


def test_lora_description_and_family_warning(tmp_path):
    path = sdxl_lora(tmp_path / "m4_carbine.safetensors")
    on_sd1 = describe_lora(path, "sd1")
    assert on_sd1.startswith("⚠️ **This LoRA is for SDXL, the loaded model is SD1**")
    for needle in ("**type:** lora", "**dim/alpha:** 4/2", "**family:** sdxl (from metadata)", "**steps:** 1200",
                   "**epoch:** 3", "**hash:** `", "**blocks with modules:** BASE, IN04", "m4 carbine (20), gun (12)"):
        assert needle in on_sd1
    assert "⚠️" not in describe_lora(path, "sdxl") and "⚠️" not in describe_lora(path, None)


def test_picker_without_a_model(tmp_path):
    loras = tmp_path / "Lora"
    sdxl_lora(loras / "m4_carbine.safetensors")
    context = StudioContext.for_folder(lambda: None, tmp_path)
    picker = LoraPicker(context, BlockEditor(lambda: context.presets_file))
    shown = picker.refresh("", None, "ALL", False, "", 1.0, "sd1")
    assert shown["lora"]["choices"] == ["m4_carbine"] and shown["arch"] == "sd1"
    assert "No model is loaded" in shown["status"] and len(slider_values(shown)) == 17
    chosen = picker.choose("m4_carbine", 1.0, shown["vector"], "ALL", "sd1")
    assert "family:** sdxl" in chosen["lora_info"] and chosen["tag"] == "<lora:m4_carbine:1:ALL>"
    assert picker.search("zzz", "m4_carbine")["lora"]["choices"] == ["m4_carbine"]  # the chosen one stays


# --- errors at the edge, settings, jobs --------------------------------------------------------------------------


def test_bind_turns_errors_into_the_status_line():
    with gr.Blocks():
        status, other = gr.Markdown(), gr.Textbox()
    outputs = {"status": status, "other": other}

    def fails(*_: Any) -> dict[str, Any]:
        raise BlockWeightError("bad <vector>")

    def streams(*_: Any):
        yield {"other": "first"}
        raise BlocksUIError("stopped")

    def buggy(*_: Any) -> dict[str, Any]:
        return {"nonexistent": 1}

    assert bound(lambda: {"other": "x"}, outputs, tab="Block Weight")() == {other: "x"}
    assert bound(fails, outputs, tab="Block Weight")() == {status: r"**Error:** bad \<vector\>"}
    assert list(bound(streams, outputs, tab="Block Weight")()) == [{other: "first"}, {status: "**Error:** stopped"}]
    assert bound(buggy, outputs, tab="Block Weight")()[status].startswith("**Unexpected error**")
    nothing = bound(lambda: {}, outputs, tab="Block Weight")()  # gradio refuses an empty dict of updates
    assert list(nothing) == [status] and nothing[status] == gr.update()


@pytest.mark.parametrize(("inputs", "needle"), [
    (("", "", 0, 0, 7, 512, 512), "steps must be a whole number of at least 1"),
    (("", "", -1, 20, 7, 512, 512), "seed must be"),
    (("", "", 0, 20, 7, 500, 512), "multiple of 8"),
    (("", "", 0, 20, None, 512, 512), "CFG scale"),
    (("", "", 0, 2.5, 7, 512, 512), "steps must be a whole number"),
    (("", "", None, 20, 7, 512, 512), "seed is empty"),
])
def test_settings_are_checked(inputs, needle):
    with pytest.raises(BlocksUIError, match=needle):
        Settings.read(*inputs)


def test_generate_without_a_model_is_a_message(tmp_path):
    context = StudioContext.for_folder(lambda: None, tmp_path)
    runs = BlockRuns(context, BlockEditor(lambda: context.presets_file))
    with pytest.raises(BlocksUIError, match="No model is loaded"):
        list(runs.generate(None, 1.0, ",".join(["1"] * 17), "ALL", "sd1", -1, "a cat", "", 0, 2, 7, 64, 64))


def test_job_slot_runs_one_job_and_cancels_it():
    slot = JobSlot("an XY grid", button="Run grid")
    release = threading.Event()

    def work(control: Any) -> str:
        for step in range(100):
            control.check()
            control.progress(step, 100, "working")
            release.wait(0.01)
        return "finished"

    job = slot.start(work)
    with pytest.raises(BlocksUIError, match="still running"):
        slot.start(work)
    assert "Cancelling" in slot.cancel()["status"]
    snapshots = list(follow(job, poll_seconds=0.01))
    assert snapshots[-1].state == "cancelled" and all(s.active for s in snapshots[:-1])
    assert "no XY grid is running" in slot.cancel()["status"]
    done = slot.start(lambda control: "ok")
    assert list(follow(done, poll_seconds=0.01))[-1].result == "ok"


# --- rendering through the tiny SD1 model (standalone env) -------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    pytest.importorskip("diffusers")
    from blocks_testing import tiny_workspace

    context, editor = tiny_workspace(tmp_path_factory.mktemp("workspace"))
    return context, LoraPicker(context, editor), BlockRuns(context, editor, poll_seconds=0.05)


FAST_SETTINGS = ("a cat", "", 0, 2, 1.0, 64, 64)


def test_generate_and_grid_through_the_tab(workspace):
    context, picker, runs = workspace
    shown = picker.refresh("", None, "CHAR", False, "", 1.0, "sd1")
    assert shown["lora"]["choices"] == ["part"] and "1 LoRA(s) found; SD1/SD2 blocks" in shown["status"]

    generated = list(runs.generate("part", 0.8, shown["vector"], "CHAR", "sd1", -1, *FAST_SETTINGS))[-1]
    assert generated["image"].size == (64, 64) and "<lora:part:0.8:CHAR>" in generated["status"]
    assert 'Lora block weights: "part: te=0.8, unet=0.8, blocks=CHAR"' in generated["infotext"]
    assert "done · 1/1 (100%)" in generated["image_progress"]

    with context.gpu.hold("training", stop="press Stop in the Train tab"):
        refused = list(runs.generate("part", 0.8, shown["vector"], "CHAR", "sd1", -1, *FAST_SETTINGS))[-1]
    assert "busy with training; press Stop in the Train tab" in refused["status"]

    updates = list(runs.run_grid("preset: NONE, CHAR", "", "part", 1.0, shown["vector"], "CHAR", "sd1", -1,
                                 *FAST_SETTINGS))
    final = updates[-1]
    assert final["grid_image"].width > 2 * 64 and Path(final["grid_path"]).is_file()
    assert Path(final["grid_path"]).parent == context.work_dir() / "grids"
    assert "saved" in final["status"] and "done · 2/2" in final["grid_progress"]


def test_a_refresh_on_the_same_model_leaves_what_the_user_picked_meanwhile(workspace):
    """The tab's refresh runs while the user may already pick a LoRA and a preset: it must not write back the values
    it read at its start (real hosts showed the preset's tag reset to all ones)."""
    _, picker, _ = workspace
    ones = ",".join(["1"] * 17)
    again = picker.refresh("", "part", "ALL", False, ones, 1.0, "sd1")
    assert not {"vector", "tag", "w00", "lora_info"} & set(again), sorted(again)
    assert "value" not in again["lora"] and "value" not in again["preset"]
    relaid = picker.refresh("", "part", "ALL", False, ones, 1.0, "sdxl")  # the page shows another family: re-lay
    assert "vector" in relaid and relaid["arch"] == "sd1"


def test_grid_errors_come_before_any_job(workspace):
    _, picker, runs = workspace
    with pytest.raises(LoraStudioError, match="did you mean CHAR"):
        list(runs.run_grid("preset: CHRA", "", "part", 1.0, ",".join(["1"] * 17), None, "sd1", -1, *FAST_SETTINGS))
    assert runs.grid_slot._job is None or not runs.grid_slot._job.snapshot().active
    with pytest.raises(BlocksUIError, match="SD1 now; press Refresh"):
        list(runs.generate("part", 1.0, ",".join(["1"] * 12), None, "sdxl", -1, *FAST_SETTINGS))


def test_analyzer_needs_a_lora(workspace):
    _, _, runs = workspace
    with pytest.raises(BlocksUIError, match="pick a LoRA"):
        list(runs.run_analyzer(None, 1.0, 16, "sd1", False, *FAST_SETTINGS))
