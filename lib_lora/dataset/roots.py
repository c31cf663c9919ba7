"""The folders the Dataset tab may open: a path is allowed only if it resolves (symlinks, "..") inside one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import PathNotAllowedError


class AllowedRoots:
    """A set of root folders; `check(path)` returns the resolved path inside one of them or raises."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots: tuple[Path, ...] = tuple(Path(root).expanduser().resolve() for root in roots)

    def __repr__(self) -> str:
        return f"AllowedRoots({[str(root) for root in self.roots]!r})"

    def check(self, path: Path | str) -> Path:
        """`path` resolved (user folder, "..", symlinks); PathNotAllowedError if that lies outside every root."""
        try:
            resolved = Path(path).expanduser().resolve()
        except (OSError, ValueError, RuntimeError) as error:  # NUL bytes, symlink loops
            raise PathNotAllowedError(f"{path} ({error})", self.roots) from error
        if any(_is_within(resolved, root) for root in self.roots):
            return resolved
        raise PathNotAllowedError(path, self.roots)

    def allows(self, path: Path | str) -> bool:
        """Whether check(path) would succeed."""
        try:
            self.check(path)
        except PathNotAllowedError:
            return False
        return True


def _is_within(path: Path, root: Path) -> bool:
    """Whether `path` is `root` or below it (both resolved), case-insensitively where the OS is."""
    path_text, root_text = os.path.normcase(str(path)), os.path.normcase(str(root))
    try:
        return os.path.commonpath([path_text, root_text]) == root_text
    except ValueError:  # different drives on Windows
        return False
