"""Scan a dataset folder into image + caption items, sd-scripts' `<repeats>_<name>` subfolders included.

A scan never raises for a bad file inside the folder: unreadable images or captions, two images sharing a
caption file (`a.png` + `a.jpg` -> `a.txt`), captions without an image and folders that cannot be listed become
`DatasetProblem`s, and the files concerned are left out of `items` (never merged or guessed at). Hidden files
and folders (a leading "."), our backup folder among them, are skipped; symlinked folders are not followed.
`leave_out_links` also leaves out the items whose image or caption links outside the folder (what the Dataset
tab does with its allowed folders, and the tagger with the dataset folder).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from itertools import chain
from pathlib import Path

from ..atomic import rename_noreplace
from .captions import BACKUP_DIR_NAME, Caption, read_caption
from .errors import CaptionReadError, DatasetError, ImageReadError
from .gc_pause import paused_gc
from .images import IMAGE_SUFFIXES, check_image_signature, image_size
from .roots import AllowedRoots

ROOT_SUBSET = "."
"""The `subset` of items directly in the dataset root."""

SIGNATURE = "signature"
"""`check_images` value: each image's first bytes are checked (a known image signature, not empty), no header
parsed; what the Dataset tab uses to list 50,000 images in seconds. Damage beyond that is found when decoded."""

_READ_THREADS = 8
_READ_CHUNK = 256

_REPEATS_FOLDER = re.compile(r"^(\d+)_(.+)$")
_CAPTION_EXT = re.compile(r"^\.[^./\\\x00-\x1f\s]+$")


class ProblemKind(str, Enum):
    SAME_STEM = "same_stem"
    UNREADABLE_IMAGE = "unreadable_image"
    UNREADABLE_CAPTION = "unreadable_caption"
    ORPHAN_CAPTION = "orphan_caption"
    UNREADABLE_FOLDER = "unreadable_folder"
    SYMLINKED_FOLDER = "symlinked_folder"
    LINK_OUTSIDE = "link_outside"


@dataclass(frozen=True)
class DatasetProblem:
    """Something in the folder that was left out of the items, with the files concerned and why."""

    kind: ProblemKind
    paths: tuple[Path, ...]
    message: str

    def __str__(self) -> str:
        return f"{self.paths[0]}: {self.message}" if self.paths else self.message


@dataclass(frozen=True)
class DatasetItem:
    """One image and its caption file; `caption` is None when that file does not exist yet.

    `subset` is the image's folder relative to the root ("." for the root itself); `repeats` and `name` come
    from that folder's `<repeats>_<name>` form (repeats None and name = the folder name otherwise).
    """

    image: Path
    caption_path: Path
    caption: Caption | None
    subset: str
    repeats: int | None
    name: str

    @property
    def text(self) -> str:
        """The caption text, "" when there is no caption file."""
        return self.caption.text if self.caption is not None else ""


@dataclass(frozen=True)
class Subset:
    """A folder of the dataset holding images: its repeats/name, how many images and how many have captions."""

    path: str
    folder: Path
    repeats: int | None
    name: str
    images: int
    captioned: int


@dataclass
class Dataset:
    """The result of scan_dataset; `key(item)` (the image path relative to root) identifies items.

    `linked` holds the images whose image or caption file is a link (None: not known, any item may be one)."""

    root: Path
    caption_ext: str
    items: list[DatasetItem]
    problems: list[DatasetProblem]
    recursive: bool = True
    check_images: bool | str = True
    linked: frozenset[Path] | None = None
    _by_key: dict[str, DatasetItem] = field(default_factory=dict, init=False, repr=False, compare=False)
    _subsets: tuple[int, int, list[Subset]] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._prefix = str(self.root) + os.sep
        self._by_key = {self.key(item): item for item in self.items}

    def key(self, item: DatasetItem) -> str:
        """The item's image path relative to the root, with "/" separators."""
        text = str(item.image)
        if text.startswith(self._prefix):  # as every scanned item: plain string work, no path parsing
            relative = text[len(self._prefix):]
            return relative if os.sep == "/" else relative.replace(os.sep, "/")
        return item.image.relative_to(self.root).as_posix()

    def keys(self) -> list[str]:
        """key(item) of every item, in item order."""
        return list(self._by_key)

    def item(self, key: str) -> DatasetItem:
        """The item whose key(item) is `key`; KeyError if none."""
        return self._by_key[key]

    def captions(self) -> dict[str, str]:
        """Caption text by item key ("" for images without a caption), the input of the tag operations."""
        return {key: item.text for key, item in self._by_key.items()}

    def subsets(self) -> list[Subset]:
        """The folders holding items, in scan order, with repeats, names and counts (counted once per item list)."""
        if self._subsets is not None and self._subsets[:2] == (id(self.items), len(self.items)):
            return list(self._subsets[2])
        grouped: dict[str, list[DatasetItem]] = {}
        for item in self.items:
            grouped.setdefault(item.subset, []).append(item)
        subsets = [
            Subset(
                path=subset,
                folder=self.root / subset if subset != ROOT_SUBSET else self.root,
                repeats=items[0].repeats,
                name=items[0].name,
                images=len(items),
                captioned=sum(item.caption is not None for item in items),
            )
            for subset, items in grouped.items()
        ]
        self._subsets = (id(self.items), len(self.items), subsets)
        return list(subsets)

    def may_link(self, item: DatasetItem) -> bool:
        """Whether the item's image or caption may be a link (always True when the scan did not record links)."""
        return self.linked is None or (bool(self.linked) and item.image in self.linked)  # no Path hashed when none


def parse_repeats_folder(name: str) -> tuple[int | None, str]:
    """(repeats, name) for a `<repeats>_<name>` folder name such as "10_mychar"; (None, name) otherwise."""
    match = _REPEATS_FOLDER.match(name)
    if match is None:
        return None, name
    return int(match.group(1)), match.group(2)


def validate_caption_ext(caption_ext: str) -> str:
    """`caption_ext` if it is a usable caption extension (".txt", ".caption", ...); DatasetError otherwise."""
    if not isinstance(caption_ext, str) or not _CAPTION_EXT.match(caption_ext):
        raise DatasetError(
            f"caption extension {caption_ext!r} is not valid: it must start with a dot and be one file suffix "
            "without path separators or spaces, like '.txt' or '.caption'"
        )
    if caption_ext.lower() in IMAGE_SUFFIXES:
        raise DatasetError(f"caption extension {caption_ext!r} is an image format; use e.g. '.txt'")
    return caption_ext


def scan_dataset(
    root: Path, *, caption_ext: str = ".txt", recursive: bool = True, check_images: bool | str = True
) -> Dataset:
    """Read the folder `root` into a Dataset; problems with files are listed, not raised.

    With check_images each image's header is read (cheap: no pixels decoded), so empty files, non-images and
    oversized images show up as problems here rather than later; truncated pixel data is found only when the
    image is decoded (images.open_image). With check_images=SIGNATURE only each file's first bytes are checked.
    Captions are read (and images checked) in threads.
    """
    root = Path(root)
    validate_caption_ext(caption_ext)
    if not root.is_dir():
        raise DatasetError("not a folder" if root.exists() else "no such folder", path=root)
    root = root.resolve()
    problems: list[DatasetProblem] = []
    found: list[_Found] = []
    with paused_gc():  # 50,000 images allocate enough for the collector to walk the growing lists many times
        for folder, files, names, links in _walk(root, recursive, problems):
            found.extend(_scan_folder(root, folder, files, names, links, caption_ext, problems))
        items, linked = _read_all(found, check_images, problems)
    return Dataset(
        root=root, caption_ext=caption_ext, items=items, problems=problems, recursive=recursive,
        check_images=check_images, linked=frozenset(linked),
    )


def leave_out_links(
    dataset: Dataset, allows: Callable[[Path], bool] | None = None, *, where: str = "the dataset folder"
) -> Dataset:
    """`dataset` without the items whose image or caption is a link leading where `allows` refuses (by default:
    outside the dataset root), each listed as a LINK_OUTSIDE problem naming `where`; they are never written."""
    allowed = allows if allows is not None else AllowedRoots([dataset.root]).allows
    kept: list[DatasetItem] = []
    problems = list(dataset.problems)
    root_allowed = allowed(dataset.root)
    for item in dataset.items:
        if root_allowed and not dataset.may_link(item):  # no link among its files: inside the root scanned
            kept.append(item)
            continue
        outside = [what for what, path in (("image", item.image), ("caption", item.caption_path)) if not allowed(path)]
        if not outside:
            kept.append(item)
            continue
        problems.append(DatasetProblem(
            ProblemKind.LINK_OUTSIDE, (item.caption_path if outside == ["caption"] else item.image, item.image),
            f"its {' and '.join(outside)} links outside {where}; left out, so nothing is written there",
        ))
    if len(kept) == len(dataset.items):
        return dataset
    return Dataset(root=dataset.root, caption_ext=dataset.caption_ext, items=kept, problems=problems,
                   recursive=dataset.recursive, check_images=dataset.check_images, linked=dataset.linked)


def rename_subset_repeats(dataset: Dataset, subset: str, repeats: int) -> Dataset:
    """Rename the folder of `subset` to `<repeats>_<name>` and return the rescanned dataset.

    Refuses (DatasetError) a repeats below 1, the root itself, an unknown subset and an existing target folder.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise DatasetError(f"repeats must be a whole number of at least 1, got {repeats!r}")
    found = next((entry for entry in dataset.subsets() if entry.path == subset), None)
    if found is None:
        raise DatasetError(f"no subset {subset!r} with images in this dataset", path=dataset.root)
    if subset == ROOT_SUBSET:
        raise DatasetError(
            "the images are in the dataset root itself; put them in a '<repeats>_<name>' subfolder to set repeats",
            path=dataset.root,
        )
    target = found.folder.with_name(f"{repeats}_{found.name}")
    if target == found.folder:
        return dataset
    exists = DatasetError(f"cannot rename to {target.name!r}: that folder already exists", path=found.folder)
    if os.path.lexists(target):
        raise exists
    try:
        if not rename_noreplace(found.folder, target):  # a folder made meanwhile is not replaced, where possible
            os.rename(found.folder, target)
    except FileExistsError:
        raise exists from None
    except OSError as error:
        raise DatasetError(f"cannot rename to {target.name!r}: {error.strerror or error}", path=found.folder) from error
    return scan_dataset(
        dataset.root, caption_ext=dataset.caption_ext, recursive=dataset.recursive, check_images=dataset.check_images
    )


_NUMBERS = re.compile(r"(\d+)")


def _natural_key(name: str) -> list[object]:
    """Sort key putting "img2" before "img10" (numbers compared as numbers, text case-insensitively)."""
    # split() with a group alternates text and digits (odd parts are the numbers), so equal positions hold the same
    # kind: (value, part) pairs flattened compare as the (kind, value, part) tuples would, built without a loop
    parts = _NUMBERS.split(name)
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
        for name in sorted(subfolders, key=_natural_key):
            yield from _walk(child(name), recursive, problems)


def _split_name(name: str) -> tuple[str, str]:
    """os.path.splitext for a file name that does not start with a dot (the walk skips those), at half its cost."""
    stem, dot, suffix = name.rpartition(".")
    return (stem, dot + suffix) if stem else (name, "")


@dataclass(frozen=True)
class _Found:
    """An image found by the walk, before its caption is read: where it goes in the Dataset."""

    image: Path
    caption_path: Path
    caption_listed: bool
    subset: str
    repeats: int | None
    name: str
    linked: bool


def _scan_folder(
    root: Path, folder: Path, files: list[str], names: set[str], links: set[str], caption_ext: str,
    problems: list[DatasetProblem],
) -> list[_Found]:
    subset = folder.relative_to(root).as_posix()  # "." for the root
    repeats, name = parse_repeats_folder(folder.name)
    child = _child(folder)
    by_stem: dict[str, list[str]] = {}
    images = [(_split_name(file), file) for file in files]
    for (stem, _), file in sorted(((parts, file) for parts, file in images if parts[1].lower() in IMAGE_SUFFIXES),
                                  key=lambda pair: _natural_key(pair[1])):
        by_stem.setdefault(stem, []).append(file)
    found = []
    for stem, images in by_stem.items():
        caption_name = f"{stem}{caption_ext}"
        caption_path = child(caption_name)
        if len(images) > 1:
            listed = ", ".join(images)
            problems.append(DatasetProblem(
                ProblemKind.SAME_STEM, (*map(child, images), caption_path),
                f"{listed} would share the caption {caption_name}; rename all but one to use them",
            ))
            continue
        image = images[0]
        found.append(_Found(child(image), caption_path, caption_name in names, subset, repeats, name,
                            image in links or caption_name in links))
    orphans = [file for file in files if file.endswith(caption_ext) and file[: -len(caption_ext)] not in by_stem]
    for file in sorted(orphans, key=_natural_key):
        problems.append(DatasetProblem(ProblemKind.ORPHAN_CAPTION, (child(file),), "caption without an image"))
    return found


def _read_found(found: _Found, check_images: bool | str) -> tuple[DatasetItem | None, DatasetProblem | None]:
    """The item for `found` (its caption read, its image checked), or the problem that leaves it out."""
    image = found.image
    if check_images:
        try:
            (check_image_signature if check_images == SIGNATURE else image_size)(image)
        except ImageReadError as error:
            return None, DatasetProblem(ProblemKind.UNREADABLE_IMAGE, (image,), error.reason)
    try:
        caption = read_caption(found.caption_path) if found.caption_listed else None
    except CaptionReadError as error:
        return None, DatasetProblem(ProblemKind.UNREADABLE_CAPTION, (found.caption_path, image), error.reason)
    return DatasetItem(image=image, caption_path=found.caption_path, caption=caption, subset=found.subset,
                       repeats=found.repeats, name=found.name), None


def _read_all(found: list[_Found], check_images: bool | str,
              problems: list[DatasetProblem]) -> tuple[list[DatasetItem], set[Path]]:
    """The items of `found` in order, captions read and images checked in threads (the reads wait on the disk,
    not on Python), and the images whose image or caption file is a link."""
    def chunk(part: list[_Found]) -> list[tuple[DatasetItem | None, DatasetProblem | None]]:
        return [_read_found(one, check_images) for one in part]

    parts = [found[start:start + _READ_CHUNK] for start in range(0, len(found), _READ_CHUNK)]
    if len(parts) > 1:
        with ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="lora-studio-scan") as pool:
            results = list(pool.map(chunk, parts))
    else:
        results = [chunk(part) for part in parts]
    items: list[DatasetItem] = []
    linked: set[Path] = set()
    for part, part_results in zip(parts, results):
        for one, (item, problem) in zip(part, part_results):
            if problem is not None:
                problems.append(problem)
            elif item is not None:
                items.append(item)
                if one.linked:
                    linked.add(item.image)
    return items, linked
