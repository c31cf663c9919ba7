"""The Dataset tab's folder picker: the dataset folders the allowed roots hold, and the check of a typed path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..dataset.captions import BACKUP_DIR_NAME
from ..dataset.folder import parse_repeats_folder
from ..dataset.roots import AllowedRoots

MAX_FOLDER_CHOICES = 500
"""The picker lists at most this many folders (a root with thousands of subfolders is typed, not scrolled)."""


def _subfolders(folder: Path) -> list[Path]:
    """Visible, non-symlinked subfolders of `folder`, sorted by name; [] when it cannot be listed."""
    try:
        with os.scandir(folder) as listing:
            found = [
                Path(entry.path) for entry in listing
                if not entry.name.startswith(".") and entry.name != BACKUP_DIR_NAME
                and entry.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []
    return sorted(found, key=lambda path: path.name.casefold())


def dataset_folder_choices(roots: Sequence[Path]) -> list[str]:
    """Each existing root, its subfolders and their `<repeats>_<name>` subfolders, as absolute paths."""
    choices: list[str] = []
    for root in AllowedRoots(roots).roots:
        if not root.is_dir():
            continue
        choices.append(str(root))
        for folder in _subfolders(root):
            choices.append(str(folder))
            choices.extend(str(sub) for sub in _subfolders(folder) if parse_repeats_folder(sub.name)[0] is not None)
    return list(dict.fromkeys(choices))[:MAX_FOLDER_CHOICES]
