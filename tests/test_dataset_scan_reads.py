"""The scan's fast paths give what the plain ones give: the helper process that reads a large folder's share (and
its failures), the natural sort's one-number case, and the background collection after a large scan."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from lib_lora.dataset import folder, gc_pause, listing
from lib_lora.dataset.folder import SIGNATURE, Dataset, scan_dataset
from lib_lora.dataset.reading import helper as reading_helper
from lib_lora.dataset.reading import pairs as reading_pairs
from lib_lora.dataset.reading import worker as reading_worker
from lib_lora.tiny.images import make_corrupt_files

pytestmark = pytest.mark.hostcompat


def hostile_folder(root: Path) -> Path:
    """Every kind of pair a scan meets: good ones in several encodings, bad images, bad and missing captions."""
    make_corrupt_files(root / "2_bad")
    (root / "1_good").mkdir(parents=True)
    for n in range(6):
        Image.new("RGB", (4, 4), (n, 0, 0)).save(root / "1_good" / f"img{n}.png")
        (root / "1_good" / f"img{n}.txt").write_bytes(f"tag{n}, other\r\n".encode())
    Image.new("RGB", (4, 4)).save(root / "1_good" / "photo.jpg")  # no caption file
    (root / "1_good" / "bom.png").write_bytes((root / "1_good" / "img0.png").read_bytes())
    (root / "1_good" / "bom.txt").write_bytes(b"\xef\xbb\xbfa, b")
    (root / "1_good" / "sjis.png").write_bytes((root / "1_good" / "img0.png").read_bytes())
    (root / "1_good" / "sjis.txt").write_bytes("猫, 犬".encode("cp932"))
    (root / "2_bad" / "undecodable.png").write_bytes((root / "1_good" / "img0.png").read_bytes())
    (root / "2_bad" / "undecodable.txt").write_bytes(b"\xff\x81\xfd")
    (root / "2_bad" / "folder.png").write_bytes((root / "1_good" / "img0.png").read_bytes())
    (root / "2_bad" / "folder.txt").mkdir()  # listed, but a folder: cannot be read
    (root / "2_bad" / "large.png").write_bytes((root / "1_good" / "img0.png").read_bytes())
    (root / "2_bad" / "large.txt").write_bytes(b"a" * (2 << 20))  # over the caption limit
    huge = bytearray((root / "1_good" / "img0.png").read_bytes())
    huge[16:24] = (100_000).to_bytes(4, "big") * 2  # the header says 100,000 x 100,000
    (root / "2_bad" / "huge.png").write_bytes(bytes(huge))
    (root / "2_bad" / "link.png").symlink_to(root / "1_good" / "img1.png")
    (root / "2_bad" / "link.txt").symlink_to(root / "1_good" / "img1.txt")
    if hasattr(os, "mkfifo"):  # a caption that is a pipe: opening it to read would wait for a writer forever
        (root / "2_bad" / "pipe.png").write_bytes((root / "1_good" / "img0.png").read_bytes())
        os.mkfifo(root / "2_bad" / "pipe.txt")
    return root


def scanned(root: Path, check_images: bool | str) -> Dataset:
    return scan_dataset(root, check_images=check_images)


def same(one: Dataset, other: Dataset) -> None:
    assert one.items == other.items
    assert [(p.kind, p.paths, p.message) for p in one.problems] == [
        (p.kind, p.paths, p.message) for p in other.problems]
    assert one.linked == other.linked


@pytest.fixture
def helpers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every scan shares its reads with a helper process (two cores assumed); the helpers started are listed."""
    started: list[object] = []
    real = subprocess.Popen

    def popen(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(args[0])
        return real(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(reading_pairs, "CHILD_FROM", 1)
    monkeypatch.setattr(reading_pairs, "_cores", lambda: 2)
    monkeypatch.setattr(reading_helper.subprocess, "Popen", popen)
    yield started


@pytest.mark.parametrize("share", [1000, 3])  # one message to the helper, or many
@pytest.mark.parametrize("check_images", [SIGNATURE, False])
def test_a_helper_process_reads_what_this_process_reads(
        tmp_path: Path, helpers: list[object], monkeypatch: pytest.MonkeyPatch, share: int,
        check_images: bool | str) -> None:
    root = hostile_folder(tmp_path / "set")
    monkeypatch.setattr(reading_pairs, "CHILD_FROM", 10**9)
    here = scanned(root, check_images)
    monkeypatch.setattr(reading_pairs, "CHILD_FROM", 1)
    monkeypatch.setattr(reading_pairs, "CHILD_SHARE", share)
    if share < 100:  # a helper slower than this process: it answers the first shares, the others are read here
        monkeypatch.setattr(reading_worker, "__file__", str(slow_worker(tmp_path, 0.3)))
    taken: list[int | None] = []
    real = reading_helper.ReadHelper.take_back
    monkeypatch.setattr(reading_helper.ReadHelper, "take_back", lambda self: taken.append(real(self)) or taken[-1])
    shared = scanned(root, check_images)
    assert len(helpers) == 1
    same(shared, here)
    assert share > 100 or any(index is not None for index in taken)  # some shares read here
    assert len(here.items) >= 10 and len(here.problems) >= (6 if check_images else 3) and here.linked  # all there
    assert reading_worker.read_share((None, 1, 1 << 20), ([str(root / "1_good" / "img0.png")], [None])) == [None]


def slow_worker(tmp_path: Path, seconds: float) -> Path:
    """The helper process, made to wait `seconds` before it reads anything."""
    script = tmp_path / "slow_worker.py"
    script.write_text(f"import sys, time; sys.path.insert(0, {str(Path(reading_worker.__file__).parent)!r}); "
                      f"import worker; time.sleep({seconds}); worker.main(sys.argv[1])")
    return script


def test_the_shares_not_begun_are_taken_back_from_the_end_and_the_helper_stops_where_they_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = hostile_folder(tmp_path / "set")
    images = sorted(str(path) for path in (root / "1_good").glob("img*.png"))
    monkeypatch.setattr(reading_worker, "__file__", str(slow_worker(tmp_path, 0.5)))
    helper = reading_helper.ReadHelper.start((None, 1, 1 << 20), [([image], [image[:-4] + ".txt"]) for image in images])
    assert helper is not None
    try:
        assert [helper.take_back() for _ in range(6)] == [5, 4, 3, 2, 1, None]  # it is at the first share
        answers = []
        deadline = time.monotonic() + 10
        while not helper.over() and time.monotonic() < deadline:
            answers += helper.ready()
            time.sleep(0.01)
        answers += helper.ready()
    finally:
        helper.close()
    assert [index for index, _ in answers] == [0] and answers[0][1][0][0].startswith(b"tag0")  # type: ignore[index]
    assert helper.process.returncode == 0


FRAME = "def frame(m): d = marshal.dumps(m); return len(d).to_bytes(8, 'little') + d\n"
WORKERS = {
    "fails": "import sys; sys.exit(3)",
    "junk": "import sys; open(sys.argv[1] + '/answers', 'ab').write(b'junk' * 9)",
    "short": "import marshal, sys\n" + FRAME + "open(sys.argv[1] + '/answers', 'ab').write(frame((0, [None])))",
    "wrong kinds": "import marshal, sys\n" + FRAME + "open(sys.argv[1] + '/answers', 'ab').write("
                   "frame((0, [('text', 1)] * 3)))",
    "wrong share": "import marshal, sys\n" + FRAME + "open(sys.argv[1] + '/answers', 'ab').write(frame((99, [])))",
}


@pytest.mark.parametrize("worker", sorted(WORKERS))
def test_a_helper_that_fails_or_answers_wrong_is_replaced_by_reading_here(
        tmp_path: Path, helpers: list[object], monkeypatch: pytest.MonkeyPatch, worker: str) -> None:
    root = hostile_folder(tmp_path / "set")
    monkeypatch.setattr(reading_pairs, "CHILD_FROM", 10**9)
    here = scanned(root, SIGNATURE)
    script = tmp_path / "worker.py"
    script.write_text(WORKERS[worker])
    monkeypatch.setattr(reading_pairs, "CHILD_FROM", 1)
    monkeypatch.setattr(reading_worker, "__file__", str(script))
    same(scanned(root, SIGNATURE), here)
    assert len(helpers) == 1


def test_no_python_to_start_means_no_helper(tmp_path: Path, helpers: list[object],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = hostile_folder(tmp_path / "set")
    monkeypatch.setattr(reading_pairs, "CHILD_FROM", 10**9)
    here = scanned(root, SIGNATURE)
    monkeypatch.setattr(reading_pairs, "CHILD_FROM", 1)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    same(scanned(root, SIGNATURE), here)
    monkeypatch.setattr(sys, "executable", "")
    same(scanned(root, SIGNATURE), here)


@pytest.mark.parametrize("waits", [False, True])
def test_reads_here_go_to_threads_only_once_the_first_ones_waited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, waits: bool) -> None:
    root = hostile_folder(tmp_path / "set")
    monkeypatch.setattr(reading_pairs, "CHILD_FROM", 10**9)
    here = scanned(root, SIGNATURE)
    pools: list[int] = []
    real_pool, real_read = reading_pairs.ThreadPoolExecutor, reading_pairs._read_pair

    def pool(max_workers: int, **kwargs: object) -> object:
        pools.append(max_workers)
        return real_pool(max_workers, **kwargs)  # type: ignore[arg-type]

    def read(*args: object) -> object:
        if waits:
            time.sleep(0.01)  # as a read from a disk would
        return real_read(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(reading_pairs, "ThreadPoolExecutor", pool)
    monkeypatch.setattr(reading_pairs, "_read_pair", read)
    monkeypatch.setattr(reading_pairs, "_PROBE", 4)
    if not waits:  # well above what a busy machine's scheduling adds to four quick reads
        monkeypatch.setattr(reading_pairs, "_WAITED_S", 0.5)
    same(scanned(root, SIGNATURE), here)
    assert pools == ([reading_pairs.READ_THREADS] if waits else [])


def general_key(name: str) -> list[object]:
    parts = listing._NUMBERS.split(name)
    values: list[object] = list(parts)
    values[0::2] = map(str.casefold, parts[0::2])
    values[1::2] = map(int, parts[1::2])
    return list(chain.from_iterable(zip(values, parts)))


@given(st.text(alphabet="aAbß0129٣._ -", max_size=12))
def test_the_natural_sort_key_of_one_number_is_the_general_one(name: str) -> None:
    assert listing.natural_key(name) == general_key(name)


# --- the background collection after a large scan ---------------------------------------------------------------


@pytest.fixture
def collections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The generations of the collections that run, quickly after a pause; the collector enabled afterwards."""
    seen: list[int] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    monkeypatch.setattr(gc_pause, "QUIET_WAIT_S", 0.2)
    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)
        wait_for_collector()
        gc.enable()


def wait_for_collector(limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while gc_pause.collection_pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not gc_pause.collection_pending()


def test_a_large_scan_is_collected_in_the_background_and_the_collector_resumes(
        tmp_path: Path, collections: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    root = hostile_folder(tmp_path / "set")
    monkeypatch.setattr(folder, "_COLLECT_FROM", 1)
    scan_dataset(root)
    assert not gc.isenabled()  # paused until the collection ran
    wait_for_collector()
    assert gc.isenabled() and collections and min(collections) >= 1
    collections.clear()
    monkeypatch.setattr(folder, "_COLLECT_FROM", 10**9)
    scan_dataset(root)
    assert gc.isenabled() and not gc_pause.collection_pending()  # a small scan: as before


def test_a_pause_beginning_before_the_collection_keeps_the_collector_off_to_its_end(
        collections: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_pause, "QUIET_WAIT_S", 0.3)
    monkeypatch.setattr(gc_pause, "QUIET_CPU_SHARE", -1.0)  # never quiet: the collection waits QUIET_WAIT_S
    with gc_pause.paused_gc():
        gc_pause.collect_after_pause()
    assert not gc.isenabled() and gc_pause._collector is not None
    with gc_pause.paused_gc():
        time.sleep(0.5)  # the collector wakes meanwhile and leaves it to this pause's end
        assert not gc.isenabled() and not collections
    assert not gc.isenabled()
    wait_for_collector()
    assert gc.isenabled() and collections


def test_a_collection_asked_while_the_collector_was_off_before_is_not_run(collections: list[int]) -> None:
    gc.disable()
    with gc_pause.paused_gc():
        gc_pause.collect_after_pause()
    assert not gc.isenabled() and gc_pause._collector is None and not gc_pause._owed
    time.sleep(0.3)
    assert not collections


def test_a_collection_asked_from_another_thread_during_the_collection_runs_after_it(
        collections: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    release = threading.Event()
    real = gc_pause._collect

    def slow_collect() -> None:
        started.set()
        release.wait(5)
        real()

    monkeypatch.setattr(gc_pause, "_collect", slow_collect)
    with gc_pause.paused_gc():
        gc_pause.collect_after_pause()
    assert started.wait(5)
    with gc_pause.paused_gc():  # begins while the first collection runs, and asks for one of its own
        gc_pause.collect_after_pause()
        release.set()
        deadline = time.monotonic() + 5
        while gc_pause._collector is not None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not gc.isenabled()  # a second collection is owed
    wait_for_collector()
    assert gc.isenabled() and len(collections) >= 2
