"""Image sizes for the bucket scan, read from headers only, many files at once on threads.

Pillow's `Image.open` parses the header lazily and decodes nothing until `load()`, so the size, and the EXIF
orientation of JPEG and WebP files, cost one small read per file. PNG is the exception: Pillow's `getexif()`
decodes the whole image when the header carries no eXIf chunk, in case one follows the pixel data. Instead of
that decode, the last 64 KiB of the file are searched for an eXIf chunk whose CRC checks out (hand-written
because Pillow offers no way to walk the chunks after IDAT without decoding them; a larger trailing EXIF block
than that is not seen, and training then stops with "the image changed on disk" rather than using a wrong size).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ..dataset.errors import ImageReadError
from ..dataset.images import DEFAULT_MAX_PIXELS, image_errors

SCAN_WORKERS = 8
"""Threads reading headers when the reads wait on the disk (a cold cache, a network drive)."""
IO_BOUND_RATIO = 3.0
"""Threads are used when the first chunk took this many times longer than the thread spent on a CPU or waiting
for one (Linux's schedstat; elsewhere its CPU time alone): the reads wait on the disk. From the page cache the
work is Python parsing under the GIL, and threads only contend for it (measured 2-3x slower on 2 cores with
44,417 small PNGs), so that case stays on the calling thread."""
_SCHEDSTAT = Path("/proc/thread-self/schedstat")
SCAN_CHUNK = 256
"""Files per task: progress is reported after each, and the pool's overhead stays small against the reads."""
_PNG_TAIL = 1 << 16
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
@dataclass(frozen=True)
class ImageFacts:
    """What the scan knows of an image without decoding it: its shown size and the file's identity on disk."""

    size: tuple[int, int]
    """(width, height) as the image is shown (EXIF rotation applied, as dataset.images.open_image does)."""
    file_size: int
    mtime_ns: int


def read_image_facts(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFacts:
    """The image's facts from its header; ImageReadError for an empty, unidentifiable or oversized file."""
    with image_errors(path, "cannot read the image header"):
        status = path.stat()
        if status.st_size == 0:
            raise ImageReadError("empty file (0 bytes)", path=path)
        with open(path, "rb") as handle, Image.open(handle) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageReadError(f"{width}x{height} is more than the limit of {max_pixels} pixels", path=path)
            orientation = _orientation(image, handle, status.st_size)
    size = (height, width) if orientation in _ROTATING_ORIENTATIONS else (width, height)
    return ImageFacts(size, status.st_size, status.st_mtime_ns)


def scan_image_facts(paths: Sequence[Path], *, progress: Callable[[int, int], None] | None = None,
                     workers: int = SCAN_WORKERS) -> list[ImageFacts | ImageReadError]:
    """`read_image_facts` of every path, in order; a bad file gives its error in its place.

    The first chunk of SCAN_CHUNK files is read here and timed; when it waited on the disk (IO_BOUND_RATIO) the
    rest is read on `workers` threads. `progress(done, total)` is called from this thread after each chunk.
    """
    chunks = [paths[start:start + SCAN_CHUNK] for start in range(0, len(paths), SCAN_CHUNK)]
    results: list[ImageFacts | ImageReadError] = []

    def add(chunk: list[ImageFacts | ImageReadError]) -> None:
        results.extend(chunk)
        if progress is not None:
            progress(len(results), len(paths))

    if progress is not None:
        progress(0, len(paths))
    if not chunks:
        return results
    wall, busy = time.perf_counter(), _busy_seconds()
    add(_read_chunk(chunks[0]))
    waited = time.perf_counter() - wall > IO_BOUND_RATIO * max(_busy_seconds() - busy, 1e-6)
    rest = chunks[1:]
    if not waited or workers <= 1 or not rest:
        for chunk in rest:
            add(_read_chunk(chunk))
        return results
    with ThreadPoolExecutor(max_workers=min(workers, len(rest)), thread_name_prefix="scan") as pool:
        for chunk in pool.map(_read_chunk, rest):
            add(chunk)
    return results


def _busy_seconds() -> float:
    """Seconds this thread has run or waited to run (so a machine busy with other work does not look like disk
    waits); its CPU time where Linux's schedstat is not there."""
    try:
        running, waiting = _SCHEDSTAT.read_text().split()[:2]
        return (int(running) + int(waiting)) / 1e9
    except (OSError, ValueError):
        return time.thread_time()


def _read_chunk(paths: Sequence[Path]) -> list[ImageFacts | ImageReadError]:
    out: list[ImageFacts | ImageReadError] = []
    for path in paths:
        try:
            out.append(read_image_facts(path))
        except ImageReadError as error:
            out.append(error)
    return out


def _orientation(image: Image.Image, handle: BinaryIO, file_size: int) -> int:
    """The EXIF orientation (1 when there is none or it is damaged), never decoding the pixels."""
    try:
        if image.format != "PNG" or "exif" in image.info:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1))
        data = _trailing_png_exif(handle, file_size)
        if data is None:
            return 1
        exif = Image.Exif()
        exif.load(data)
        return int(exif.get(_EXIF_ORIENTATION, 1))
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error, OSError):
        return 1  # as open_image: a broken EXIF block leaves the pixels as stored


def _trailing_png_exif(handle: BinaryIO, file_size: int) -> bytes | None:
    """The data of an eXIf chunk in the last _PNG_TAIL bytes of a PNG (CRC checked), or None."""
    handle.seek(max(0, file_size - _PNG_TAIL))
    tail = handle.read(_PNG_TAIL)
    at = tail.rfind(b"eXIf")
    while at >= 4:
        length = int.from_bytes(tail[at - 4:at], "big")
        end = at + 4 + length
        if end + 4 <= len(tail) and zlib.crc32(tail[at:end]) == int.from_bytes(tail[end:end + 4], "big"):
            return tail[at + 4:end]
        at = tail.rfind(b"eXIf", 0, at)
    return None
