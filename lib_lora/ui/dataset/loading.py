"""Which folder the Dataset tab works on: the loaded dataset kept inside the allowed roots, and the check that it is
the folder the page shows before an action writes into it (the tagger)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...dataset.folder import Dataset
from ...dataset.roots import AllowedRoots
from ...errors import LoraStudioError

if TYPE_CHECKING:
    from .session import DatasetSession


def within_roots(dataset: Dataset, allowed: AllowedRoots, left_out: list[str]) -> Dataset:
    """`dataset` without items whose image or caption is a link leading outside the allowed roots."""
    left_out.clear()
    kept = []
    root_allowed = allowed.allows(dataset.root)
    for item in dataset.items:
        if root_allowed and not dataset.may_link(item):  # no link among its files: inside the root, which is allowed
            kept.append(item)
        elif allowed.allows(item.image) and allowed.allows(item.caption_path):
            kept.append(item)
        else:
            left_out.append(f"{item.image}: its image or caption links outside the allowed folders; left out")
    if len(kept) == len(dataset.items):
        return dataset
    return Dataset(root=dataset.root, caption_ext=dataset.caption_ext, items=kept, problems=dataset.problems,
                   recursive=dataset.recursive, check_images=dataset.check_images, linked=dataset.linked)


def require_shown(session: DatasetSession, path: str | None) -> Dataset:
    """The loaded dataset, when the folder the page shows (`path`, the Folder box; empty: the one loaded) is that
    dataset's folder; DatasetUIError naming both otherwise (a folder chosen or typed, then not loaded)."""
    from .session import DatasetUIError

    dataset = session.require_loaded()
    text = (path or "").strip()
    if not text:
        return dataset
    try:
        shown = AllowedRoots(session.roots()).locate(text)
    except LoraStudioError as error:
        raise DatasetUIError(f"the Folder box holds {text!r}, which cannot be loaded ({error}); {dataset.root} is "
                             "loaded: choose it again, or load another folder") from error
    if shown != Path(dataset.root).resolve():
        raise DatasetUIError(f"the Folder box shows {shown}, but {dataset.root} is loaded: press Load first, or "
                             "choose the loaded folder again")
    return dataset
