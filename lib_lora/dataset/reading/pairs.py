"""Read the files a listing paired: each caption read, each image checked, bad ones as problems.

Each pair gives its Caption (None when the folder listed no caption file, or it went away meanwhile) or the
`DatasetProblem` that leaves it out: an image that fails the check asked for, a caption that cannot be read.
A large scan (`CHILD_FROM` pairs, images unchecked or checked by signature, two cores or more) is read mostly by a
helper process (helper, worker) from its first share on, while this process parses what it answered and
reads shares from the last: the two meet in the middle. Its reads then never wait for this process's threads (or
its host's: a busy thread in the same process made each read wait its turn at the interpreter, 5k images 1.7 s
instead of 0.1 s). Any pair the helper does not find plainly fine, and every share if it fails, is read here.
A smaller scan reads here: in one thread, or in threads when its first files had to wait for a disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..caption_format import MAX_CAPTION_BYTES, Caption, parse_caption, read_caption
from ..errors import CaptionReadError, ImageReadError
from ..images import DEFAULT_MAX_PIXELS, IMAGE_SIGNATURES, check_image_signature, image_size
from ..listing import Pair
from ..problems import DatasetProblem, ProblemKind
from .helper import ReadHelper
from .worker import Answer

SIGNATURE = "signature"
"""`check_images` value: each image's first bytes are checked (a known image signature, not empty), no header
parsed; what the Dataset tab uses to list 50,000 images in seconds. Damage beyond that is found when decoded."""

READ_THREADS = 4
"""Threads reading a scan in this process once its files turn out to come from a disk (see _read_here)."""
_PROBE = 256
_WAITED_S = 0.005
CHILD_FROM = 2000
"""Scans of at least this many pairs are read by a helper process (starting one costs 10-50 ms)."""
CHILD_SHARE = 2048
"""Pairs per share: the helper reads shares from the first, this process parses its answers as they come and
meanwhile reads shares from the last."""
_POLL_S = 0.001
_READ_CHUNK = 512

Read = Caption | DatasetProblem | None


def read_pairs(pairs: list[Pair], check_images: bool | str) -> list[Read]:
    """For each pair, in order: its caption (None: no caption file) or the problem that leaves it out, its image
    checked as `check_images` asks."""
    check = _image_check(check_images)
    if check_images in (False, SIGNATURE) and len(pairs) >= CHILD_FROM and _cores() > 1:
        shares = [pairs[start:start + CHILD_SHARE] for start in range(0, len(pairs), CHILD_SHARE)]
        settings = (IMAGE_SIGNATURES if check_images == SIGNATURE else None, DEFAULT_MAX_PIXELS, MAX_CAPTION_BYTES)
        helper = ReadHelper.start(settings, [
            ([str(pair[0]) for pair in share], [str(pair[1]) if pair[2] else None for pair in share])
            for share in shares
        ])
        if helper is not None:
            return _read_with(helper, shares, check)
    return _read_here(pairs, check)


def _read_with(helper: ReadHelper, shares: list[list[Pair]], check: Callable[[Path], object] | None) -> list[Read]:
    """The reads of `shares`: the helper's answers parsed as they come, meanwhile the last shares it has not begun
    read here; what it failed to answer read here at the end."""
    done: dict[int, list[Read]] = {}
    try:
        while len(done) < len(shares):
            for index, answer in helper.ready():
                if index not in done:  # (a share both began at once is read twice; the first read counts)
                    done[index] = _parsed(shares[index], answer, check)
            taken = helper.take_back()
            if taken is not None:
                done[taken] = [_read_pair(pair, check) for pair in shares[taken]]
            elif helper.over():
                break
            elif len(done) < len(shares):
                time.sleep(_POLL_S)
    finally:
        helper.close()
    return [read for index, share in enumerate(shares)
            for read in (done[index] if index in done else _read_here(share, check))]


def _parsed(share: list[Pair], answer: Answer, check: Callable[[Path], object] | None) -> list[Read]:
    """The reads of a share from the helper's answer: captions parsed, the pairs it left read here."""
    reads: list[Read] = []
    for pair, entry in zip(share, answer):
        if entry is None:
            reads.append(None)
        elif entry is False:
            reads.append(_read_pair(pair, check))
        else:
            try:
                reads.append(parse_caption(entry[0], mtime_ns=entry[1]))  # type: ignore[index]
            except CaptionReadError as error:
                reads.append(DatasetProblem(ProblemKind.UNREADABLE_CAPTION, (pair[1], pair[0]), error.reason))
    return reads


def _read_here(pairs: list[Pair], check: Callable[[Path], object] | None) -> list[Read]:
    """The reads of `pairs` in this process: in this thread while the files come from memory, in READ_THREADS
    threads once the first `_PROBE` had to wait (for a disk: then threads overlap the waits, while from memory
    they only wait for each other's turn at the interpreter, measured 3x slower than one thread)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    reads = [_read_pair(pair, check) for pair in pairs[:_PROBE]]
    waited = time.perf_counter() - wall
    if waited < _WAITED_S or waited < 2 * (time.thread_time() - cpu):
        return reads + [_read_pair(pair, check) for pair in pairs[_PROBE:]]

    def read(part: list[Pair]) -> list[Read]:
        return [_read_pair(pair, check) for pair in part]

    rest = pairs[_PROBE:]
    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="lora-studio-scan") as pool:
        for part in pool.map(read, [rest[start:start + _READ_CHUNK] for start in range(0, len(rest), _READ_CHUNK)]):
            reads.extend(part)
    return reads


def _image_check(check_images: bool | str) -> Callable[[Path], object] | None:
    """The function checking one image for `check_images` (None: not checked)."""
    if not check_images:
        return None
    return check_image_signature if check_images == SIGNATURE else image_size


def _read_pair(pair: Pair, check: Callable[[Path], object] | None) -> Read:
    image, caption_path, caption_listed, _ = pair
    if check is not None:
        try:
            check(image)
        except ImageReadError as error:
            return DatasetProblem(ProblemKind.UNREADABLE_IMAGE, (image,), error.reason)
    if not caption_listed:
        return None
    try:
        return read_caption(caption_path)
    except CaptionReadError as error:
        return DatasetProblem(ProblemKind.UNREADABLE_CAPTION, (caption_path, image), error.reason)


def _cores() -> int:
    """The CPU cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1
