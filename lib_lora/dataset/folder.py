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
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..atomic import rename_noreplace
from .captions import BACKUP_DIR_NAME, Caption, read_caption
from .errors import CaptionReadError, DatasetError, ImageReadError
from .images import IMAGE_SUFFIXES, image_size, is_image_file
from .roots import AllowedRoots

ROOT_SUBSET = "."
"""The `subset` of items directly in the dataset root."""

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
    """The result of scan_dataset; `key(item)` (the image path relative to root) identifies items."""

    root: Path
    caption_ext: str
    items: list[DatasetItem]
    problems: list[DatasetProblem]
    recursive: bool = True
    check_images: bool = True
    _by_key: dict[str, DatasetItem] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_key = {self.key(item): item for item in self.items}

    def key(self, item: DatasetItem) -> str:
        """The item's image path relative to the root, with "/" separators."""
        return item.image.relative_to(self.root).as_posix()

    def item(self, key: str) -> DatasetItem:
        """The item whose key(item) is `key`; KeyError if none."""
        return self._by_key[key]

    def captions(self) -> dict[str, str]:
        """Caption text by item key ("" for images without a caption), the input of the tag operations."""
        return {key: item.text for key, item in self._by_key.items()}

    def subsets(self) -> list[Subset]:
        """The folders holding items, in scan order, with repeats, names and counts."""
        grouped: dict[str, list[DatasetItem]] = {}
        for item in self.items:
            grouped.setdefault(item.subset, []).append(item)
        return [
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
    root: Path, *, caption_ext: str = ".txt", recursive: bool = True, check_images: bool = True
) -> Dataset:
    """Read the folder `root` into a Dataset; problems with files are listed, not raised.

    With check_images each image's header is read (cheap: no pixels decoded), so empty files, non-images and
    oversized images show up as problems here rather than later; truncated pixel data is found only when the
    image is decoded (images.open_image).
    """
    root = Path(root)
    validate_caption_ext(caption_ext)
    if not root.is_dir():
        raise DatasetError("not a folder" if root.exists() else "no such folder", path=root)
    root = root.resolve()
    items: list[DatasetItem] = []
    problems: list[DatasetProblem] = []
    for folder, files in _walk(root, recursive, problems):
        items.extend(_scan_folder(root, folder, files, caption_ext, check_images, problems))
    return Dataset(
        root=root, caption_ext=caption_ext, items=items, problems=problems, recursive=recursive,
        check_images=check_images,
    )


def leave_out_links(
    dataset: Dataset, allows: Callable[[Path], bool] | None = None, *, where: str = "the dataset folder"
) -> Dataset:
    """`dataset` without the items whose image or caption is a link leading where `allows` refuses (by default:
    outside the dataset root), each listed as a LINK_OUTSIDE problem naming `where`; they are never written."""
    allowed = allows if allows is not None else AllowedRoots([dataset.root]).allows
    kept: list[DatasetItem] = []
    problems = list(dataset.problems)
    for item in dataset.items:
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
                   recursive=dataset.recursive, check_images=dataset.check_images)


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


def _natural_key(name: str) -> list[object]:
    """Sort key putting "img2" before "img10" (numbers compared as numbers, text case-insensitively)."""
    return [(0, int(part), part) if part.isdigit() else (1, part.casefold(), part) for part in re.split(r"(\d+)", name)]


def _walk(folder: Path, recursive: bool, problems: list[DatasetProblem]) -> Iterator[tuple[Path, list[Path]]]:
    """(folder, its visible regular files) for folder and, if recursive, its visible subfolders, depth first."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: _natural_key(entry.name))
    except OSError as error:
        problems.append(
            DatasetProblem(ProblemKind.UNREADABLE_FOLDER, (folder,), f"cannot list the folder: {error.strerror}")
        )
        return
    files: list[Path] = []
    subfolders: list[Path] = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name == BACKUP_DIR_NAME:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
            elif entry.is_symlink() and entry.is_dir():
                problems.append(DatasetProblem(
                    ProblemKind.SYMLINKED_FOLDER, (Path(entry.path),), "symlinked folder not followed",
                ))
            elif entry.is_file():
                files.append(Path(entry.path))
        except OSError:
            continue
    yield folder, files
    if recursive:
        for subfolder in subfolders:
            yield from _walk(subfolder, recursive, problems)


def _scan_folder(
    root: Path, folder: Path, files: list[Path], caption_ext: str, check_images: bool,
    problems: list[DatasetProblem],
) -> list[DatasetItem]:
    subset = folder.relative_to(root).as_posix()  # "." for the root
    repeats, name = parse_repeats_folder(folder.name)
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        if is_image_file(path):
            by_stem.setdefault(path.stem, []).append(path)
    items = []
    for stem, images in by_stem.items():
        caption_path = folder / f"{stem}{caption_ext}"
        if len(images) > 1:
            names = ", ".join(image.name for image in images)
            problems.append(DatasetProblem(
                ProblemKind.SAME_STEM, (*images, caption_path),
                f"{names} would share the caption {caption_path.name}; rename all but one to use them",
            ))
            continue
        item = _item(images[0], caption_path, subset, repeats, name, check_images, problems)
        if item is not None:
            items.append(item)
    for path in files:
        if path.name.endswith(caption_ext) and path.name[: -len(caption_ext)] not in by_stem:
            problems.append(DatasetProblem(ProblemKind.ORPHAN_CAPTION, (path,), "caption without an image"))
    return items


def _item(
    image: Path, caption_path: Path, subset: str, repeats: int | None, name: str, check_images: bool,
    problems: list[DatasetProblem],
) -> DatasetItem | None:
    if check_images:
        try:
            image_size(image)
        except ImageReadError as error:
            problems.append(DatasetProblem(ProblemKind.UNREADABLE_IMAGE, (image,), error.reason))
            return None
    try:
        caption = read_caption(caption_path)
    except CaptionReadError as error:
        problems.append(DatasetProblem(ProblemKind.UNREADABLE_CAPTION, (caption_path, image), error.reason))
        return None
    return DatasetItem(image=image, caption_path=caption_path, caption=caption, subset=subset, repeats=repeats,
                       name=name)
