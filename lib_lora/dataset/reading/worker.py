"""A helper process that reads a large scan's files, so the scan uses a second CPU core.

Run as `python -I -S worker.py FOLDER`. Standard library only (the child imports nothing of the package, so it
starts in milliseconds), and it only reads the dataset. FOLDER holds three files the parent wrote: `request` (the
settings, then the shares of (image, caption) pairs, as frames), `claim` (two numbers the two processes share
through mmap: the share the helper is at, and the lowest share the parent has taken to read itself) and `answers`,
where the helper appends one frame per share it read: (index, answer), from the first share up until it meets the
parent's. Files, not pipes: neither process ever waits for the other to read or write.

For each pair an answer holds the caption's `(bytes, mtime_ns)`, None when there is no caption file, or False when
anything is not plainly fine (the image fails the signature check, the caption cannot be read whole): the parent
then reads that pair itself with the checks and messages of the package, so this file decides nothing a user reads.
"""

from __future__ import annotations

import marshal
import mmap
import os
import stat
import sys

READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
"""Flags to open a file the scan or a save reads (here, in the package's scan and in its saves alike): O_NONBLOCK so
that a pipe in a file's place does not wait for a writer forever (it changes nothing for a plain file); what is
not a plain file is then refused."""
_LENGTH = 8
CLAIM_BYTES = 16

Settings = tuple[tuple[tuple[int, bytes], ...] | None, int, int]
"""(image signatures as (offset, bytes), or None: images not checked; max pixels of a PNG; max caption bytes)."""
Share = tuple[list[str], list[str | None]]
"""(images, their caption files: None where the folder lists none)."""
Answer = list[tuple[bytes, int] | None | bool]


def frame(message: object) -> bytes:
    """`message` marshalled after its length."""
    data = marshal.dumps(message)
    return len(data).to_bytes(_LENGTH, "little") + data


def unframe(data: bytes | memoryview, offset: int) -> tuple[object, int] | None:
    """(the message framed at `offset` of `data`, the offset after it); None if `data` ends before the frame does."""
    if len(data) < offset + _LENGTH:
        return None
    end = offset + _LENGTH + int.from_bytes(data[offset:offset + _LENGTH], "little")
    return (marshal.loads(data[offset + _LENGTH:end]), end) if len(data) >= end else None


def get_claim(claim: mmap.mmap, slot: int) -> int:
    """Slot 0: the share the helper is at; slot 1: the lowest share the parent took."""
    return int.from_bytes(claim[slot * 8:slot * 8 + 8], "little")


def set_claim(claim: mmap.mmap, slot: int, value: int) -> None:
    claim[slot * 8:slot * 8 + 8] = value.to_bytes(8, "little")


def read_share(settings: Settings, share: Share) -> Answer:
    """For each pair of the share, in order: (caption bytes, mtime_ns), None (no caption) or False (redo)."""
    signatures, max_pixels, max_caption = settings
    images, captions = share
    answer: Answer = []
    for image, caption in zip(images, captions):
        if signatures is not None and not _image_fine(image, signatures, max_pixels):
            answer.append(False)
        else:
            answer.append(None if caption is None else _caption(caption, max_caption))
    return answer


def _image_fine(path: str, signatures: tuple[tuple[int, bytes], ...], max_pixels: int) -> bool:
    """Whether the image starts with a known signature (and a PNG's header size is within max_pixels)."""
    try:
        descriptor = os.open(path, READ_FLAGS)
        try:
            head = os.read(descriptor, 32)
        finally:
            os.close(descriptor)
    except OSError:
        return False
    if not has_signature(head, signatures):
        return False
    size = png_header_size(head)
    return size is None or size[0] * size[1] <= max_pixels


def has_signature(head: bytes, signatures: tuple[tuple[int, bytes], ...]) -> bool:
    """Whether a file's first bytes carry one of `signatures` ((offset, magic) pairs); the parent's check too."""
    return any(head[offset:offset + len(magic)] == magic for offset, magic in signatures)


def png_header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR within its first 24 bytes, None for anything else; the parent's check too."""
    if head.startswith(b"\x89PNG") and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def _caption(path: str, limit: int) -> tuple[bytes, int] | None | bool:
    """(bytes, mtime_ns) of a regular file of at most `limit` bytes read whole at once; None if it is gone."""
    try:
        descriptor = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or status.st_size > limit:
            return False
        data = os.read(descriptor, limit + 1)
        return (data, status.st_mtime_ns) if len(data) == status.st_size else False
    except OSError:
        return False
    finally:
        os.close(descriptor)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def main(folder: str) -> None:
    """Answer the shares of FOLDER/request into FOLDER/answers, front to back, until the parent's claim."""
    with open(os.path.join(folder, "request"), "rb") as source:
        request = source.read()
    settings, offset = unframe(request, 0)  # type: ignore[misc]
    with open(os.path.join(folder, "claim"), "r+b") as file, mmap.mmap(file.fileno(), CLAIM_BYTES) as claim:
        answers = os.open(os.path.join(folder, "answers"), os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0))
        try:
            index = 0
            while (found := unframe(request, offset)) is not None and index < get_claim(claim, 1):
                set_claim(claim, 0, index)
                share, offset = found
                _write_all(answers, frame((index, read_share(settings, share))))  # type: ignore[arg-type]
                index += 1
        finally:
            os.close(answers)


if __name__ == "__main__":
    main(sys.argv[1])
