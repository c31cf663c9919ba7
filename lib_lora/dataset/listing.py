"""List a dataset folder by name only: its folders depth first, and per folder its images paired with their captions.

No file is opened here (`os.scandir` only). What cannot be paired becomes a `DatasetProblem`: two images sharing a
caption file, a caption without an image, a folder that cannot be listed, a symlinked folder (never followed).
Hidden entries (a leading ".") and the caption backups are skipped. Images come in natural order ("img2" before
"img10"), folders too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from .backups import BACKUP_DIR_NAME
from .images import IMAGE_SUFFIXES
from .problems import DatasetProblem, ProblemKind

_REPEATS_FOLDER = re.compile(r"^(\d+)_(.+)$")
_NUMBERS = re.compile(r"(\d+)")

Pair = tuple[Path, Path, bool, bool]
"""(image, its caption file, the caption file is listed in the folder, the image or the caption is a link)."""


@dataclass(frozen=True)
class FolderImages:
    """One folder's images paired with their caption files, in natural order, with the folder's subset facts."""

    subset: str
    repeats: int | None
    name: str
    pairs: list[Pair]


def parse_repeats_folder(name: str) -> tuple[int | None, str]:
    """(repeats, name) for a `<repeats>_<name>` folder name such as "10_mychar"; (None, name) otherwise."""
    match = _REPEATS_FOLDER.match(name)
    if match is None:
        return None, name
    return int(match.group(1)), match.group(2)


def list_images(
    root: Path, caption_ext: str, recursive: bool, problems: list[DatasetProblem]
) -> Iterator[FolderImages]:
    """The folders of `root` (itself first, then, if recursive, its subfolders depth first) that hold images,
    each with its image/caption pairs; what cannot be paired or listed is appended to `problems`."""
    for folder, files, names, links in _walk(root, recursive, problems):
        listed = _pair_folder(root, folder, files, names, links, caption_ext, problems)
        if listed.pairs:
            yield listed


def natural_key(name: str) -> list[object]:
    """Sort key putting "img2" before "img10" (numbers compared as numbers, text case-insensitively, then as is)."""
    # split() with a group alternates text and digits (odd parts are the numbers), so equal positions hold the same
    # kind: (value, part) pairs flattened compare as the (kind, value, part) tuples would
    parts = _NUMBERS.split(name)
    if len(parts) == 3:  # one number, as in "img000123.png": the same list, built without the general loop
        head, digits, tail = parts
        return [head.casefold(), head, int(digits), digits, tail.casefold(), tail]
    values: list[object] = list(parts)
    values[0::2] = map(str.casefold, parts[0::2])
    values[1::2] = map(int, parts[1::2])
    return list(chain.from_iterable(zip(values, parts)))


def _child(folder: Path) -> Callable[[str], Path]:
    """folder / name, made fast: pathlib's own child constructor where this Python has it (parsing 100,000 file
    names through Path() costs seconds on Python 3.11), else the public joinpath."""
    make = getattr(folder, "_make_child_relpath", None)
    return make if callable(make) else folder.joinpath


def _walk(
    folder: Path, recursive: bool, problems: list[DatasetProblem]
) -> Iterator[tuple[Path, list[str], set[str], set[str]]]:
    """(folder, the names of its visible regular files, the names of all its entries, the names that are links)
    for folder and, if recursive, its visible subfolders in natural order, depth first."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError as error:
        problems.append(
            DatasetProblem(ProblemKind.UNREADABLE_FOLDER, (folder,), f"cannot list the folder: {error.strerror}")
        )
        return
    files: list[str] = []
    subfolders: list[str] = []
    names = {entry.name for entry in entries}
    links: set[str] = set()
    child = _child(folder)
    for entry in entries:
        if entry.name.startswith(".") or entry.name == BACKUP_DIR_NAME:
            continue
        try:
            if entry.is_file(follow_symlinks=False):  # as good as every entry: one call, no stat (d_type)
                files.append(entry.name)
                continue
            if entry.is_symlink():
                links.add(entry.name)
                if entry.is_dir():
                    problems.append(DatasetProblem(
                        ProblemKind.SYMLINKED_FOLDER, (child(entry.name),), "symlinked folder not followed",
                    ))
                    continue
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.name)
            elif entry.is_file():
                files.append(entry.name)
        except OSError:
            continue
    yield folder, files, names, links
    if recursive:
        for name in sorted(subfolders, key=natural_key):
            yield from _walk(child(name), recursive, problems)


def _pair_folder(
    root: Path, folder: Path, files: list[str], names: set[str], links: set[str], caption_ext: str,
    problems: list[DatasetProblem],
) -> FolderImages:
    """The folder's images paired with their captions; same-stem images and orphan captions go to `problems`."""
    repeats, name = parse_repeats_folder(folder.name)
    child = _child(folder)
    images: list[tuple[str, str]] = []  # (stem, file name); the walk skips names with a leading dot
    captions: list[tuple[str, str]] = []  # the same for the files named like captions
    for file in files:  # one pass: the caption extension is one suffix (validate_caption_ext), so it is the last
        stem, _, suffix = file.rpartition(".")
        if not stem:
            continue
        suffix = f".{suffix}"
        if suffix.lower() in IMAGE_SUFFIXES:
            images.append((stem, file))
        elif suffix == caption_ext:
            captions.append((stem, file))
    images.sort(key=lambda image: natural_key(image[1]))
    by_stem: dict[str, list[str]] = {}
    for stem, file in images:
        by_stem.setdefault(stem, []).append(file)
    pairs: list[Pair] = []
    for stem, same in by_stem.items():
        caption_name = stem + caption_ext
        if len(same) > 1:
            problems.append(DatasetProblem(
                ProblemKind.SAME_STEM, (*map(child, same), child(caption_name)),
                f"{', '.join(same)} would share the caption {caption_name}; rename all but one to use them",
            ))
            continue
        image = same[0]
        pairs.append((child(image), child(caption_name), caption_name in names,
                      bool(links) and (image in links or caption_name in links)))
    orphans = [file for stem, file in captions if stem not in by_stem]
    for file in sorted(orphans, key=natural_key):
        problems.append(DatasetProblem(ProblemKind.ORPHAN_CAPTION, (child(file),), "caption without an image"))
    return FolderImages(folder.relative_to(root).as_posix(), repeats, name, pairs)
