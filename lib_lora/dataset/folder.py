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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import rename_noreplace
from .caption_format import Caption
from .errors import DatasetError
from .gc_pause import collect_after_pause, paused_gc
from .images import IMAGE_SUFFIXES
from .listing import FolderImages, list_images
from .listing import parse_repeats_folder as parse_repeats_folder
from .problems import DatasetProblem as DatasetProblem
from .problems import ProblemKind as ProblemKind
from .reading.pairs import SIGNATURE as SIGNATURE  # where it is defined; importers use it from here
from .reading.pairs import read_pairs
from .roots import AllowedRoots

ROOT_SUBSET = "."
"""The `subset` of items directly in the dataset root."""

_COLLECT_FROM = 2000
"""A scan of this many items asks for its objects to be collected in the background after it (gc_pause)."""
_CAPTION_EXT = re.compile(r"^\.[^./\\\x00-\x1f\s]+$")


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
    Captions are read (and images checked) in this process, for a large folder mostly by a helper process.
    """
    root = Path(root)
    validate_caption_ext(caption_ext)
    if not root.is_dir():
        raise DatasetError("not a folder" if root.exists() else "no such folder", path=root)
    root = root.resolve()
    problems: list[DatasetProblem] = []
    with paused_gc():  # 50,000 images allocate enough for the collector to walk the growing lists many times
        folders = list(list_images(root, caption_ext, recursive, problems))
        reads = read_pairs([pair for folder in folders for pair in folder.pairs], check_images)
        items, linked = _items(folders, reads, problems)
        if len(items) >= _COLLECT_FROM:
            collect_after_pause()
    return Dataset(
        root=root, caption_ext=caption_ext, items=items, problems=problems, recursive=recursive,
        check_images=check_images, linked=frozenset(linked),
    )


def _items(folders: list[FolderImages], reads: list[Caption | DatasetProblem | None],
           problems: list[DatasetProblem]) -> tuple[list[DatasetItem], set[Path]]:
    """The items of the listed `folders` given each pair's read (in pair order), the problems of the reads appended
    to `problems`, and the images whose image or caption file is a link."""
    items: list[DatasetItem] = []
    linked: set[Path] = set()
    position = 0
    for folder in folders:
        subset, repeats, name = folder.subset, folder.repeats, folder.name
        for (image, caption_path, _, link), read in zip(folder.pairs, reads[position:position + len(folder.pairs)]):
            if isinstance(read, DatasetProblem):
                problems.append(read)
                continue
            items.append(DatasetItem(image, caption_path, read, subset, repeats, name))
            if link:
                linked.add(image)
        position += len(folder.pairs)
    return items, linked


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
