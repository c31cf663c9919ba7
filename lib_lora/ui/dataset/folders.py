"""The folder lists of the Dataset and Train tabs: the dataset folders the allowed roots hold (`dataset.finder`),
each shown relative to its root, a name `AllowedRoots.locate` resolves back to the same folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...dataset.errors import DatasetError
from ...dataset.finder import DatasetFolder, find_dataset_folders
from ...dataset.roots import AllowedRoots

MAX_FOLDER_CHOICES = 500
"""The lists hold at most this many folders (a root with thousands of datasets is typed into, not scrolled)."""


def folder_label(found: DatasetFolder, allowed: AllowedRoots) -> str:
    """`found` relative to its root (`mychar/10_mychar`), or its full path where that name would not lead back to
    it (the same name in another root) and for a root itself."""
    relative = found.relative
    if relative != ".":
        try:
            if allowed.locate(relative) == found.path:
                return relative
        except DatasetError:
            pass
    return str(found.path)


def dataset_folder_choices(roots: Sequence[Path]) -> list[str]:
    """The dataset folders of the roots (those holding images, directly or in `<repeats>_<name>` subfolders),
    labelled by `folder_label`, a root's folders together, a dataset before its subfolders."""
    allowed = AllowedRoots(roots)
    found = find_dataset_folders(allowed.roots, max_found=MAX_FOLDER_CHOICES)
    return list(dict.fromkeys(folder_label(folder, allowed) for folder in found))
