"""Captions never lose data: exact round trips, kept styles, conflicts, backups, failed and interrupted saves."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.dataset import captions as captions_module
from lib_lora.dataset.backups import BACKUP_DIR_NAME
from lib_lora.dataset.caption_format import encode_caption, normalise_text, parse_caption, read_caption
from lib_lora.dataset.captions import CaptionChange, save_caption, save_captions
from lib_lora.dataset.errors import CaptionConflictError, CaptionReadError, CaptionWriteError, DatasetError

pytestmark = pytest.mark.hostcompat

real_write_atomically = captions_module.write_new  # the new file's first write, before it is swapped in

# (name, bytes on disk, text, newline, bom, encoding, final_newline)
STYLES = [
    ("lf", b"a, b\n", "a, b", "\n", False, "utf-8", True),
    ("no final newline", b"a, b", "a, b", "\n", False, "utf-8", False),
    ("crlf", b"a, b\r\nsecond line\r\n", "a, b\nsecond line", "\r\n", False, "utf-8", True),
    ("bom", b"\xef\xbb\xbfa, b\n", "a, b", "\n", True, "utf-8", True),
    ("bom crlf", b"\xef\xbb\xbfa, b\r\n", "a, b", "\r\n", True, "utf-8", True),
    ("mixed", b"a\r\nb\nc\n", "a\nb\nc", "\n", False, "utf-8", True),
    ("blank lines", b"a\n\n\n", "a\n\n", "\n", False, "utf-8", True),
    ("japanese utf-8", "猫耳, 青い目\n".encode(), "猫耳, 青い目", "\n", False, "utf-8", True),
    ("cp932", "猫耳, 青い目\r\n".encode("cp932"), "猫耳, 青い目", "\r\n", False, "cp932", True),
    ("cp1252", "café".encode("cp1252"), "café", "\n", False, "cp1252", False),
    ("utf-16", "a, b\n".encode("utf-16"), "a, b", "\n", False, "utf-16", True),
    ("empty", b"", "", "\n", False, "utf-8", False),
]


@pytest.mark.parametrize("name,data,text,newline,bom,encoding,final", STYLES, ids=[s[0] for s in STYLES])
def test_read_detects_the_style(tmp_path: Path, name: str, data: bytes, text: str, newline: str, bom: bool,
                                encoding: str, final: bool) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    caption = read_caption(path)
    assert caption is not None
    assert (caption.text, caption.newline, caption.bom, caption.encoding, caption.final_newline) == (
        text, newline, bom, encoding, final,
    )
    assert caption.size == len(data) and caption.mtime_ns == path.stat().st_mtime_ns
    assert caption.legacy_encoding == (encoding != "utf-8")


@pytest.mark.parametrize("name,data", [(s[0], s[1]) for s in STYLES], ids=[s[0] for s in STYLES])
def test_unchanged_text_keeps_the_file_byte_for_byte(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    caption = read_caption(path)
    result = save_caption(path, caption.text, expected=caption)
    assert result.status == "unchanged" and not result.wrote and result.backup is None
    assert path.read_bytes() == data
    assert not (tmp_path / BACKUP_DIR_NAME).exists()


CHANGED = [
    (b"a, b\r\nsecond line\r\n", b"a, b, c\r\nsecond line\r\n"),
    (b"\xef\xbb\xbfa, b\n", b"\xef\xbb\xbfa, b, c\n"),
    (b"a, b", b"a, b, c"),
    ("猫耳, b\r\n".encode("cp932"), "猫耳, b, c\r\n".encode()),
    ("a, b\n".encode("utf-16"), b"a, b, c\n"),
]


@pytest.mark.parametrize("old,new", CHANGED)
def test_changed_text_keeps_newline_bom_and_final_newline(tmp_path: Path, old: bytes, new: bytes) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(old)
    caption = read_caption(path)
    first, _, rest = caption.text.partition("\n")
    result = save_caption(path, first + ", c" + ("\n" + rest if rest else ""), expected=caption)
    assert result.status == "written" and path.read_bytes() == new
    assert result.backup is not None and result.backup.read_bytes() == old
    assert result.converted_from == (caption.encoding if caption.legacy_encoding else None)
    assert read_caption(path) == result.caption  # usable as `expected` for the next save


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"\xff\x81\xfd", "not text in UTF-8"),
        (b"a, b\x00c", "NUL"),
        (b"x" * (captions_module.MAX_CAPTION_BYTES + 1), "too large"),
    ],
)
def test_unreadable_captions(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    with pytest.raises(CaptionReadError, match=reason) as caught:
        read_caption(path)
    assert str(path) in str(caught.value)


def test_missing_caption_is_none_and_folder_is_an_error(tmp_path: Path) -> None:
    assert read_caption(tmp_path / "none.txt") is None
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(CaptionReadError, match="folder"):
        read_caption(tmp_path / "dir.txt")


def test_new_caption(tmp_path: Path) -> None:
    path = tmp_path / "new.txt"
    result = save_caption(path, "a, b", expected=None)
    assert result.status == "created" and result.backup is None and path.read_bytes() == b"a, b\n"
    assert save_caption(path, "a, b\n", expected=result.caption).status == "unchanged"


# --- backups -------------------------------------------------------------------------------------------------


def test_backup_location_and_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions_module, "_timestamp", lambda: "20250101T000000000000Z")
    path = tmp_path / "3_char" / "a.txt"
    path.parent.mkdir()
    path.write_bytes(b"one\n")
    first = save_caption(path, "two", expected=read_caption(path), root=tmp_path)
    second = save_caption(path, "three", expected=first.caption, root=tmp_path)
    folder = tmp_path / BACKUP_DIR_NAME / "3_char"
    assert first.backup == folder / "a.20250101T000000000000Z.txt"
    assert second.backup == folder / "a.20250101T000000000000Z-1.txt"
    assert first.backup.read_bytes() == b"one\n" and second.backup.read_bytes() == b"two\n"
    assert path.read_bytes() == b"three\n"


def test_backup_dir_option(tmp_path: Path) -> None:
    path = tmp_path / "a.caption"
    path.write_bytes(b"old")
    result = save_caption(path, "new", expected=read_caption(path), backup_dir=tmp_path / "elsewhere")
    assert result.backup.parent == tmp_path / "elsewhere" and result.backup.suffix == ".caption"
    assert result.backup.read_bytes() == b"old"


def test_failed_backup_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"old\n")
    (tmp_path / BACKUP_DIR_NAME).write_text("a file where the backup folder should be")
    with pytest.raises(CaptionWriteError, match="cannot back up"):
        save_caption(path, "new", expected=read_caption(path))
    assert path.read_bytes() == b"old\n"


# --- conflicts -----------------------------------------------------------------------------------------------


def test_conflict_when_changed_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"mine\n")
    caption = read_caption(path)
    path.write_bytes(b"someone else's edit\n")
    with pytest.raises(CaptionConflictError, match="changed on disk") as caught:
        save_caption(path, "mine, more", expected=caption)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == b"someone else's edit\n"
    forced = save_caption(path, "mine, more", expected=caption, force=True)
    assert path.read_bytes() == b"mine, more\n" and forced.backup.read_bytes() == b"someone else's edit\n"


def test_touch_without_change_is_not_a_conflict(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"a\n")
    caption = read_caption(path)
    os.utime(path, ns=(caption.mtime_ns + 5_000_000_000, caption.mtime_ns + 5_000_000_000))
    assert save_caption(path, "b", expected=caption).status == "written"


def test_conflict_when_deleted_or_created(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"a\n")
    caption = read_caption(path)
    path.unlink()
    with pytest.raises(CaptionConflictError, match="deleted"):
        save_caption(path, "b", expected=caption)
    assert not path.exists()
    path.write_bytes(b"appeared\n")
    with pytest.raises(CaptionConflictError, match="appeared"):
        save_caption(path, "b", expected=None)
    assert path.read_bytes() == b"appeared\n"


# --- failed writes -------------------------------------------------------------------------------------------


def failing_writer(error: BaseException, after_chunks: int = 0):
    """A write_atomically that really starts writing, then fails with `error` (the temp file is cleaned up)."""

    def write(path: Path, chunks, **options):
        def broken():
            for i, chunk in enumerate(chunks):
                if i == after_chunks:
                    yield chunk[: len(chunk) // 2]
                    raise error
                yield chunk

        return real_write_atomically(path, broken(), **options)

    return write


@pytest.mark.parametrize(
    "error,reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only"),
    ],
)
def test_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError,
                                          reason: str) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"old, tags\n")
    caption = read_caption(path)
    monkeypatch.setattr(captions_module, "write_new", failing_writer(error))
    with pytest.raises(CaptionWriteError, match=reason) as caught:
        save_caption(path, "new, tags", expected=caption)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == b"old, tags\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [BACKUP_DIR_NAME, "a.txt"]  # no temp file left
    assert list((tmp_path / BACKUP_DIR_NAME).iterdir()) == []  # the unneeded backup was removed
    monkeypatch.undo()
    assert save_caption(path, "new, tags", expected=caption).status == "written"  # nothing was left half-done


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="chmod does not stop root (or non-POSIX)")
def test_real_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "a.txt"
    path.write_bytes(b"old\n")
    caption = read_caption(path)
    folder.chmod(0o555)
    try:
        with pytest.raises(CaptionWriteError):
            save_caption(path, "new", expected=caption, backup_dir=tmp_path / "backups")
        assert path.read_bytes() == b"old\n"
    finally:
        folder.chmod(0o755)


def test_text_that_cannot_be_stored(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    with pytest.raises(CaptionWriteError, match="NUL"):
        save_caption(path, "a\x00b", expected=None)
    with pytest.raises(CaptionWriteError, match="UTF-8"):
        save_caption(path, "a\ud800b", expected=None)
    assert not path.exists()


# --- many files ----------------------------------------------------------------------------------------------


def make_files(folder: Path, count: int) -> list[CaptionChange]:
    changes = []
    for i in range(count):
        path = folder / f"{i}.txt"
        path.write_bytes(f"old {i}\n".encode())
        changes.append(CaptionChange(path, f"new {i}", read_caption(path)))
    return changes


def test_batch_reports_failures_and_goes_on(tmp_path: Path) -> None:
    changes = make_files(tmp_path, 4)
    changes[1].path.write_bytes(b"edited elsewhere\n")
    result = save_captions(changes, root=tmp_path)
    assert [f.path for f in result.failed] == [changes[1].path] and not result.ok
    assert isinstance(result.failed[0].error, CaptionConflictError)
    assert result.written == [changes[i].path for i in (0, 2, 3)]
    assert [c.path.read_text() for c in changes] == ["new 0\n", "edited elsewhere\n", "new 2\n", "new 3\n"]
    stamps = {p.name.split(".")[1] for p in (tmp_path / BACKUP_DIR_NAME).iterdir()}
    assert len(stamps) == 1  # one batch, one timestamp


@pytest.mark.parametrize("crash_at", [0, 2, 4])
def test_crash_mid_batch_leaves_every_file_old_or_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      crash_at: int) -> None:
    changes = make_files(tmp_path, 5)
    calls = []

    def write(path: Path, chunks, **options):
        calls.append(path)
        if len(calls) - 1 == crash_at:
            failing_writer(KeyboardInterrupt())(path, chunks)  # dies half-way through writing this file
        return real_write_atomically(path, chunks, **options)

    monkeypatch.setattr(captions_module, "write_new", write)
    with pytest.raises(KeyboardInterrupt):
        save_captions(changes, root=tmp_path)
    texts = [c.path.read_text() for c in changes]
    assert texts == [f"new {i}\n" for i in range(crash_at)] + [f"old {i}\n" for i in range(crash_at, 5)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != BACKUP_DIR_NAME) == [f"{i}.txt" for i in range(5)]


def test_batch_refuses_a_path_twice(tmp_path: Path) -> None:
    change = make_files(tmp_path, 1)[0]
    with pytest.raises(DatasetError, match="twice"):
        save_captions([change, change])
    assert change.path.read_text() == "old 0\n"


# --- properties ----------------------------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@settings(max_examples=150, deadline=None)
@given(text=texts, newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans(), final=st.booleans())
def test_encode_parse_round_trip(text: str, newline: str, bom: bool, final: bool) -> None:
    style = parse_caption(encode_caption("x", None))
    style = type(style)(**{**style.__dict__, "newline": newline, "bom": bom, "final_newline": final})
    parsed = parse_caption(encode_caption(text, style))
    assert parsed.text == normalise_text(text)
    assert parsed.bom == bom
    if "\n" in parsed.text or (final and parsed.text):
        assert parsed.newline == newline
