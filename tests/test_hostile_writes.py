"""Writing user files against a hostile world: another program writing the caption while Save runs, captions
and backup folders that are links leading out of the dataset, read-only captions, and modes kept.

Nothing is lost: after each case every text written, by us or by the other program, is on disk or in the
backup folder, and when the other program's text is not the one on disk the save said so."""

from __future__ import annotations

import errno
import io
import os
import random
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lib_lora import atomic
from lib_lora.cli.main import main
from lib_lora.dataset import captions as captions_module
from lib_lora.dataset import swap as swap_module
from lib_lora.dataset.backups import BACKUP_DIR_NAME
from lib_lora.dataset.caption_format import read_caption
from lib_lora.dataset.captions import CaptionChange, save_caption, save_captions
from lib_lora.dataset.editing import DatasetSession
from lib_lora.dataset.errors import CaptionConflictError, CaptionWriteError, DatasetError
from lib_lora.dataset.folder import rename_subset_repeats, scan_dataset
from lib_lora.tiny.images import generate_dataset

pytestmark = pytest.mark.hostcompat

real_write_new = captions_module.write_new
real_exchange = swap_module.exchange
ROOT_CAN_WRITE_ANYTHING = os.name == "posix" and os.geteuid() == 0


def no_hard_links(*args: object, **kwargs: object) -> None:
    raise PermissionError(errno.EPERM, "Operation not permitted")  # as on FAT or exFAT


@pytest.fixture(params=["swap", "no swap", "no hard links"])
def platform(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every way a caption goes in: the atomic swap (Linux), hard link + replace (other systems, file systems
    without the swap) and copy + replace (file systems without hard links)."""
    if request.param == "swap" and atomic._renameat2_function() is None:
        pytest.skip("no renameat2 here")
    if request.param != "swap":
        monkeypatch.setattr(atomic, "_renameat2_function", lambda: None)
    if request.param == "no hard links":
        monkeypatch.setattr(os, "link", no_hard_links)
    return str(request.param)


def backups_of(folder: Path, stem: str) -> list[bytes]:
    return [p.read_bytes() for p in (folder / BACKUP_DIR_NAME).rglob(f"{stem}.*") if p.is_file()]


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != BACKUP_DIR_NAME)


def check_nothing_lost(folder: Path, stem: str, outside: bytes | None, told: bool, ours: bytes) -> None:
    """The other program's text is on disk or in the backup (and then the save said so); ours is on disk unless
    the save said it was not written; no hidden file is left beside the caption."""
    path = folder / f"{stem}.txt"
    on_disk = path.read_bytes() if path.exists() else None
    if outside is not None:
        assert outside in [on_disk, *backups_of(folder, stem)], "the other program's text was lost"
        assert on_disk == outside or told, "the other program's text is only in the backup and nobody was told"
    if not told:
        assert on_disk in (ours, outside)
    assert hidden_leftovers(folder) == []


# --- another program writes while Save runs ----------------------------------------------------------------


def write_in_place(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:  # truncates, then writes: what most editors and scripts do
        f.write(data)


def write_by_rename(path: Path, data: bytes) -> None:
    temp = path.with_name(f"~{path.name}.{random.random()}")
    temp.write_bytes(data)
    os.replace(temp, path)


def delete(path: Path, data: bytes) -> None:
    path.unlink()


WRITERS: dict[str, Callable[[Path, bytes], None]] = {
    "in place": write_in_place, "by rename": write_by_rename, "delete": delete, "huge by rename": write_by_rename,
}
TEXTS = {"delete": None, "huge by rename": b"x" * (captions_module.MAX_CAPTION_BYTES + 1)}

# (case, the caption exists before, how the other program writes, when)
RACES = [
    ("edited in place during the save", True, "in place", "before the swap"),
    ("replaced by rename during the save", True, "by rename", "before the swap"),
    ("deleted during the save", True, "delete", "before the swap"),
    ("replaced by a file too large for a caption", True, "huge by rename", "before the swap"),
    ("created during the save of a new caption", False, "by rename", "before the swap"),
    ("opened before the swap, written after it", True, "in place", "across the swap"),
    ("replaced by rename just after the swap", True, "by rename", "after the swap"),
]


@pytest.mark.parametrize("force", [False, True], ids=["save", "overwrite"])
@pytest.mark.parametrize("case,exists,how,when", RACES, ids=[r[0] for r in RACES])
def test_a_text_written_during_the_save_is_never_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      platform: str, case: str, exists: bool, how: str, when: str,
                                                      force: bool) -> None:
    path = tmp_path / "a.txt"
    if exists:
        path.write_bytes(b"original\n")
    loaded = read_caption(path)
    outside = TEXTS.get(how, b"written by another program\n")
    write = WRITERS[how]

    def write_during_our_write(target: Path, chunks, **options):  # noqa: ANN003, ANN202
        write(path, outside or b"")
        return real_write_new(target, chunks, **options)

    def exchange_with_a_writer(first: Path, second: Path) -> bool:
        if when == "after the swap":
            swapped = real_exchange(first, second)
            write(path, outside or b"")
            return swapped
        with open(path, "wb") as held:  # the other program opened (and truncated) the file before the swap
            swapped = real_exchange(first, second)
            held.write(outside or b"")
        return swapped

    if when == "before the swap":
        monkeypatch.setattr(captions_module, "write_new", write_during_our_write)
    else:
        monkeypatch.setattr(swap_module, "exchange", exchange_with_a_writer)
    try:
        result = save_caption(path, "ours", expected=loaded, force=force)
        told = False
    except CaptionConflictError as error:
        told = True
        assert str(path) in str(error)
    check_nothing_lost(tmp_path, "a", outside, told or force, b"ours\n")  # overwrite: the user chose it
    if not told and exists and when == "before the swap" and how != "delete":
        assert force and result.backup is not None and result.backup.read_bytes() == outside
    if when == "after the swap" and platform == "swap":
        assert backups_of(tmp_path, "a") == [b"original\n"]  # ours replaced it: it was kept


def test_a_conflict_found_at_the_swap_is_told_in_the_dataset_tab(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    generate_dataset(tmp_path / "data", count=2, seed=3)
    session = DatasetSession(lambda: [tmp_path / "data"])
    session.load(str(tmp_path / "data"))
    first = session.keys[0]
    path = session.item(first).caption_path
    session.record({first: "mine"}, "edit")

    def write_during_our_write(target: Path, chunks, **options):  # noqa: ANN003, ANN202
        path.write_bytes(b"theirs\n")
        return real_write_new(target, chunks, **options)

    monkeypatch.setattr(captions_module, "write_new", write_during_our_write)
    message = session.save()
    assert "1 caption changed on disk" in message and first in session.conflicts
    assert path.read_bytes() == b"theirs\n" and session.texts[first] == "mine"


SAVE_SECONDS = 20.0


@pytest.mark.skipif(atomic._renameat2_function() is None, reason="the atomic swap needs Linux renameat2")
def test_race_an_outside_writer_against_save_200_times(tmp_path: Path) -> None:
    """Real threads: the other program writes (in place or by rename) at a random moment of the save."""
    started = time.perf_counter()
    probe = tmp_path / "probe.txt"
    probe.write_bytes(b"x\n")
    before = time.perf_counter()
    save_caption(probe, "y", expected=read_caption(probe))
    duration = time.perf_counter() - before
    rng = random.Random(13)
    lost, untold, late_in_place, told = [], [], [], 0
    for trial in range(200):
        path = tmp_path / f"{trial}.txt"
        path.write_bytes(f"original {trial}\n".encode())
        loaded = read_caption(path)
        outside = f"outside {trial}\n".encode()
        write = write_in_place if trial % 2 else write_by_rename
        delay = rng.uniform(0, 1.5 * duration)
        go = threading.Event()

        def writer(path: Path = path, outside: bytes = outside, write=write, delay: float = delay,
                   go: threading.Event = go) -> None:
            go.wait()
            time.sleep(delay)
            write(path, outside)

        thread = threading.Thread(target=writer)
        thread.start()
        go.set()
        try:
            save_caption(path, f"ours {trial}", expected=loaded)
            was_told = False
        except CaptionConflictError:
            was_told = True
        thread.join()
        told += was_told
        on_disk = path.read_bytes()
        if outside not in [on_disk, *backups_of(tmp_path, str(trial))]:
            lost.append(trial)
        elif on_disk != outside and not was_told:
            (late_in_place if write is write_in_place else untold).append(trial)
    # An in-place writer whose open() found the old file just before the swap truncates and writes that file after
    # Save has checked it: its text is kept in the backup (not lost) and no user-space check can see it in time.
    # Seen once in 200 trials at load 7; a Save that stopped telling conflicts would miss dozens.
    assert lost == [] and untold == [] and len(late_in_place) <= 3, (lost, untold, late_in_place)
    assert hidden_leftovers(tmp_path) == []
    assert time.perf_counter() - started < SAVE_SECONDS


# --- links: nothing is written through a link or outside the dataset --------------------------------------


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_caption_that_is_a_link_is_left_as_it_is(tmp_path: Path, target: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    real = (tmp_path if target == "outside" else data) / "real.txt"
    real.write_bytes(b"private text\n")
    link = data / "a.txt"
    link.symlink_to(real)
    with pytest.raises(CaptionWriteError, match="is a link") as raised:
        save_caption(link, "new", expected=read_caption(link), root=data, force=True)
    assert str(link) in str(raised.value)
    assert link.is_symlink() and real.read_bytes() == b"private text\n"
    assert not (data / BACKUP_DIR_NAME).exists()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
@pytest.mark.parametrize("linked", [BACKUP_DIR_NAME, f"{BACKUP_DIR_NAME}/3_char"])
def test_a_backup_folder_leading_outside_is_not_written(tmp_path: Path, linked: str) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "3_char").mkdir(parents=True)
    outside.mkdir()
    (data / linked).parent.mkdir(parents=True, exist_ok=True)
    (data / linked).symlink_to(outside, target_is_directory=True)
    path = data / "3_char" / "a.txt"
    path.write_bytes(b"old\n")
    with pytest.raises(CaptionWriteError, match="link"):
        save_caption(path, "new", expected=read_caption(path), root=data)
    assert path.read_bytes() == b"old\n" and list(outside.rglob("*")) == []


@pytest.fixture(scope="module")
def tagger_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lib_lora.tiny.tagger import write_tiny_wd14_tagger

    return write_tiny_wd14_tagger(tmp_path_factory.mktemp("model")).directory


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_cli_tag_overwrite_leaves_out_a_caption_linking_outside(tmp_path: Path, tagger_model: Path) -> None:
    data = generate_dataset(tmp_path / "data", count=3, seed=4)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"private text\n")
    linked = data.caption_paths[0]
    linked.unlink()
    linked.symlink_to(secret)
    out = io.StringIO()
    assert main(["tag", str(tmp_path / "data"), "--model", str(tagger_model), "--recursive",
                 "--existing", "overwrite"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert f"tag: left out: {linked}: its caption links outside the dataset folder; left out, so nothing is " \
           "written there" in lines
    assert lines[-1].startswith("tag: tagged 2, skipped 0 (existing caption), unreadable 0, not written 0")
    assert linked.is_symlink() and secret.read_bytes() == b"private text\n"
    backups = [p.read_bytes() for p in (tmp_path / "data" / BACKUP_DIR_NAME).rglob("*") if p.is_file()]
    assert b"private text\n" not in backups


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_tagging_a_folder_reports_a_caption_link_inside_it_as_not_written(tmp_path: Path,
                                                                          tagger_model: Path) -> None:
    from lib_lora.dataset.tagging.models import resolve_model
    from lib_lora.dataset.tagging.run import tag_folder
    from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions

    data = generate_dataset(tmp_path / "data", count=2, seed=5)
    shared = data.caption_paths[1]
    data.caption_paths[0].unlink()
    data.caption_paths[0].symlink_to(shared)
    before = shared.read_bytes()
    report = tag_folder(tmp_path / "data", Tagger.load(resolve_model(str(tagger_model)), providers=["cpu"]),
                        TaggerOptions(existing="overwrite", recursive=True))
    failed = report.of("failed")
    assert [r.caption_path for r in failed] == [data.caption_paths[0]] and "is a link" in (failed[0].error or "")
    assert data.caption_paths[0].is_symlink() and shared.read_bytes() != before  # the real file was tagged


def test_renaming_repeats_never_replaces_a_folder_made_meanwhile(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    generate_dataset(tmp_path / "data", count=1, seed=1, repeats=2, name="char")
    dataset = scan_dataset(tmp_path / "data")
    (tmp_path / "data" / "5_char").mkdir()  # appears after the check for an existing folder
    monkeypatch.setattr("lib_lora.dataset.folder.os.path.lexists", lambda path: False)
    with pytest.raises(DatasetError, match="already exists"):
        rename_subset_repeats(dataset, "2_char", 5)
    assert (tmp_path / "data" / "2_char").is_dir() and (tmp_path / "data" / "5_char").is_dir()


# --- modes: a read-only caption is left as it is; other files keep their mode ------------------------------


def test_a_read_only_caption_is_reported_and_left_as_it_is(tmp_path: Path) -> None:
    paths = []
    for name, mode in (("ro.txt", 0o444), ("rw.txt", 0o644)):
        path = tmp_path / name
        path.write_bytes(b"old\n")
        path.chmod(mode)
        paths.append(path)
    result = save_captions([CaptionChange(p, "new", read_caption(p)) for p in paths], root=tmp_path, force=True)
    assert [f.path for f in result.failed] == [paths[0]] and result.written == [paths[1]]
    assert isinstance(result.failed[0].error, CaptionWriteError)
    assert "read-only (mode 0444)" in str(result.failed[0].error)
    assert paths[0].read_bytes() == b"old\n" and stat.S_IMODE(paths[0].stat().st_mode) == 0o444
    assert paths[1].read_bytes() == b"new\n" and stat.S_IMODE(paths[1].stat().st_mode) == 0o644


def test_the_dataset_tab_tells_which_caption_is_read_only(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "data", count=2, seed=3)
    session = DatasetSession(lambda: [tmp_path / "data"])
    session.load(str(tmp_path / "data"))
    first, second = session.keys
    session.item(first).caption_path.chmod(0o444)
    session.record({first: "mine", second: "also mine"}, "edit")
    message = session.save()
    assert message.startswith("Saved 1 caption;") and "**1 caption could not be written** (listed below)" in message
    assert "read-only (mode 0444); it was left as it is" in session.failures[first]
    assert stat.S_IMODE(session.item(first).caption_path.stat().st_mode) == 0o444


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o444])
def test_atomic_writes_keep_the_files_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    path.chmod(mode)
    atomic.write_atomically(path, [b"new"])
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_a_saved_caption_keeps_its_mode(tmp_path: Path, platform: str, mode: int) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"old\n")
    path.chmod(mode)
    save_caption(path, "new", expected=read_caption(path))
    assert path.read_bytes() == b"new\n" and stat.S_IMODE(path.stat().st_mode) == mode
    assert backups_of(tmp_path, "a") == [b"old\n"]


def test_a_new_file_gets_the_usual_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        atomic.write_atomically(tmp_path / "new.bin", [b"x"])
        save_caption(tmp_path / "a.txt", "new", expected=None)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize(("platform_name", "kernel", "magic", "expected"), [
    ("linux", (6, 1), 0xEF53, True),  # ext4
    ("linux", (5, 8), 0x58465342, True),  # xfs
    ("linux", (5, 4), 0xEF53, False),  # syncfs does not report failed writes before 5.8
    ("linux", (6, 1), 0x6969, False),  # nfs
    ("linux", (6, 1), 0x65735546, False),  # fuse
    ("linux", (6, 1), 0x794C7630, False),  # overlayfs
    ("linux", (6, 1), None, False),  # fstatfs not readable
    ("win32", (0, 0), None, False),
])
def test_a_whole_file_system_is_synced_only_where_that_is_as_safe_as_an_fsync_of_each_file(
        monkeypatch: pytest.MonkeyPatch, platform_name: str, kernel: tuple[int, int], magic: int | None,
        expected: bool) -> None:
    monkeypatch.setattr(atomic.sys, "platform", platform_name)
    for cached in (atomic._syncfs_function, atomic._kernel_version):
        cached.cache_clear()
    monkeypatch.setattr(atomic, "_kernel_version", lambda: kernel)
    monkeypatch.setattr(atomic, "_file_system_magic", lambda descriptor: magic)
    try:
        assert atomic.syncs_whole_file_system(0) is (expected and os.name == "posix")
    finally:
        atomic._syncfs_function.cache_clear()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_a_sync_of_the_file_system_runs_and_its_rule_reads_this_machine(tmp_path: Path) -> None:
    descriptor = os.open(tmp_path, os.O_RDONLY)
    try:
        atomic.sync_file_system(descriptor)
        assert atomic._file_system_magic(descriptor) is not None
        with pytest.raises(OSError):
            atomic.sync_file_system(-1)
    finally:
        os.close(descriptor)
