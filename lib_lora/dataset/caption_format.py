"""What a caption file holds and how it is read: its text, encoding and line-break style, exact both ways.

Reading (`read_caption`): UTF-8, with or without a BOM, is the format every trainer reads. A file that is not
UTF-8 is decoded, in this order, as UTF-16 (only with a UTF-16 BOM), cp932 (Shift-JIS as Windows writes it, the
usual legacy encoding of our Japanese users) and cp1252 (Windows Western); `Caption.encoding` says which one
was used, so the UI can flag the file. Bytes none of them decodes, NUL bytes or a file over MAX_CAPTION_BYTES
raise CaptionReadError. A missing file is `None` (no caption). `Caption.text` has "\\n" line breaks and no
final line break; the file's style (CRLF or LF, BOM, final line break) is kept in the Caption.

`encode_caption` gives the bytes that store a text in a file's style; saving them safely is captions.py's.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .backups import describe_os_error
from .errors import CaptionReadError
from .reading.worker import READ_FLAGS

MAX_CAPTION_BYTES = 1 << 20
"""A caption file larger than this (1 MiB) is refused as not a caption."""

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_LEGACY_ENCODINGS = ("cp932", "cp1252")


@dataclass(frozen=True)
class Caption:
    """A caption as read from disk: the text plus what is needed to write it back in the same style and to
    notice a change on disk (mtime_ns, size and the SHA-256 `digest` of the bytes)."""

    text: str
    newline: str
    bom: bool
    encoding: str
    mtime_ns: int
    size: int
    digest: str
    final_newline: bool = False

    @property
    def legacy_encoding(self) -> bool:
        """Whether the file is not UTF-8 (it will be converted to UTF-8 when saved)."""
        return self.encoding != "utf-8"


def digest_bytes(data: bytes) -> str:
    """The digest a Caption records for file content `data` (SHA-256, hex)."""
    return hashlib.sha256(data).hexdigest()


def decode_caption_bytes(data: bytes) -> tuple[str, str, bool]:
    """(text as stored, encoding name, had a UTF-8 BOM) for caption bytes; CaptionReadError (no path) if none fits."""
    if data.startswith(_UTF8_BOM):
        candidates: tuple[str, ...] = ("utf-8",)
        body, bom = data[len(_UTF8_BOM):], True
    elif data.startswith(_UTF16_BOMS):
        candidates, body, bom = ("utf-16",), data, False
    else:
        candidates, body, bom = ("utf-8", *_LEGACY_ENCODINGS), data, False
    for encoding in candidates:
        try:
            text = body.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\x00" in text:
            raise CaptionReadError(f"contains NUL characters: not a text file (read as {encoding})")
        return text, encoding, bom
    raise CaptionReadError(
        "not text in UTF-8, UTF-16, cp932 (Shift-JIS) or cp1252: cannot decode it without losing characters"
    )


def parse_caption(data: bytes, *, mtime_ns: int = 0) -> Caption:
    """The Caption for file content `data` (style detected, one final line break moved into final_newline)."""
    raw, encoding, bom = decode_caption_bytes(data)
    crlf = raw.count("\r\n")
    newline = "\r\n" if crlf and crlf == raw.count("\n") == raw.count("\r") else "\n"
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    final_newline = text.endswith("\n")
    if final_newline:
        text = text[:-1]
    return Caption(
        text=text, newline=newline, bom=bom, encoding=encoding, mtime_ns=mtime_ns, size=len(data),
        digest=digest_bytes(data), final_newline=final_newline,
    )


def encode_caption(text: str, style: Caption | None) -> bytes:
    """The UTF-8 bytes that store `text` in the style of `style` (None: LF, no BOM, final line break).

    A final line break is added when the style has one, unless `text` already ends with a line break.
    """
    body = normalise_line_breaks(text)
    if (style is None or style.final_newline) and not body.endswith("\n"):
        body += "\n"
    if style is not None and style.newline != "\n":
        body = body.replace("\n", style.newline)
    prefix = _UTF8_BOM if style is not None and style.bom else b""
    return prefix + body.encode("utf-8")


def normalise_line_breaks(text: str) -> str:
    """`text` with CRLF and lone CR line breaks made "\\n"."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalise_text(text: str) -> str:
    """Caption text as reading its file back gives it: "\\n" line breaks and no final line break."""
    text = normalise_line_breaks(text)
    return text[:-1] if text.endswith("\n") else text


def read_caption(path: Path) -> Caption | None:
    """The caption stored at `path`, or None when there is no such file; CaptionReadError when unreadable."""
    path = path if isinstance(path, Path) else Path(path)  # a Path is not parsed again (50,000 calls per load)
    try:
        data, status = read_file_bytes(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CaptionReadError(f"cannot read the caption: {describe_os_error(error)}", path=path) from error
    try:
        return parse_caption(data, mtime_ns=status.st_mtime_ns)
    except CaptionReadError as error:
        raise CaptionReadError(error.reason, path=path) from None


def read_file_bytes(path: Path, *, follow: bool = True) -> tuple[bytes, os.stat_result]:
    """The file's content and status read from one open file; OSError for a directory or an oversized file
    (and, unless `follow`, for a link)."""
    flags = READ_FLAGS | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    descriptor = os.open(path, flags)  # plain descriptor reads: a buffered file object costs more than the read
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) and not stat.S_ISDIR(status.st_mode):  # a folder fails as it reads
            raise OSError(errno.EINVAL, "it is a pipe, socket or device, not a file")
        if status.st_size > MAX_CAPTION_BYTES:
            raise OSError(errno.EFBIG, f"{status.st_size} bytes is too large for a caption (limit {MAX_CAPTION_BYTES})")
        chunks = [os.read(descriptor, MAX_CAPTION_BYTES + 1)]
        size = len(chunks[0])
        if size == status.st_size and stat.S_ISREG(status.st_mode):  # the whole file at once (as good as always):
            return chunks[0], status  # what it held then, so no second read() to see its end
        while chunks[-1] and size <= MAX_CAPTION_BYTES:  # a short read is not the end until read() gives b""
            chunks.append(os.read(descriptor, MAX_CAPTION_BYTES + 1 - size))
            size += len(chunks[-1])
        return b"".join(chunks), status
    finally:
        os.close(descriptor)
