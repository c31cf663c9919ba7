"""The Dataset tab's session at scale, without a browser: what it keeps up to date instead of recomputing (the
unsaved captions, the filter, the tag counts) matches a recount after every action, the save runs as a job that
shows progress and can be cancelled, the frequency table is paged and searchable, thumbnails are cached on disk
by content, and the image list holds one page."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from lib_lora.dataset import caption_batch
from lib_lora.dataset.editing import FREQUENCY_ROWS, PAGE_SIZE, DatasetSession, DatasetUIError
from lib_lora.dataset.tags import AddTags, RemoveTags, RenameTag, tag_frequency
from lib_lora.ui.dataset import thumbs as dataset_thumbs
from lib_lora.ui.dataset.views import frequency_html, gallery_html, render

pytestmark = pytest.mark.hostcompat

TAGS = [f"tag {n:03d}" for n in range(250)]


@pytest.fixture()
def roots(tmp_path: Path) -> Path:
    """datasets/big/1_a: 120 tiny images, caption n holding tags n % 250, (3n) % 250, ... (8 tags)."""
    folder = tmp_path / "datasets" / "big" / "1_a"
    folder.mkdir(parents=True)
    for n in range(120):
        Image.new("RGB", (8, 8), (n, 0, 0)).save(folder / f"img{n:03d}.png")
        (folder / f"img{n:03d}.txt").write_text(", ".join(TAGS[(n * k) % 250] for k in range(1, 9)) + "\n")
    return tmp_path / "datasets"


@pytest.fixture()
def session(roots: Path) -> DatasetSession:
    session = DatasetSession(lambda: [roots])
    session.load(str(roots / "big"))
    return session


def check(session: DatasetSession) -> None:
    """Everything the session keeps up to date equals what a pass over all captions gives."""
    texts = dict(session.texts)
    assert session.unsaved_keys() == [k for k, t in texts.items() if t != session.baseline_text(k)]
    assert session.tag_counts() == tag_frequency(texts)
    matches = [k for k, t in texts.items() if session.tag_filter.matches(session.texts.index.tags(
        session.texts.position(k)))]
    assert session.filtered_keys() == matches
    assert session.filtered_tag_counts() == tag_frequency({k: texts[k] for k in matches})


def test_what_the_session_keeps_up_to_date_matches_a_recount(session: DatasetSession) -> None:
    check(session)
    session.set_filter("tag 003", "all", "", "any")
    assert 0 < len(session.filtered_keys()) < 120
    session.batch(AddTags(("trigger",), "front"))
    check(session)
    session.set_filter("trigger", "all", "tag 012", "any")
    session.batch(RenameTag("tag 003", "tag 009"))
    check(session)
    session.undo()
    check(session)
    session.set_filter("", "all", "", "any")
    session.batch(RemoveTags(("tag 001",)))
    check(session)
    first = session.unsaved_keys()[0]
    session.item(first).caption_path.write_text("changed elsewhere\n")
    assert "1 caption changed on disk" in session.save()
    check(session)
    session.reload_conflicts()
    check(session)
    session.undo()
    check(session)
    assert session.unsaved_keys() == [first]


def test_the_save_is_a_job_with_progress_that_refuses_edits_until_done(session: DatasetSession) -> None:
    session.batch(AddTags(("trigger",), "front"))
    message, job = session.start_save()
    assert message == "Saving 120 captions…" and job is not None
    with pytest.raises(DatasetUIError, match="being saved"):
        session.batch(RemoveTags(("trigger",)))
    snapshot = job.wait(60)
    assert snapshot.state == "done" and snapshot.done == snapshot.total == 120
    with pytest.raises(DatasetUIError, match="being saved"):
        session.undo()  # until the result is taken in
    assert session.finish_save(snapshot).startswith("Saved 120 captions; the previous versions are in")
    assert session.unsaved_keys() == [] and not session.saving
    assert all(p.caption_path.read_text().startswith("trigger, ") for p in session.require_loaded().items)
    assert session.start_save() == ("Nothing to save.", None)


def test_a_cancelled_save_says_how_many_were_saved_and_keeps_the_rest_unsaved(
        session: DatasetSession, monkeypatch: pytest.MonkeyPatch) -> None:
    assert 120 >= 2 * caption_batch.PARALLEL_FROM  # saved in threads
    session.batch(AddTags(("trigger",), "front"))
    gate, written = threading.Event(), []
    real_write_staging = caption_batch.write_staging

    def write_staging(path: Path, data: bytes, mode: int | None) -> int:
        written.append(path)
        if len(written) >= 30:
            gate.wait(30)  # the save waits here until it was cancelled
        return real_write_staging(path, data, mode)

    monkeypatch.setattr(caption_batch, "write_staging", write_staging)
    _, job = session.start_save()
    while len(written) < 30:
        threading.Event().wait(0.01)
    assert session.cancel_save() == "Cancelling the save after the files under way…"
    gate.set()
    message = session.finish_save(job.wait(60))
    saved = sum(item.caption_path.read_text().startswith("trigger, ") for item in session.require_loaded().items)
    assert 30 <= saved < 120
    assert message.startswith(f"Saved {saved} captions") and f"cancelled: {120 - saved} captions not saved" in message
    assert len(session.unsaved_keys()) == 120 - saved
    assert session.save().startswith(f"Saved {120 - saved} captions")
    assert session.unsaved_keys() == [] and session.cancel_save() == "No save is running."


def test_the_frequency_table_is_paged_and_searchable(session: DatasetSession) -> None:
    counts = session.tag_counts()
    assert len(counts) > FREQUENCY_ROWS
    first = frequency_html(session)
    assert first.count('data-lora-studio-op="include"') == FREQUENCY_ROWS
    assert f'data-tag="{counts[0][0]}"' in first and f'data-tag="{counts[FREQUENCY_ROWS][0]}"' not in first
    assert f"Tags 1–{FREQUENCY_ROWS} of {len(counts)}" in first
    session.frequency_page = 99
    last = frequency_html(session)  # clamped to the last page
    assert f'data-tag="{counts[-1][0]}"' in last and session.frequency_page == -(-len(counts) // FREQUENCY_ROWS) - 1
    found = frequency_html(session, "tag 24")
    matching = [tag for tag, _ in counts if "24" in tag]  # every word searched is in the tag
    assert found.count('data-lora-studio-op="include"') == len(matching) > 1 and "matching tag 24" in found


def test_thumbnails_are_cached_on_disk_by_content(session: DatasetSession, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "thumbs"
    session.thumb_dir = lambda: cache
    made = []
    real_jpeg = dataset_thumbs._jpeg
    monkeypatch.setattr(dataset_thumbs, "_jpeg", lambda path, side: made.append(path) or real_jpeg(path, side))
    assert gallery_html(session).count("<img ") == PAGE_SIZE
    assert len(made) == PAGE_SIZE and len(list(cache.rglob("*.jpg"))) == PAGE_SIZE  # only the page's images
    folder = session.require_loaded().root / "1_a"
    copy = folder.parent / "copy.png"
    copy.write_bytes((folder / "img000.png").read_bytes())
    assert dataset_thumbs.image_uri(copy, cache_dir=cache) == dataset_thumbs.image_uri(folder / "img000.png",
                                                                                      cache_dir=cache)
    assert len(made) == PAGE_SIZE  # the same content under another name: read from the disk cache


def test_the_image_list_holds_the_page_not_the_whole_set(session: DatasetSession) -> None:
    view = render(session, "", ["image"])["image"]
    assert view.choices == tuple(session.page_keys()) and len(view.choices) == PAGE_SIZE
    session.go_page(1)  # the selected image stays first in the list while another page is shown
    assert render(session, "", ["image"])["image"].choices == (session.keys[0], *session.keys[PAGE_SIZE:2 * PAGE_SIZE])
