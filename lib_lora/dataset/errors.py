"""Typed errors of the dataset package; each names the file (or tag operation) and the reason."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lib_lora.errors import LoraStudioError


class DatasetError(LoraStudioError):
    """A dataset folder or one of its files cannot be used as asked; the message names the path and why."""

    def __init__(self, reason: str, *, path: Path | str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path is not None else reason)


class PathNotAllowedError(DatasetError):
    """A path lies outside every allowed root (after resolving `..` and symlinks)."""

    def __init__(self, path: Path | str, roots: Sequence[Path]) -> None:
        self.roots = tuple(roots)
        allowed = ", ".join(str(root) for root in self.roots) or "none configured"
        super().__init__(f"outside the allowed folders ({allowed})", path=path)


class ImageReadError(DatasetError):
    """An image file is empty, truncated, not an image, too large (decompression bomb) or of an unusable mode."""


class CaptionReadError(DatasetError):
    """A caption file cannot be read or decoded as text."""


class CaptionWriteError(DatasetError):
    """A caption could not be written (read-only folder, full disk, ...); the file on disk was left as it was."""


class CaptionConflictError(DatasetError):
    """The caption file changed on disk since it was read; saving would overwrite someone else's edit."""


class TagOperationError(LoraStudioError):
    """A tag operation is invalid (bad regular expression, empty tag, position out of range, ...)."""
