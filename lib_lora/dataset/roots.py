"""The folders the Dataset and Train tabs may open: a path is allowed only if it resolves (symlinks, "..") inside
one. A folder the user types or picks may be relative: it is looked up in the roots (`locate`), never resolved
against the server's working folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import DatasetError, PathNotAllowedError


class FolderNotFoundError(DatasetError):
    """A relative folder name names no folder in any allowed root."""


class AmbiguousFolderError(DatasetError):
    """A relative folder name names a folder in more than one allowed root."""


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

    def locate(self, typed: Path | str) -> Path:
        """The folder the user typed or chose, resolved. An absolute path (or `~…`) is checked as by `check`; a
        relative one (as the folder lists show them: `mychar/10_mychar`) is looked up in each root: the one root
        holding it, FolderNotFoundError in none, AmbiguousFolderError in several, PathNotAllowedError when it
        leads outside them (`../x`)."""
        path = Path(typed).expanduser()
        if path.is_absolute():
            return self.check(path)
        found: dict[Path, Path] = {}
        for root in self.roots:
            try:
                exists = (root / path).exists()
            except (OSError, ValueError):
                exists = False
            if exists:
                found.setdefault(self.check(root / path), root)
        if len(found) == 1:
            return next(iter(found))
        if found:
            where = " and ".join(str(folder) for folder in found)
            raise AmbiguousFolderError(f"is in more than one allowed folder ({where}); type its full path",
                                       path=typed)
        if not self.roots:
            raise PathNotAllowedError(typed, self.roots)
        self.check(self.roots[0] / path)  # a name leading outside says so
        allowed = ", ".join(str(root) for root in self.roots)
        raise FolderNotFoundError(f"no such folder in the allowed folders ({allowed}); choose one from the list "
                                  "or type a path inside them", path=typed)

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
