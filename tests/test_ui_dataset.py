"""The Dataset tab without a browser: the session's actions on a generated dataset, what the views show, the
page's JSON actions, saving with backups and conflicts, the guards, consolidation, tagging with the tiny
tagger, and the wiring sending only what changed. Runs under A1111's pins too (gradio 3.41.2)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from lib_lora.dataset.backups import BACKUP_DIR_NAME
from lib_lora.dataset.editing import PAGE_SIZE, ConfirmationNeeded, DatasetSession, DatasetUIError
from lib_lora.dataset.tags import AddTags, join_tags, split_tags
from lib_lora.tiny.images import generate_dataset
from lib_lora.ui import StudioContext, build_studio
from lib_lora.ui.dataset import thumbs as dataset_thumbs
from lib_lora.ui.dataset.actions import add_edit, run_action, sort_edit
from lib_lora.ui.dataset.folders import dataset_folder_choices
from lib_lora.ui.dataset.views import PARTS, Choices, chips_html, frequency_html, gallery_html, render, status_html
from lib_lora.ui.dataset.wiring import DatasetWiring

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]
SUBSET = "3_tinychar"


@pytest.fixture()
def roots(tmp_path: Path) -> Path:
    """tmp/datasets (the allowed root) holding char/3_tinychar with 6 generated images and captions."""
    generate_dataset(tmp_path / "datasets" / "char", count=6, seed=1, repeats=3, name="tinychar")
    return tmp_path / "datasets"


@pytest.fixture()
def session(roots: Path) -> DatasetSession:
    session = DatasetSession(lambda: [roots])
    session.load(str(roots / "char"))
    return session


def disk(session: DatasetSession) -> dict[str, bytes]:
    """Every caption file's bytes by item key."""
    assert session.dataset is not None
    return {session.dataset.key(item): item.caption_path.read_bytes() for item in session.dataset.items}


def key(n: int) -> str:
    return f"{SUBSET}/tinychar_{n:03d}.{'jpg' if n % 3 == 2 else 'png'}"


# --- loading ------------------------------------------------------------------------------------------------


def test_load_shows_counts_subsets_and_selects_the_first_image(session: DatasetSession, roots: Path) -> None:
    assert session.keys == [key(n) for n in range(6)]
    assert session.selected == key(0) and session.unsaved_keys() == []
    view = render(session, "")
    assert "| 3\\_tinychar | 3 | 6 | 6 |" in view["summary"]
    assert view["subset"] == Choices((SUBSET,), SUBSET)
    assert view["problems"] == '<p class="lora-studio-problems">No problems found.</p>'
    assert view["gallery"].count('data-lora-studio-op="select"') == 6
    assert 'data-unsaved="0"' not in view["status"] and 'data-lora-studio-unsaved="0"' in view["status"]


def test_the_folder_list_shows_the_dataset_folders_of_each_root_relative_to_it(tmp_path: Path) -> None:
    """Folders holding images, directly or in `<repeats>_<name>` subfolders (tests/test_dataset_folder_paths.py)."""
    first, second, outside = tmp_path / "data", tmp_path / "more", tmp_path / "outside"
    for folder in ("data/charA/10_charA", "data/charA/notes", "data/charA/10_charA/3_deeper", "data/.hidden",
                   "data/.lora_studio_backup", "data/styleB", "outside/5_x", "more/9_y"):
        (tmp_path / folder).mkdir(parents=True)
        if not folder.endswith("notes"):
            Image.new("RGB", (8, 8)).save(tmp_path / folder / "a.png")
    (first / "linked").symlink_to(outside)
    choices = dataset_folder_choices([first, second, tmp_path / "missing"])
    assert choices == ["charA", "charA/10_charA", "charA/10_charA/3_deeper", "styleB", str(second), "9_y"]


@pytest.mark.parametrize("path", ["{tmp}/elsewhere", "{root}/../elsewhere", "{root}/escape", "", "/"])
def test_load_outside_the_allowed_roots_is_refused_and_leaves_nothing_loaded(
        session: DatasetSession, roots: Path, path: str) -> None:
    """Nothing typed changes nothing; a refused folder unloads the one loaded before (no unsaved edits here), so
    nothing acts on it while the page shows another (tests/test_dataset_folder_paths.py)."""
    (roots.parent / "elsewhere").mkdir()
    (roots / "escape").symlink_to(roots.parent / "elsewhere")
    before = dict(session.texts)
    with pytest.raises(DatasetUIError) as raised:
        session.load(path.format(tmp=roots.parent, root=roots))
    assert ("outside the allowed folders" in str(raised.value)) is bool(path)
    assert session.texts == (before if not path else {})
    assert (session.dataset is not None) is (not path)


def test_problems_and_links_leading_outside_are_listed_and_left_out(roots: Path, tmp_path: Path) -> None:
    folder = roots / "char" / SUBSET
    Image.new("RGB", (8, 8)).save(folder / "tinychar_000.jpg")  # same stem as tinychar_000.png
    (folder / "broken.png").write_bytes(b"not an image")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside text")
    Image.new("RGB", (8, 8)).save(folder / "linked.png")
    (folder / "linked.txt").symlink_to(secret)
    session = DatasetSession(lambda: [roots])
    message = session.load(str(roots / "char"))
    assert "5 images, 5 with captions, 1 subfolder; 3 problems" in message
    assert f"{SUBSET}/linked.png" not in session.texts and "outside text" not in session.texts.values()
    problems = render(session, "")["problems"]
    assert "would share the caption tinychar_000.txt" in problems and "broken.png" in problems
    assert "links outside the allowed folders" in problems


# --- filter, batch edits, undo ------------------------------------------------------------------------------


def test_batch_add_changes_only_the_filtered_captions_and_is_one_undo_step(session: DatasetSession) -> None:
    original = dict(session.texts)
    session.set_filter("long hair", "all", "", "any")
    filtered = session.filtered_keys()
    assert filtered == [k for k, text in original.items() if "long hair" in split_tags(text)] and 0 < len(filtered) < 6
    message = session.batch(add_edit("mytrigger", "front", None))
    assert f"{len(filtered)} captions of {len(filtered)} in the filter changed" in message
    for k, text in session.texts.items():
        expected = join_tags(["mytrigger", *split_tags(original[k])]) if k in filtered else original[k]
        assert text == expected
    assert sorted(session.unsaved_keys()) == sorted(filtered)
    assert session.undo().startswith("Undid add 'mytrigger' at front")
    assert session.texts == original and session.unsaved_keys() == []
    session.redo()
    assert session.texts[filtered[0]].startswith("mytrigger, ")


def test_a_batch_that_lets_old_undo_steps_go_says_how_far_undo_reaches(session: DatasetSession) -> None:
    session.history.size_limit = 1  # every step is over the limit: only the newest is kept
    assert "undo now reaches" not in session.batch(add_edit("first", "front", None))
    message = session.batch(add_edit("second", "front", None))
    assert message.endswith("To keep memory bounded, undo now reaches back 1 step.")
    assert session.undo().startswith("Undid add 'second'") and session.undo() == "Nothing to undo."


@pytest.mark.parametrize("include,mode,exclude,expected", [
    ("long hair, smile", "all", "", [0]),
    ("long hair, smile", "any", "", [0, 2, 4, 5]),
    ("", "all", "long hair", [1, 3]),
    ("long hair", "all", "black eyes", [4]),
])
def test_filter_modes(session: DatasetSession, include: str, mode: str, exclude: str, expected: list[int]) -> None:
    session.set_filter(include, mode, exclude, "any")
    assert session.filtered_keys() == [key(n) for n in expected]
    assert render(session, "")["gallery"].count('data-lora-studio-op="select"') == len(expected)


def test_sort_by_frequency_keeps_the_first_tags(session: DatasetSession) -> None:
    edit = sort_edit("frequency", 1.0, False, session.texts)
    session.batch(edit)
    assert split_tags(session.texts[key(0)])[:4] == ["tinychar", "1girl", "solo", "long hair"]


@pytest.mark.parametrize("values,error", [
    (("x", "at position", 0), "at least 1"),
    (("x", "at position", 1.5), "whole number"),
    (("", "back", None), "type the tags"),
    (("x", "sideways", None), "choose front, back"),
])
def test_bad_batch_inputs_are_messages(values: tuple, error: str) -> None:
    with pytest.raises(DatasetUIError, match=error):
        add_edit(*values)


# --- chips: the page's JSON actions -------------------------------------------------------------------------


def action(**fields: object) -> str:
    return json.dumps({**fields, "nonce": "1"})


def test_chip_remove_and_moves(session: DatasetSession) -> None:
    k = key(0)
    tags = split_tags(session.texts[k])
    run_action(session, action(op="remove", key=k, index=1, tag=tags[1]))
    assert split_tags(session.texts[k]) == [tags[0], *tags[2:]]
    run_action(session, action(op="right", key=k, index=0, tag=tags[0]))
    assert split_tags(session.texts[k])[:2] == [tags[2], tags[0]]
    run_action(session, action(op="move", key=k, index=0, tag=tags[2], to=99))
    assert split_tags(session.texts[k])[-1] == tags[2]
    run_action(session, action(op="left", key=k, index=0, tag=tags[0]))  # already first: no change, no step
    assert split_tags(session.texts[k])[0] == tags[0]
    for _ in range(3):
        session.undo()
    assert split_tags(session.texts[k]) == tags and not session.history.can_undo


@pytest.mark.parametrize("raw,error", [
    ("{not json", "unreadable action"),
    (action(op="explode"), "unknown action 'explode'"),
    (action(op="remove", key=key(0), index=1, tag="not this tag"), "changed since the tags were drawn"),
    (action(op="remove", key=key(0), index=40, tag="no such tag"), "changed since the tags were drawn"),
    (action(op="remove", key="nope.png", index=0, tag="x"), "no image 'nope.png'"),
    (action(op="left", key=key(0), index="1", tag="1girl"), "not a number"),
    (action(op="include"), "without its tag"),
])
def test_bad_actions_are_refused_and_change_nothing(session: DatasetSession, raw: str, error: str) -> None:
    before = dict(session.texts)
    with pytest.raises(DatasetUIError, match=error):
        run_action(session, raw)
    assert session.texts == before and not session.history.can_undo


def test_quick_clicks_drawn_before_an_edit_act_on_the_tag_they_show(session: DatasetSession) -> None:
    k = key(0)
    tags = split_tags(session.texts[k])
    run_action(session, action(op="remove", key=k, index=1, tag=tags[1]))
    run_action(session, action(op="remove", key=k, index=2, tag=tags[2]))  # now at index 1: still found
    run_action(session, action(op="right", key=k, index=4, tag=tags[4]))  # now at 2: moves to 3
    assert split_tags(session.texts[k]) == [tags[0], tags[3], tags[5], tags[4], *tags[6:]]
    session.set_caption(k, "a, b, a")
    with pytest.raises(DatasetUIError, match="changed since the tags were drawn"):
        run_action(session, action(op="remove", key=k, index=1, tag="a"))  # twice there now: which one?
    run_action(session, action(op="remove", key=k, index=2, tag="a"))
    assert session.texts[k] == "a, b"


def test_page_actions_select_and_filter(session: DatasetSession) -> None:
    run_action(session, action(op="select", key=key(3)))
    assert session.selected == key(3)
    run_action(session, action(op="include", tag="short hair"))
    run_action(session, action(op="exclude", tag="upper body"))
    assert session.tag_filter.include == ("short hair",) and session.tag_filter.exclude == ("upper body",)
    assert session.filtered_keys() == []
    assert run_action(session, "") is None


def test_chips_and_tables_escape_tags_and_carry_their_index(session: DatasetSession) -> None:
    session.set_caption(key(0), 'a "quoted" tag, <b>bold</b>, x&y')
    chips = chips_html(session)
    assert 'data-index="1" data-tag="&lt;b&gt;bold&lt;/b&gt;"' in chips and "<b>" not in chips
    assert 'data-tag="a &quot;quoted&quot; tag"' in chips
    assert chips.count('data-lora-studio-op="remove"') == 3
    assert '<button type="button" data-lora-studio-op="left" title="Move left" aria-label="Move a &quot;' \
           'quoted&quot; tag left" disabled>' in chips
    table = frequency_html(session)
    assert 'data-lora-studio-op="include" data-tag="x&amp;y"' in table and "<b>bold" not in table


def test_gallery_shows_one_page_of_the_filter(roots: Path) -> None:
    folder = roots / "many"
    folder.mkdir()
    for n in range(PAGE_SIZE + 5):
        Image.new("RGB", (8, 8), (n, 0, 0)).save(folder / f"img{n:03d}.png")
    session = DatasetSession(lambda: [roots])
    session.load(str(folder))
    decoded = dataset_thumbs.cache_info().misses
    assert gallery_html(session).count("<img ") == PAGE_SIZE
    assert dataset_thumbs.cache_info().misses == decoded + PAGE_SIZE  # only the page's images were read
    gallery_html(session)
    assert dataset_thumbs.cache_info().misses == decoded + PAGE_SIZE  # and only once
    session.go_page(1)
    assert gallery_html(session).count("<img ") == 5 and "Page 2 of 2" in render(session, "", ["page"])["page"]
    assert dataset_thumbs.cache_info().misses == decoded + PAGE_SIZE + 5
    session.go_page(5)
    assert session.page == 1
    session.select("img002.png")
    assert session.page == 0


# --- saving, conflicts, revert, guards ----------------------------------------------------------------------


def test_save_writes_the_changed_captions_with_backups(session: DatasetSession) -> None:
    before = disk(session)
    folder = session.require_loaded().root / SUBSET
    untouched_mtime = (folder / "tinychar_001.txt").stat().st_mtime_ns
    session.remove_tag(key(0), 0, "tinychar")
    session.add_tags(key(2), "extra tag, 1girl")
    assert "2 unsaved captions" in status_html(session)
    message = session.save()
    assert message.startswith("Saved 2 captions; the previous versions are in `.lora_studio_backup/`")
    after = disk(session)
    assert after[key(0)] == before[key(0)].replace(b"tinychar, ", b"", 1)
    assert after[key(2)] == before[key(2)].rstrip(b"\n") + b", extra tag\n"
    assert {k: v for k, v in after.items() if k not in (key(0), key(2))} == \
           {k: v for k, v in before.items() if k not in (key(0), key(2))}
    assert (folder / "tinychar_001.txt").stat().st_mtime_ns == untouched_mtime
    backups = sorted((session.require_loaded().root / BACKUP_DIR_NAME / SUBSET).iterdir())
    assert [b.read_bytes() for b in backups] == [before[key(0)], before[key(2)]]
    assert session.unsaved_keys() == [] and session.save() == "Nothing to save."
    session.undo()
    assert session.unsaved_keys() == [key(2)]


@pytest.mark.parametrize("choice", ["overwrite", "reload"])
def test_a_caption_changed_on_disk_is_not_overwritten_silently(session: DatasetSession, choice: str) -> None:
    path = session.item(key(1)).caption_path
    session.batch(AddTags(("mine",), "front"))
    path.write_text("changed elsewhere\n", encoding="utf-8")
    message = session.save()
    assert "Saved 5 captions" in message and "1 caption changed on disk" in message
    assert session.conflicts.keys() == {key(1)} and path.read_text(encoding="utf-8") == "changed elsewhere\n"
    view = render(session, "")
    assert view["conflict_row"].visible and "tinychar_001.png" in view["conflicts"]
    mine = session.texts[key(1)]
    if choice == "overwrite":
        assert session.overwrite_conflicts() == "Saved 1 caption; the previous versions are in " \
                                                "`.lora_studio_backup/` of the dataset folder."
        assert path.read_text(encoding="utf-8") == mine + "\n"
        backups = list((session.require_loaded().root / BACKUP_DIR_NAME / SUBSET).glob("tinychar_001.*"))
        assert [b.read_text(encoding="utf-8") for b in backups] == ["changed elsewhere\n"]
    else:
        assert "Reloaded 1 caption from disk; 1 replaced your edits" in session.reload_conflicts()
        assert session.texts[key(1)] == "changed elsewhere" and session.unsaved_keys() == []
        session.undo()
        assert session.texts[key(1)] == mine and session.save().startswith("Saved 1 caption")
        assert path.read_text(encoding="utf-8") == mine + "\n"
    assert not session.conflicts and not render(session, "")["conflict_row"].visible


@pytest.mark.parametrize("act", ["revert", "load"])
def test_discarding_unsaved_edits_needs_the_action_twice(session: DatasetSession, roots: Path, act: str) -> None:
    other = roots / "other"
    generate_dataset(other, count=2, seed=3, repeats=1, name="other")
    before = disk(session)

    def do() -> str:
        return session.revert() if act == "revert" else session.load(str(other))

    session.remove_tag(key(0), 0, "tinychar")
    with pytest.raises(ConfirmationNeeded, match="1 unsaved caption would be lost"):
        do()
    session.select(key(1))  # any other action cancels the confirmation
    with pytest.raises(ConfirmationNeeded):
        do()
    assert session.unsaved_keys() == [key(0)]
    do()
    assert session.unsaved_keys() == [] and not session.history.can_undo
    assert disk(session) == before if act == "revert" else len(session.texts) == 2
    do()  # nothing unsaved: no question


def test_rename_repeats_needs_saved_captions(session: DatasetSession) -> None:
    session.remove_tag(key(0), 0, "tinychar")
    with pytest.raises(DatasetUIError, match="save or revert the 1 unsaved caption first"):
        session.rename_repeats(SUBSET, 5)
    session.save()
    with pytest.raises(DatasetUIError, match="whole number of at least 1"):
        session.rename_repeats(SUBSET, 2.5)
    assert render(session, "", ["subset", "repeats"]) == {"subset": Choices((SUBSET,), SUBSET), "repeats": 3}
    assert session.rename_repeats(SUBSET, 5.0) == "Renamed `3_tinychar` to repeats 5."
    assert session.keys[0] == "5_tinychar/tinychar_000.png" and session.selected == "5_tinychar/tinychar_000.png"
    assert render(session, "", ["subset", "repeats"]) == {"subset": Choices(("5_tinychar",), "5_tinychar"),
                                                          "repeats": 5}


def test_consolidation_flow(session: DatasetSession) -> None:
    assert session.propose("tinychar", 0.9) == "No physical-feature tag is in that share of the filtered captions."
    assert session.propose("tinychar", 0.3).endswith("feature tags proposed: untick any to keep, then apply.")
    proposals = list(session.proposals.values())
    assert {p.tag for p in proposals} >= {"long hair", "black eyes"}
    labels = render(session, "")["proposals"].choices
    kept = [label for label in labels if not label.startswith("black eyes")]
    original = dict(session.texts)
    session.consolidate("tinychar", kept)
    for k, text in session.texts.items():
        tags = split_tags(text)
        assert tags[0] == "tinychar" and "black eyes" in tags or "black eyes" not in split_tags(original[k])
        assert not ({p.tag for p in proposals if p.tag != "black eyes"} & set(tags))
    session.undo()
    assert session.texts == original
    with pytest.raises(DatasetUIError, match="press Propose"):
        session.consolidate("tinychar", [])


# --- tagging ------------------------------------------------------------------------------------------------


def test_tagging_writes_captions_and_is_one_undo_step(tmp_path: Path, roots: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from lib_lora.dataset.images import open_image
    from lib_lora.dataset.tagging.models import resolve_model
    from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions
    from lib_lora.tiny.tagger import write_tiny_wd14_tagger
    from lib_lora.ui.dataset.tagging import (
        finish_tagging,
        start_tagging,
        tagger_choices,
        tagger_options,
        tagger_vocabulary,
    )

    context = StudioContext.for_folder(lambda: None, tmp_path)
    write_tiny_wd14_tagger(context.tagger_dir() / "tiny", input_size=64)
    assert tagger_choices(context.tagger_dir())[0] == "tiny"
    assert "long hair" in tagger_vocabulary("tiny", context.tagger_dir(), True)
    session = DatasetSession(context.data_roots)
    session.load(str(roots / "char"))
    before = disk(session)
    options = tagger_options(session, {"existing": "overwrite", "max_tags": 5.0, "trigger": "mytrigger"})
    session.remove_tag(key(0), 0, "tinychar")
    with pytest.raises(DatasetUIError, match="save or revert the 1 unsaved caption"):
        start_tagging(session, context, "tiny", options)
    session.undo()
    with pytest.raises(DatasetUIError, match="chosen by name from the list, got '../tiny'"):
        start_tagging(session, context, "../tiny", options)
    with pytest.raises(DatasetUIError, match="unknown tagger model 'tinier'"):
        start_tagging(session, context, "tinier", options)
    job = start_tagging(session, context, "tiny", options)
    snapshot = job.wait(60)
    assert snapshot.state == "done", snapshot.error
    tagger = Tagger.load(resolve_model(context.tagger_dir() / "tiny"))
    expected = {k: join_tags(["mytrigger", *tags]) + "\n" for k, tags in zip(session.keys, tagger.tag_images(
        [open_image(session.item(k).image) for k in session.keys], TaggerOptions(max_tags=5)))}
    assert {k: v.decode() for k, v in disk(session).items()} == expected
    assert session.texts != {k: v.rstrip("\n") for k, v in expected.items()}  # not adopted before finishing
    message = finish_tagging(session, snapshot)
    assert message.startswith("Tagging finished: tagged 6, skipped 0") and "6 caption(s) changed" in message
    assert session.texts == {k: v.rstrip("\n") for k, v in expected.items()} and session.unsaved_keys() == []
    assert session.history.undo_description == "tag with tiny"
    session.undo()
    session.save()
    assert disk(session) == before


def test_cancel_stops_tagging_and_edits_wait_for_it(tmp_path: Path, roots: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from lib_lora.tiny.tagger import write_tiny_wd14_tagger
    from lib_lora.ui.dataset import tagging as dataset_tagging

    context = StudioContext.for_folder(lambda: None, tmp_path)
    write_tiny_wd14_tagger(context.tagger_dir() / "tiny", input_size=64)
    session = DatasetSession(context.data_roots)
    session.load(str(roots / "char"))
    before = disk(session)
    options = dataset_tagging.tagger_options(session, {"existing": "overwrite"})
    assert dataset_tagging.cancel_tagging(session) == "No tagging is running."
    with dataset_tagging._loaded_lock:  # the job waits for its model until we have cancelled it
        job = dataset_tagging.start_tagging(session, context, "tiny", options)
        with pytest.raises(DatasetUIError, match="the tagger is writing"):
            session.remove_tag(key(0), 0, "tinychar")
        with pytest.raises(DatasetUIError, match="the tagger is writing"):
            session.save()
        assert dataset_tagging.cancel_tagging(session).startswith("Cancelling")
    snapshot = job.wait(60)
    assert snapshot.state == "cancelled"
    message = dataset_tagging.finish_tagging(session, snapshot)
    assert message.startswith("Tagging cancelled after 0 of 6 images; the 0 caption(s) written so far are kept")
    assert disk(session) == before and not session.tagging
    session.remove_tag(key(0), 0, "tinychar")


# --- wiring -------------------------------------------------------------------------------------------------


def test_the_wiring_sends_only_the_parts_that_changed(session: DatasetSession) -> None:
    context = StudioContext.for_folder(lambda: None, session.require_loaded().root)
    wiring = DatasetWiring(context, {name: None for name in PARTS}, None)  # type: ignore[arg-type]
    noop = gr.update()
    first = dict(zip(PARTS, wiring.updates(session, "hello")[1:]))
    assert all(value != noop for value in first.values())
    assert first["image"] == gr.update(choices=session.keys, value=key(0))
    again = dict(zip(PARTS, wiring.updates(session, "hello")[1:]))
    assert all(value == noop for value in again.values())
    tags = session.tags_of(key(0))
    outputs = wiring.run(session, run_action, ["action"], [action(op="remove", key=key(0), index=0, tag=tags[0])])
    changed = {name for name, value in zip(PARTS, outputs[1:]) if value != noop}
    assert changed == {"message", "status", "gallery", "preview", "chips", "caption", "frequency"}
    selected = dict(zip(PARTS, wiring.run(session, DatasetSession.select, ["image"], [key(1)])[1:]))
    assert selected["message"] == noop and selected["chips"] != noop  # navigating keeps the last message
    assert selected["image"] == gr.update(value=key(1))  # the same choices are not sent again
    wiring.run(session, DatasetSession.select, ["image"], [key(0)])
    typed = wiring.run(session, DatasetSession.add_tags, ["caption_key", "add_tag"], [key(0), "new one"])
    assert dict(zip(PARTS, typed[1:]))["add_tag"] == ""  # the typed text is cleared once used
    failed = wiring.run(session, DatasetSession.load, ["path"], ["/"])
    assert dict(zip(PARTS, failed[1:]))["message"].startswith("**Error:** /: outside the allowed folders")
    proposed = wiring.run(session, DatasetSession.propose, ["trigger", "min_share"], ["tinychar", 0.3])
    ticks = dict(zip(PARTS, proposed[1:]))["proposals"]
    assert ticks["value"] == ticks["choices"] and isinstance(ticks["value"], list) and ticks["value"]  # all ticked
    asked = wiring.run(session, DatasetSession.revert, [], [])
    assert dict(zip(PARTS, asked[1:]))["message"].startswith("⚠️ 1 unsaved caption would be lost. Press **Revert**")


def test_the_page_script_finds_every_element_it_uses(tmp_path: Path) -> None:
    script = (ROOT / "javascript" / "lora_studio_dataset.js").read_text(encoding="utf-8")
    ids = dict(re.findall(r'^\s+(\w+): "(lora_studio_\w+)",$', script, re.MULTILINE))
    assert set(ids) == {"tab", "action", "unsaved", "save", "undo", "redo", "tagList"}
    context = StudioContext.for_folder(lambda: None, tmp_path, standalone=True)
    blocks = build_studio(context)
    built = {c.get("props", {}).get("elem_id") for c in blocks.config["components"]}
    assert {value for name, value in ids.items() if name != "tagList"} <= built
    from lib_lora.ui.dataset.views import TAG_LIST_ID

    assert ids["tagList"] == TAG_LIST_ID
    assert not os.listdir(tmp_path)  # building read no folder
