"""A dataset-wide tag index: each caption's tags, and per tag the captions holding it, kept up to date per edit.

`IndexedCaptions` is the caption mapping the Dataset tab edits (key -> text, in dataset order); every text it
stores goes through its `TagIndex`, so counting tags, filtering and finding the captions a batch edit can change
are set operations on the index instead of a pass splitting every caption. Captions are numbered in the order
they were added (`position`): sorted positions are dataset order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from itertools import chain

from .tags import Deduplicate, MoveToFront, RemoveTags, RenameTag, ReplaceText, TagEdit, TagFilter, split_tags

_EMPTY: frozenset[int] = frozenset()


def frequency_order(counts: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """(tag, count) pairs most frequent first, ties alphabetical (as tags.tag_frequency orders them)."""
    return sorted(counts, key=lambda item: (-item[1], item[0].casefold(), item[0]))


class TagIndex:
    """Tags per caption position, how many captions hold each tag and, per tag, the positions holding it.

    `version` changes with every change of a caption. The positions of a tag are gathered the first time they are
    asked for (one pass) and kept up to date from then on: listing 50,000 captions builds the counts only."""

    def __init__(self) -> None:
        self._tags: list[tuple[str, ...] | None] = []
        self._counts: Counter[str] = Counter()
        self._postings: dict[str, set[int]] = {}  # the tags asked for so far
        self._all_postings = False  # whether _postings holds every tag
        self._repeated: set[int] = set()  # positions whose caption holds a tag twice
        self._spellings: dict[str, str] = {}  # one string object per tag, shared by the captions holding it
        self.version = 0
        self._counted: tuple[int, list[tuple[str, int]]] | None = None

    def __len__(self) -> int:
        return len(self._tags)

    def tags(self, position: int) -> tuple[str, ...]:
        return self._tags[position] or ()

    def tag_lists(self) -> list[tuple[str, ...] | None]:
        """The tags of every position (None: a caption removed); read it, never change it."""
        return self._tags

    def extend(self, tag_lists: Iterable[list[str]]) -> range:
        """Index new captions given as their split tags (the bulk form of `add`); returns their positions."""
        start = len(self._tags)
        spell = self._spellings.setdefault
        self._tags.extend(tuple(map(spell, tags, tags)) for tags in tag_lists)
        added = range(start, len(self._tags))
        tags_of = self._tags
        repeated = {p for p in added if len(set(tags_of[p])) != len(tags_of[p])}  # type: ignore[arg-type]
        self._repeated |= repeated
        self._counts.update(chain.from_iterable(
            (set(tags_of[p]) if p in repeated else tags_of[p]) for p in added))  # type: ignore[misc]
        self._postings.clear()
        self._all_postings = False
        self.version += 1
        return added

    def add(self, text: str) -> int:
        """Index a new caption; returns its position."""
        return self.extend([split_tags(text)])[0]

    def set(self, position: int, text: str | None, tags: Iterable[str] | None = None) -> None:
        """The caption at `position` now holds `text` (None: it is gone); `tags` is split_tags(text) when known."""
        self.set_many([(position, text, tags)])

    def set_many(self, changes: Iterable[tuple[int, str | None, Iterable[str] | None]]) -> None:
        """`set` for each (position, text, tags) in turn: the loop of a batch edit over 50,000 captions, kept in
        one function (one set built per caption, the tags that differ found as its symmetric difference). Given
        tags come from the index (undo) or an edit of indexed tags, so only the ones added are looked up in the
        shared spellings; a split text is spelled whole."""
        tags_of, spell, counts, postings = self._tags, self._spellings.setdefault, self._counts, self._postings
        repeated, all_postings = self._repeated, self._all_postings
        for position, text, tags in changes:
            if text is None:
                new: tuple[str, ...] = ()
            elif tags is None:
                split = split_tags(text)
                new = tuple(map(spell, split, split))
            else:
                new = tuple(tags)
            new_set = set(new)
            respell = False
            for tag in new_set.symmetric_difference(tags_of[position] or ()):
                if tag in new_set:
                    respell = respell or spell(tag, tag) is not tag
                    counts[tag] += 1
                    if tag in postings:
                        postings[tag].add(position)
                    elif all_postings:
                        postings[tag] = {position}
                else:
                    counts[tag] -= 1
                    if not counts[tag]:
                        del counts[tag]
                    if tag in postings:
                        postings[tag].discard(position)
            if respell:  # a tag the index holds as another string object: share that one
                new = tuple(map(spell, new, new))
            if len(new_set) < len(new):
                repeated.add(position)
            else:
                repeated.discard(position)
            tags_of[position] = None if text is None else new
        self.version += 1

    def _gather(self, tags: Iterable[str]) -> None:
        """Make sure the positions of `tags` are in _postings: one pass for a few tags, the full index for many."""
        missing = [tag for tag in dict.fromkeys(tags) if tag not in self._postings and tag in self._counts]
        if not missing or self._all_postings:
            return
        if len(missing) > 8:
            postings: dict[str, set[int]] = {}
            for position, held in enumerate(self._tags):
                for tag in held or ():
                    postings.setdefault(tag, set()).add(position)
            self._postings, self._all_postings = postings, True
            return
        for tag in missing:
            self._postings[tag] = {p for p, held in enumerate(self._tags) if held and tag in held}

    def holders(self, tag: str) -> frozenset[int] | set[int]:
        """The positions of the captions holding `tag` (do not change the set returned)."""
        self._gather([tag])
        return self._postings.get(tag, _EMPTY)

    def count(self, tag: str) -> int:
        return self._counts.get(tag, 0)

    def vocabulary(self) -> Iterable[str]:
        return self._counts.keys()

    def counts(self, positions: Iterable[int] | None = None) -> list[tuple[str, int]]:
        """(tag, how many captions hold it) over all captions or `positions`, most frequent first."""
        if positions is None:
            if self._counted is None or self._counted[0] != self.version:
                self._counted = (self.version, frequency_order(self._counts.items()))
            return list(self._counted[1])
        tags = self._tags
        repeated = self._repeated
        counted = Counter(chain.from_iterable(
            (set(tags[p] or ()) if p in repeated else tags[p] or ()) for p in positions))
        return frequency_order(counted.items())

    def select(self, tag_filter: TagFilter, live: Callable[[], set[int]]) -> set[int] | None:
        """The positions passing `tag_filter` (None: all of them; `live()` gives all positions when needed)."""
        chosen: set[int] | None = None
        self._gather((*tag_filter.include, *tag_filter.exclude))
        if tag_filter.include:
            groups = [self.holders(tag) for tag in tag_filter.include]
            if tag_filter.include_mode == "all":
                smallest = min(groups, key=len)
                chosen = set(smallest).intersection(*groups)
            else:
                chosen = set().union(*groups)
        if tag_filter.exclude:
            groups = [self.holders(tag) for tag in tag_filter.exclude]
            if tag_filter.exclude_mode == "any":
                unwanted = set().union(*groups)
            else:
                unwanted = set(min(groups, key=len)).intersection(*groups)
            chosen = (live() if chosen is None else chosen) - unwanted
        return chosen

    def candidates(self, edit: TagEdit) -> set[int] | None:
        """A superset of the positions whose caption `edit` can change (None: any caption may change)."""
        if isinstance(edit, (RemoveTags, MoveToFront)):
            self._gather(edit.tags)
            return set().union(*(self.holders(tag) for tag in edit.tags))
        if isinstance(edit, RenameTag):
            return set(self.holders(edit.old))
        if isinstance(edit, Deduplicate):
            return set(self._repeated)
        if isinstance(edit, ReplaceText) and edit.scope == "tag":
            search = edit._pattern.search  # a tag that holds no match is left as it is
            found = [tag for tag in self._counts if search(tag) is not None]
            self._gather(found)
            return set().union(*(self.holders(tag) for tag in found))
        return None


class IndexedCaptions(MutableMapping[str, str]):
    """Caption texts by key, in the order added, with a TagIndex kept in step; `changed` hears each changed key."""

    def __init__(self, texts: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                 changed: Callable[[str], None] | None = None) -> None:
        self._texts: dict[str, str] = {}
        self._positions: dict[str, int] = {}
        self._keys: list[str | None] = []
        self.index = TagIndex()
        self._known: dict[str, tuple[str, tuple[str, ...]]] = {}  # a text each key may get next, split already
        self.changed: Callable[[str], None] | None = None
        pairs = list(texts.items() if isinstance(texts, Mapping) else texts)
        self._texts = dict(pairs)
        if len(self._texts) != len(pairs) or not all(isinstance(text, str) for text in self._texts.values()):
            self._texts = {}
            for key, text in pairs:  # repeated keys: the last text counts, as in a dict
                self[key] = text
        else:
            self._keys = list(self._texts)
            positions = self.index.extend(map(split_tags, self._texts.values()))
            self._positions = dict(zip(self._keys, positions))
        self.changed = changed
        self.get = self._texts.get  # type: ignore[method-assign]  # the dict's own: history calls it per caption

    def __getitem__(self, key: str) -> str:
        return self._texts[key]

    def __setitem__(self, key: str, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"a caption is text, got {type(text).__name__}")
        known = self._known.pop(key, None)
        tags = known[1] if known is not None and known[0] == text else None
        position = self._positions.get(key)
        if position is None:
            position = self.index.add(text) if tags is None else self._add_known(text, tags)
            self._positions[key] = position
            self._keys.append(key)
        elif self._texts[key] == text:
            return
        else:
            self._known[key] = (self._texts[key], self.index.tags(position))  # undo puts it back: no split then
            self.index.set(position, text, tags)
        self._texts[key] = text
        if self.changed is not None:
            self.changed(key)

    def update(self, *args: object, **kwargs: str) -> None:  # type: ignore[override]
        """Store many texts at once (what undo, redo and a batch edit do): as `self[key] = text` for each, with
        the captions already known in one pass over the index."""
        texts = dict(*args, **kwargs)  # type: ignore[arg-type]
        if not all(isinstance(text, str) for text in texts.values()):
            raise TypeError("a caption is text")
        new = [key for key in texts if key not in self._positions]
        for key in new:
            self[key] = texts.pop(key)
        own, positions, known = self._texts, self._positions, self._known
        pending: list[tuple[int, str | None, Iterable[str] | None]] = []
        done: list[str] = []
        index_tags = self.index.tags
        for key, text in texts.items():
            old = own[key]
            if old == text:
                continue
            hint = known.pop(key, None)
            position = positions[key]
            known[key] = (old, index_tags(position))  # undo puts it back: no split then
            pending.append((position, text, hint[1] if hint is not None and hint[0] == text else None))
            own[key] = text
            done.append(key)
        self.index.set_many(pending)
        if self.changed is not None:
            for key in done:
                self.changed(key)

    def _add_known(self, text: str, tags: tuple[str, ...]) -> int:
        return self.index.extend([list(tags)])[0]

    def __delitem__(self, key: str) -> None:
        position = self._positions.pop(key)
        del self._texts[key]
        self._keys[position] = None
        self.index.set(position, None)
        if self.changed is not None:
            self.changed(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, key: object) -> bool:
        return key in self._texts

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IndexedCaptions):
            return self._texts == other._texts
        if isinstance(other, Mapping):
            return self._texts == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IndexedCaptions({len(self)} captions)"

    def items(self):  # type: ignore[no-untyped-def, override]  # the dict's own view: fast, read-only use
        return self._texts.items()

    def values(self):  # type: ignore[no-untyped-def, override]
        return self._texts.values()

    def keys(self):  # type: ignore[no-untyped-def, override]
        return self._texts.keys()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return self._texts.get(key, default)

    def expect(self, key: str, text: str, tags: Iterable[str]) -> None:
        """Remember that `text` splits into `tags`, so storing it next spares splitting it again."""
        self._known[key] = (text, tuple(tags))

    def expect_many(self, split: Mapping[str, tuple[str, tuple[str, ...]]]) -> None:
        """`expect` for each key -> (text, tags)."""
        self._known.update(split)

    def tags(self, key: str) -> tuple[str, ...]:
        return self.index.tags(self._positions[key])

    def position(self, key: str) -> int:
        return self._positions[key]

    def key_at(self, position: int) -> str:
        key = self._keys[position]
        if key is None:
            raise KeyError(position)
        return key

    def keys_at(self, positions: Iterable[int]) -> list[str]:
        """The keys at `positions`, in dataset order."""
        keys = self._keys
        return [keys[p] for p in sorted(positions)]  # type: ignore[misc]

    def positions(self) -> set[int]:
        return set(self._positions.values())
