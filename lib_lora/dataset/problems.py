"""What a dataset scan leaves out and why: `DatasetProblem`s, each of one `ProblemKind`, naming the files."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path


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
