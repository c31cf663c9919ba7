"""Undo / redo of caption edits: each batch keeps the exact previous and new texts of the captions it changed."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import TagOperationError
from .tags import TagEdit, apply_edit

Key = TypeVar("Key", bound=Hashable)

_MISSING = object()

SIZE_LIMIT = 300_000_000
"""Bytes of caption text (an estimate: characters plus ENTRY_BYTES a text) the history may hold, so that the
Dataset tab stays within a gigabyte at 50,000 images. An edit of every caption of the 44,417-image set (30 tags
each) holds about 38 MiB (measured) and is estimated at 67 MB: four such steps are kept, and on a 5,000-image set
about forty."""

ENTRY_BYTES = 100
"""What one text of a step costs beyond its characters (the string object, the dict entry); an estimate."""


@dataclass(frozen=True)
class EditBatch(Generic[Key]):
    """One undoable step: the texts of the captions it changed, before and after."""

    description: str
    before: Mapping[Key, str]
    after: Mapping[Key, str]
    size: int = field(init=False, compare=False)
    """The bytes it holds, estimated (see SIZE_LIMIT)."""

    def __post_init__(self) -> None:
        texts = [*self.before.values(), *self.after.values()]
        object.__setattr__(self, "size", sum(map(len, texts)) + ENTRY_BYTES * len(texts))


class EditHistory(Generic[Key]):
    """Undo and redo stacks over a caption mapping the caller owns (key -> text).

    Every change goes through `apply` or `set_texts`, which update the mapping and record a batch; `undo`
    puts the recorded previous texts back exactly and refuses (TagOperationError, nothing changed) when a
    caption no longer holds the text the batch left in it. A new change clears the redo stack; at most
    `limit` batches are kept, and the oldest are let go while the steps hold more than `size_limit` bytes of
    text (`let_go` says how many the last change dropped so).
    """

    def __init__(self, limit: int = 200, size_limit: int = SIZE_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if size_limit < 1:
            raise ValueError(f"size_limit must be at least 1, got {size_limit}")
        self.limit, self.size_limit = limit, size_limit
        self._undo: list[EditBatch[Key]] = []
        self._redo: list[EditBatch[Key]] = []
        self.let_go = 0
        """Steps the last change let go of to stay within size_limit (the newest step is always kept)."""

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def depth(self) -> int:
        """How many steps undo can take back."""
        return len(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_description(self) -> str | None:
        """What undo would revert, or None."""
        return self._undo[-1].description if self._undo else None

    @property
    def redo_description(self) -> str | None:
        return self._redo[-1].description if self._redo else None

    def apply(
        self, captions: MutableMapping[Key, str], edit: TagEdit, keys: Iterable[Key] | None = None
    ) -> dict[Key, str]:
        """Apply `edit` to `captions` (only `keys`, default all), record it and return the changed texts."""
        return self.set_texts(captions, apply_edit(captions, edit, keys), edit.description)

    def set_texts(
        self, captions: MutableMapping[Key, str], texts: Mapping[Key, str], description: str
    ) -> dict[Key, str]:
        """Store `texts` into `captions` as one undoable batch (e.g. a hand edit); returns those that changed."""
        changed = {key: text for key, text in texts.items() if captions.get(key, _MISSING) != text}
        if not changed:
            return {}
        before = {key: captions[key] for key in changed if key in captions}
        if len(before) != len(changed):
            unknown = [key for key in changed if key not in captions]
            raise TagOperationError(f"{description}: no caption for {unknown[:5]!r}")
        captions.update(changed)
        self._redo.clear()  # the stacks only trade batches otherwise: the undo stack holds all there is
        batch = EditBatch(description, before, dict(changed))
        self._undo.append(batch)
        del self._undo[: -self.limit]
        held, self.let_go = sum(kept.size for kept in self._undo), 0
        while len(self._undo) > 1 and held > self.size_limit:
            held -= self._undo.pop(0).size
            self.let_go += 1
        return changed

    def undo(self, captions: MutableMapping[Key, str]) -> dict[Key, str]:
        """Revert the last batch; returns the restored texts ({} when there is nothing to undo)."""
        if not self._undo:
            return {}
        batch = self._undo[-1]
        _check_holds(captions, batch.after, f"undo {batch.description}")
        captions.update(batch.before)
        self._redo.append(self._undo.pop())
        return dict(batch.before)

    def redo(self, captions: MutableMapping[Key, str]) -> dict[Key, str]:
        """Re-apply the last undone batch; returns the texts it put back ({} when there is nothing to redo)."""
        if not self._redo:
            return {}
        batch = self._redo[-1]
        _check_holds(captions, batch.before, f"redo {batch.description}")
        captions.update(batch.after)
        self._undo.append(self._redo.pop())
        return dict(batch.after)

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()
        self.let_go = 0


def _check_holds(captions: Mapping[Key, str], expected: Mapping[Key, str], action: str) -> None:
    """TagOperationError unless every caption in `expected` still holds exactly that text."""
    differing = [key for key, text in expected.items() if captions.get(key, _MISSING) != text]
    if differing:
        raise TagOperationError(
            f"cannot {action}: {len(differing)} caption(s) changed outside the edit history since, "
            f"e.g. {differing[0]!r}; nothing was changed"
        )
