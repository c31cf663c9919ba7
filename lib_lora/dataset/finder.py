"""Find the dataset folders under the allowed roots, quickly: for the folder lists of the Dataset and Train tabs.

A dataset folder holds images directly, or `<repeats>_<name>` subfolders that do (kohya's `train_data_dir`). Only
names are read (`os.scandir`, no image is opened) and the walk is bounded: `MAX_DEPTH` levels below each root and
`MAX_VISITED` folders per root. It never enters hidden or linked folders, the caption backups, or a program's
folders (a folder holding `.py` files or a `.git`); in a root that is itself a program's folder (the WebUI's), the
program's own folders (`models`, `outputs`, `html`, …) are left out too, so its previews and outputs are not listed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .backups import BACKUP_DIR_NAME
from .images import IMAGE_SUFFIXES
from .listing import parse_repeats_folder

__all__ = ["MAX_DEPTH", "MAX_FOUND", "MAX_VISITED", "DatasetFolder", "find_dataset_folders"]

MAX_DEPTH = 4
"""Folders deeper than this below their root are not looked at (`root/projects/mychar/10_mychar` is depth 3)."""
MAX_VISITED = 2000
"""At most this many folders are listed per root: a root with more is typed into, not browsed."""
MAX_FOUND = 500
"""At most this many dataset folders are returned in all."""

SKIPPED_NAMES = frozenset({BACKUP_DIR_NAME, "__pycache__", "node_modules", "site-packages", "venv"})
PROGRAM_FOLDERS = frozenset({
    "cache", "configs", "embeddings", "extensions", "extensions-builtin", "html", "javascript", "localizations",
    "log", "models", "modules", "outputs", "repositories", "scripts", "textual_inversion_templates", "tmp",
})
"""A WebUI's own folders (A1111, Forge): left out in a root that holds a program (its launch scripts)."""


@dataclass(frozen=True)
class DatasetFolder:
    """A folder found: its root and where it is."""

    root: Path
    path: Path

    @property
    def relative(self) -> str:
        """Its path relative to its root, with `/` ("." for the root itself)."""
        return self.path.relative_to(self.root).as_posix()


@dataclass
class _Listing:
    images: bool
    program: bool
    folders: list[Path]


def _list(folder: Path) -> _Listing | None:
    """What `folder` holds, by name only; None when it cannot be listed."""
    images = program = False
    folders: list[Path] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name == ".git" or name.endswith(".py"):
                    program = True
                elif name.startswith(".") or name in SKIPPED_NAMES:
                    continue
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                elif os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                    images = True
    except OSError:
        return None
    folders.sort(key=lambda path: path.name.casefold())
    return _Listing(images, program, folders)


def _walk(root: Path, max_depth: int, max_visited: int) -> dict[Path, _Listing]:
    """Breadth-first listings below `root`, programs' folders left out (and not entered)."""
    listings: dict[Path, _Listing] = {}
    queue: deque[tuple[Path, int]] = deque([(root, 0)])
    while queue and len(listings) < max_visited:
        folder, depth = queue.popleft()
        listing = _list(folder)
        if listing is None or (listing.program and depth > 0):
            continue
        listings[folder] = listing
        if depth >= max_depth:
            continue
        for child in listing.folders:
            if not (depth == 0 and listing.program and child.name.casefold() in PROGRAM_FOLDERS):
                queue.append((child, depth + 1))
    return listings


def find_dataset_folders(roots: Sequence[Path], *, max_depth: int = MAX_DEPTH, max_visited: int = MAX_VISITED,
                         max_found: int = MAX_FOUND) -> list[DatasetFolder]:
    """The dataset folders below each existing root (the roots as given: resolve them first), per root sorted by
    path (a dataset before its subfolders), at most `max_found`."""
    found: list[DatasetFolder] = []
    for root in roots:
        listings = _walk(root, max_depth, max_visited) if root.is_dir() else {}
        datasets = []
        for folder, listing in listings.items():
            subsets = (child for child in listing.folders if parse_repeats_folder(child.name)[0] is not None)
            if listing.images or any(child in listings and listings[child].images for child in subsets):
                datasets.append(DatasetFolder(root, folder))
        found += sorted(datasets, key=lambda item: [part.casefold() for part in item.path.parts])
    return found[:max_found]
