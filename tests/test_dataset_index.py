"""The tag index behind the Dataset tab at scale: kept equal to a recount through every edit, filters and batch
edits answered from it as a pass over all captions answers them, the fast caption split, the quick image check
of a scan, and saving many captions in threads (cancel and crash leave every file old or new)."""

from __future__ import annotations

import errno
import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lib_lora.dataset import caption_batch
from lib_lora.dataset import swap as swap_module
from lib_lora.dataset.backups import BACKUP_DIR_NAME
from lib_lora.dataset.caption_format import read_caption
from lib_lora.dataset.captions import CaptionChange, save_captions
from lib_lora.dataset.consolidate import Consolidate
from lib_lora.dataset.folder import SIGNATURE, ProblemKind, scan_dataset
from lib_lora.dataset.tag_index import IndexedCaptions
from lib_lora.dataset.tags import (
    _SPLIT,
    AddTags,
    Deduplicate,
    MoveToFront,
    RemoveTags,
    RenameTag,
    ReplaceText,
    SortTags,
    TagFilter,
    apply_edit,
    normalise_tag,
    split_tags,
    tag_frequency,
)

pytestmark = pytest.mark.hostcompat

VOCABULARY = ["a", "b", "c", "long hair", "smile", "x y", "^_^", "tag(1)"]


def random_text(rng: random.Random) -> str:
    tags = rng.choices(VOCABULARY, k=rng.randint(0, 6))
    separators = [", ", ",", " , ", "\n", ",  ", ",\t"]
    text = "".join(f"{tag}{rng.choice(separators)}" for tag in tags)
    return text.rstrip(", ") if rng.random() < 0.7 else f"  {text}"


def recount(texts: dict[str, str]) -> list[tuple[str, int]]:
    return tag_frequency(texts)


def test_the_index_stays_equal_to_a_recount_through_random_edits() -> None:
    rng = random.Random(5)
    plain = {f"k{n}": random_text(rng) for n in range(60)}
    indexed = IndexedCaptions(plain)
    filters = [TagFilter(("a",)), TagFilter(("a", "b"), include_mode="any"), TagFilter((), ("smile",)),
               TagFilter(("long hair",), ("a", "c"), exclude_mode="all"), TagFilter(("nowhere",))]
    for step in range(300):
        key = rng.choice(list(plain))
        if step % 7 == 0:
            indexed.index.holders("c")  # a tag's positions, once gathered, are kept up to date from then on
        text = random_text(rng)
        plain[key] = text
        indexed[key] = text
        assert indexed.index.counts() == recount(plain)
        assert indexed.tags(key) == tuple(split_tags(text))
    for tag_filter in filters:
        chosen = indexed.index.select(tag_filter, indexed.positions)
        keys = list(indexed) if chosen is None else indexed.keys_at(chosen)
        assert keys == [key for key, text in plain.items() if tag_filter.matches(split_tags(text))]
    some = list(plain)[::3]
    assert indexed.index.counts(indexed.position(key) for key in some) == recount({k: plain[k] for k in some})
    assert indexed == plain and dict(indexed) == plain


EDITS = [
    RemoveTags(("a", "smile")), RenameTag("b", "a"), MoveToFront(("x y",)), Deduplicate(), AddTags(("new",), "front"),
    ReplaceText("a", "A"), ReplaceText(r"^(\w)$", r"\1\1", regex=True), ReplaceText("HAIR", "fur", ignore_case=True),
    ReplaceText("a, b", "ab", scope="caption"), SortTags(), Consolidate("trigger", ("long hair",)),
]


@pytest.mark.parametrize("edit", EDITS, ids=lambda edit: edit.description)
def test_an_edit_through_the_index_changes_what_a_pass_over_all_captions_changes(edit) -> None:  # noqa: ANN001
    rng = random.Random(11)
    plain = {f"k{n}": random_text(rng) for n in range(200)}
    indexed = IndexedCaptions(plain)
    expected = apply_edit(plain, edit)
    candidates = indexed.index.candidates(edit)
    keys = list(plain) if candidates is None else indexed.keys_at(candidates)
    changed = {}
    for key in keys:
        tags = list(indexed.tags(key))
        new = edit.apply(tags)
        if new != tags:
            changed[key] = ", ".join(new)
    assert changed == expected


def test_the_fast_split_gives_what_the_plain_split_gives() -> None:
    def plain_split(text: str) -> list[str]:
        return [tag for tag in (normalise_tag(part) for part in _SPLIT.split(text)) if tag]

    pieces = [" ", "  ", "\t", "\n", "\r", ",", ", ", "a", "b c", "\u3000", "\xa0", "\x85", "\u2028", "é", ", ,", " ,"]
    rng = random.Random(3)
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        assert split_tags(text) == plain_split(text), repr(text)


def test_a_quick_scan_finds_what_is_not_an_image_without_decoding(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.webp").write_bytes(b"")
    huge = bytearray((tmp_path / "good.png").read_bytes())
    huge[16:24] = (100_000).to_bytes(4, "big") * 2  # the header says 100,000 x 100,000
    (tmp_path / "huge.png").write_bytes(bytes(huge))
    (tmp_path / "good.txt").write_text("a, b\n")
    dataset = scan_dataset(tmp_path, check_images=SIGNATURE)
    assert [item.image.name for item in dataset.items] == ["good.png", "photo.jpg"]
    reasons = {problem.paths[0].name: problem.message for problem in dataset.problems}
    assert set(reasons) == {"text.png", "empty.webp", "huge.png"}
    assert all(problem.kind == ProblemKind.UNREADABLE_IMAGE for problem in dataset.problems)
    assert "empty file" in reasons["empty.webp"] and "more than the limit" in reasons["huge.png"]
    assert dataset.items[0].text == "a, b" and dataset.linked == frozenset()


# --- saving many captions in threads ----------------------------------------------------------------------------


def many_files(folder: Path, count: int) -> list[CaptionChange]:
    folder.mkdir(parents=True, exist_ok=True)
    changes = []
    for n in range(count):
        path = folder / f"{n}.txt"
        path.write_text(f"old {n}\n")
        changes.append(CaptionChange(path, f"new {n}", read_caption(path)))
    return changes


def test_many_captions_are_saved_in_threads_with_one_backup_each(tmp_path: Path) -> None:
    count = caption_batch.PARALLEL_FROM * 3
    changes = many_files(tmp_path / "1_a", count) + many_files(tmp_path / "2_b", count)
    seen = []
    result = save_captions(changes, root=tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert result.ok and [r.path for r in result.saved] == [c.path for c in changes]
    assert all(c.path.read_text() == f"new {c.path.stem}\n" for c in changes)
    backups = sorted((tmp_path / BACKUP_DIR_NAME).rglob("*.txt"))
    assert len(backups) == 2 * count and {p.read_text() for p in backups} == {f"old {n}\n" for n in range(count)}
    assert len({p.name.split(".")[1] for p in backups}) == 1  # one batch, one timestamp
    assert seen[-1] == (2 * count, 2 * count) and len(seen) == 2 * count
    assert not [p for p in tmp_path.rglob(".*") if p.name != BACKUP_DIR_NAME]  # no staging file left


@pytest.mark.parametrize("whole", [False, True], ids=["fsync each", "syncfs"])
def test_a_caption_goes_in_only_once_its_new_file_is_durable_and_a_chunk_is_made_durable_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool) -> None:
    count = caption_batch.PARALLEL_FROM * 3  # one chunk
    changes = many_files(tmp_path, count)
    synced: set[int] = set()  # inodes made durable
    events: list[str] = []
    not_durable: list[str] = []
    real_fsync, real_exchange, real_syncfs = os.fsync, swap_module.exchange, caption_batch.sync_file_system

    def fsync(descriptor: int) -> None:
        real_fsync(descriptor)
        synced.add(os.fstat(descriptor).st_ino)
        events.append("fsync")

    def sync_file_system(descriptor: int) -> None:
        real_syncfs(descriptor)
        synced.update(os.stat(path).st_ino for path in tmp_path.glob(".*.new"))
        events.append("syncfs")

    def exchange(first: Path, second: Path) -> bool:
        if os.lstat(first).st_ino not in synced:
            not_durable.append(first.name)
        events.append("swap")
        return real_exchange(first, second)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(swap_module, "exchange", exchange)
    monkeypatch.setattr(caption_batch, "sync_file_system", sync_file_system)
    monkeypatch.setattr(caption_batch, "syncs_whole_file_system", lambda descriptor: whole)
    assert save_captions(changes, root=tmp_path).ok
    assert not_durable == [] and events.count("swap") == count
    # the chunk's fsyncs share journal commits, or one syncfs serves them all; then the swaps
    assert events == (["syncfs"] if whole else ["fsync"] * count) + ["swap"] * count + ["fsync"] * 2  # 2 folders
    assert all(c.path.read_text() == f"new {c.path.stem}\n" for c in changes)


def test_a_failed_sync_of_the_file_system_falls_back_to_an_fsync_of_each_file_to_say_which_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    count = caption_batch.PARALLEL_FROM * 2
    changes = many_files(tmp_path, count)
    real_fsync = os.fsync
    broken = changes[5].path

    def sync_file_system(descriptor: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def fsync(descriptor: int) -> None:
        if os.fstat(descriptor).st_ino in broken_staging:
            raise OSError(errno.EIO, "Input/output error")  # the file whose write failed
        real_fsync(descriptor)

    real_write_staging = caption_batch.write_staging
    broken_staging: set[int] = set()

    def write_staging(path: Path, data: bytes, mode: int | None) -> int:
        descriptor = real_write_staging(path, data, mode)
        if path.name.startswith(f".{broken.name}."):
            broken_staging.add(os.fstat(descriptor).st_ino)
        return descriptor

    monkeypatch.setattr(caption_batch, "syncs_whole_file_system", lambda descriptor: True)
    monkeypatch.setattr(caption_batch, "sync_file_system", sync_file_system)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(caption_batch, "write_staging", write_staging)
    result = save_captions(changes, root=tmp_path)
    assert [failure.path for failure in result.failed] == [broken] and len(result.saved) == count - 1
    assert "Input/output error" in str(result.failed[0].error)
    assert broken.read_text() == "old 5\n"
    assert all(c.path.read_text() == f"new {c.path.stem}\n" for c in changes if c.path != broken)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != BACKUP_DIR_NAME]


@pytest.mark.parametrize("stop", ["cancel", "crash", "Ctrl+C"])
def test_a_save_stopped_half_way_leaves_every_caption_old_or_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                stop: str) -> None:
    if stop == "Ctrl+C" and os.name != "posix":
        pytest.skip("sends SIGINT to its own process")
    count = caption_batch.PARALLEL_FROM * 4
    changes = many_files(tmp_path, count)
    written = Counter()
    real_write_staging, real_batch_init = caption_batch.write_staging, caption_batch._Batch.__init__
    batches: list[caption_batch._Batch] = []

    def write_staging(path: Path, data: bytes, mode: int | None) -> int:
        written["n"] += 1
        if stop == "crash" and written["n"] == count // 2:
            raise KeyboardInterrupt  # dies before this file's staging copy exists
        if stop == "Ctrl+C" and written["n"] == count // 2:  # the calling thread is interrupted while it waits
            os.kill(os.getpid(), signal.SIGINT)
            assert batches[0].stop.wait(10)  # it stops the batch before it raises
        return real_write_staging(path, data, mode)

    def batch_init(self: caption_batch._Batch, *args: object) -> None:
        real_batch_init(self, *args)
        batches.append(self)

    monkeypatch.setattr(caption_batch, "write_staging", write_staging)
    monkeypatch.setattr(caption_batch._Batch, "__init__", batch_init)
    outcome = None
    if stop == "cancel":
        outcome = save_captions(changes, root=tmp_path, cancelled=lambda: written["n"] >= count // 2)
    else:
        with pytest.raises(KeyboardInterrupt):
            save_captions(changes, root=tmp_path)
    texts = {c.path.stem: c.path.read_text() for c in changes}
    new = {stem for stem, text in texts.items() if text == f"new {stem}\n"}
    old = {stem for stem, text in texts.items() if text == f"old {stem}\n"}
    assert new | old == set(texts) and 0 < len(new) < count
    assert len(list((tmp_path / BACKUP_DIR_NAME).iterdir())) == len(new)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != BACKUP_DIR_NAME]
    if outcome is not None:
        assert {r.path.stem for r in outcome.saved} == new and {p.stem for p in outcome.skipped} == old
        assert not outcome.ok and not outcome.failed


def index_state(texts: IndexedCaptions) -> tuple[object, ...]:
    index = texts.index
    postings = {tag: sorted(index.holders(tag)) for tag in index.vocabulary()}
    return dict(texts.items()), index.counts(), postings, sorted(index._repeated), index.tag_lists()


def test_a_bulk_update_leaves_the_index_as_one_caption_at_a_time_does() -> None:
    rng = random.Random(3)
    vocabulary = [f"tag{n}" for n in range(40)]
    start = {f"k{n}": ", ".join(rng.sample(vocabulary, 6)) for n in range(300)}
    edits = {key: ", ".join([*rng.sample(vocabulary, rng.randint(0, 5)), "tag0", "tag0", "brand new"])
             for key in rng.sample(sorted(start), 150)}
    one_by_one, bulk = IndexedCaptions(start), IndexedCaptions(start)
    for texts in (one_by_one, bulk):
        texts.index.holders("tag1")  # postings gathered before the edit are kept up to date by it
    for key, text in edits.items():
        one_by_one[key] = text
    heard: list[str] = []
    bulk.changed = heard.append
    bulk.update(edits)
    assert index_state(bulk) == index_state(one_by_one) == index_state(IndexedCaptions(dict(one_by_one.items())))
    assert sorted(heard) == sorted(key for key in edits if edits[key] != start[key])
    bulk.update({key: start[key] for key in edits})  # back again, tags known from the index (as undo does)
    assert index_state(bulk) == index_state(IndexedCaptions(start))


def test_a_batch_edit_shares_one_string_per_tag() -> None:
    texts = IndexedCaptions({"a": "x, y", "b": "y, z"})
    added = "".join(["tri", "gger"])  # a string object of its own, equal to the one indexed
    texts.update({"c": "trigger"})
    texts.update({"a": "x, y, trigger"})  # split: spelled
    texts.expect("b", "y, z, trigger", ("y", "z", added))
    texts.update({"b": "y, z, trigger"})
    assert texts.tags("a")[2] is texts.tags("b")[2] is texts.tags("c")[0]


def test_garbage_collection_is_paused_during_a_load_and_back_after(tmp_path: Path) -> None:
    import gc

    from lib_lora.dataset.gc_pause import paused_gc

    seen: list[bool] = []
    with paused_gc():
        with paused_gc():
            seen.append(gc.isenabled())
        seen.append(gc.isenabled())
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # off before: stays off
    finally:
        gc.enable()


def test_a_batch_asks_the_name_limit_once_per_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from lib_lora import file_names

    changes = many_files(tmp_path, 40)
    asked: list[str] = []
    real = file_names.name_limit

    def counting(folder: object) -> int:
        asked.append(os.fspath(folder))  # type: ignore[arg-type]
        return real(folder)  # type: ignore[arg-type]

    monkeypatch.setattr(file_names, "name_limit", counting)
    result = save_captions(changes, root=tmp_path)
    assert result.ok and len(result.written) == 40
    assert len(asked) == len(set(asked)) == len({Path(change.path).parent for change in changes})
    for saved in result.saved:  # the mtime recorded is the file's (the next save's conflict check uses it)
        assert saved.caption.mtime_ns == saved.path.stat().st_mtime_ns
