"""The images a training run uses: sd-scripts' folder rules over the Dataset tab's scan, and regularisation balance.

`train_data_dir` holds `<repeats>_<name>` subfolders; as in sd-scripts, images in other folders are ignored
(listed in `ScannedImages.ignored`). A folder with images directly in it and no numbered subfolder is accepted
too, each image used once per epoch (1 repeat). An image without a caption (or with an empty one) is captioned
with its folder's name part (`10_mychar` → "mychar"). Unreadable images or captions, and two images sharing one
caption file, stop the run with a TrainingError listing them, rather than training on part of the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..dataset.errors import DatasetError, ImageReadError
from ..dataset.folder import (
    ROOT_SUBSET,
    DatasetProblem,
    ProblemKind,
    parse_repeats_folder,
    scan_dataset,
    validate_caption_ext,
)
from .errors import ConfigError, TrainingError
from .image_headers import read_image_facts, scan_image_facts

_BLOCKING_PROBLEMS = {ProblemKind.UNREADABLE_IMAGE, ProblemKind.UNREADABLE_CAPTION, ProblemKind.SAME_STEM}


@dataclass(frozen=True)
class ImageItem:
    """One image as training sees it: where it is, its stable key, raw caption and folder repeats."""

    path: Path
    key: str
    """Path relative to its data folder ("10_mychar/a.png"); regularisation keys start with "reg:"."""
    caption: str
    subset: str
    """The folder name ("10_mychar"), or the data folder's own name for a flat folder."""
    repeats: int
    is_reg: bool
    size: tuple[int, int]
    """(width, height) as the image is shown (EXIF rotation applied)."""
    file_size: int = 0
    mtime_ns: int = 0
    """The file's size and modification time when scanned: with its path, what the latent cache is keyed by."""


@dataclass
class ScannedImages:
    """The images of one data folder, and what was left out of it and why."""

    items: list[ImageItem]
    ignored: list[str] = field(default_factory=list)


def oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, swapped when the EXIF orientation rotates the image (as open_image does)."""
    return read_image_facts(path).size


def first_line(text: str) -> str:
    """The first non-blank line, stripped (sd-scripts trains on the first line of a caption file)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def scan_images(folder: str | Path, *, caption_extension: str, is_reg: bool,
                progress: Callable[[int, int], None] | None = None) -> ScannedImages:
    """The images of a train or regularisation folder under sd-scripts' `<repeats>_<name>` rules.

    The images' sizes come from their headers, read on threads (image_headers); `progress(done, total)` follows
    that pass, the long part of a scan.
    """
    key_name = "reg_data_dir" if is_reg else "train_data_dir"
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(key_name, str(folder), "no such folder" if not root.exists() else "not a folder")
    try:
        validate_caption_ext(caption_extension)
    except DatasetError as error:
        raise ConfigError("caption_extension", caption_extension, error.reason) from None
    dataset = scan_dataset(root, caption_ext=caption_extension, recursive=True, check_images=False)
    numbered = [item for item in dataset.items if _is_numbered(item.subset, item.repeats)]
    chosen = numbered or [item for item in dataset.items if item.subset == ROOT_SUBSET]
    used_folders = {item.image.parent for item in chosen} | (
        {p for p in dataset.root.iterdir() if p.is_dir() and parse_repeats_folder(p.name)[0] is not None}
        if numbered else {dataset.root})
    facts = scan_image_facts([item.image for item in chosen], progress=progress)
    unreadable = [DatasetProblem(ProblemKind.UNREADABLE_IMAGE, (item.image,), fact.reason)
                  for item, fact in zip(chosen, facts) if isinstance(fact, ImageReadError)]
    _raise_blocking_problems(list(dataset.problems) + unreadable, used_folders, key_name)
    items = [
        ImageItem(
            path=item.image,
            key=f"reg:{dataset.key(item)}" if is_reg else dataset.key(item),
            caption=first_line(item.text) or item.name,
            subset=item.subset if item.subset != ROOT_SUBSET else dataset.root.name,
            repeats=item.repeats if numbered and item.repeats is not None else 1,  # "0_x": never used
            is_reg=is_reg,
            size=fact.size,
            file_size=fact.file_size,
            mtime_ns=fact.mtime_ns,
        )
        for item, fact in zip(chosen, facts) if not isinstance(fact, ImageReadError)
    ]
    chosen_subsets = {item.subset for item in chosen}
    ignored = sorted({item.subset for item in dataset.items} - chosen_subsets)
    notes = [f"{name}/: only <repeats>_<name> folders directly inside are used" if name != ROOT_SUBSET
             else "images directly in the folder: the numbered subfolders are used instead" for name in ignored]
    return ScannedImages(items, notes)


def _is_numbered(subset: str, repeats: int | None) -> bool:
    """A `<repeats>_<name>` folder directly inside the data folder."""
    return subset != ROOT_SUBSET and "/" not in subset and repeats is not None


def _raise_blocking_problems(problems: Sequence[DatasetProblem], used_folders: set[Path], key_name: str) -> None:
    """TrainingError listing unreadable files and caption clashes in the folders training uses."""
    blocking = [p for p in problems if p.kind in _BLOCKING_PROBLEMS and p.paths[0].parent in used_folders]
    if not blocking:
        return
    lines = [f"{', '.join(str(path) for path in p.paths)}: {p.message}" for p in blocking[:5]]
    more = f" (and {len(blocking) - 5} more)" if len(blocking) > 5 else ""
    raise TrainingError(f"{key_name} has files training cannot use{more}; fix or remove them:\n  "
                        + "\n  ".join(lines))


def balance_reg_repeats(reg_repeats: Sequence[int], num_train_images: int) -> list[int]:
    """sd-scripts' balance: how often each regularisation image is used per epoch, totalling ≈ num_train_images.

    The images are taken in order with their own repeats until the total reaches the number of training
    images (later ones get 0); if all are taken and it is still short, one more use each, in turn, until it
    is reached. The total may overshoot by less than the last image's repeats.
    """
    uses = [0] * len(reg_repeats)
    total = 0
    for index, repeats in enumerate(reg_repeats):
        if total >= num_train_images:
            break
        uses[index] = repeats
        total += repeats
    index = 0
    while uses and total < num_train_images:
        uses[index % len(uses)] += 1
        total += 1
        index += 1
    return uses
