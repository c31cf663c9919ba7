"""Tag operations: tables of small cases, properties for the parsers and edits, and exact undo/redo."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.dataset.errors import TagOperationError
from lib_lora.dataset.history import ENTRY_BYTES, EditHistory
from lib_lora.dataset.tags import (
    KAOMOJI_TAGS,
    AddTags,
    Deduplicate,
    MoveToFront,
    RemoveTags,
    RenameTag,
    ReplaceText,
    SortTags,
    TagEdit,
    TagFilter,
    apply_edit,
    escape_brackets,
    filter_keys,
    join_tags,
    normalise_tag,
    split_tags,
    tag_frequency,
    underscores_to_spaces,
    unescape_brackets,
)

pytestmark = pytest.mark.hostcompat


@pytest.mark.parametrize(
    "text,tags",
    [
        ("a, b, c", ["a", "b", "c"]),
        ("  a ,b,,  c  ", ["a", "b", "c"]),
        ("long   hair,\tblue\u3000eyes", ["long hair", "blue eyes"]),
        ("a\nb\r\nc", ["a", "b", "c"]),
        ("", []),
        (" , ,\n", []),
        ("(tag:1.2), \\(x\\)", ["(tag:1.2)", "\\(x\\)"]),
    ],
)
def test_split_tags(text: str, tags: list[str]) -> None:
    assert split_tags(text) == tags


def test_join_tags() -> None:
    assert join_tags(["a", "b c"]) == "a, b c" and join_tags([]) == ""


@pytest.mark.parametrize(
    "tag,expected",
    [
        ("long_hair", "long hair"),
        ("hu_tao_(genshin_impact)", "hu tao (genshin impact)"),
        *[(kaomoji, kaomoji) for kaomoji in ("^_^", ">_<", "o_o", "0_0", "(o)_(o)", "+_+", "u_u", "@_@", "=_=", ";_;")],
        ("a_^_^", "a ^ ^"),
    ],
)
def test_underscores_to_spaces(tag: str, expected: str) -> None:
    assert underscores_to_spaces(tag) == expected


def test_kaomoji_list_is_data() -> None:
    assert len(KAOMOJI_TAGS) == len(set(KAOMOJI_TAGS)) >= 19 and all("_" in tag for tag in KAOMOJI_TAGS)


@pytest.mark.parametrize(
    "tag,escaped",
    [("hu tao (genshin impact)", "hu tao \\(genshin impact\\)"), ("\\(^o^)/", "\\\\\\(^o^\\)/"), ("plain", "plain")],
)
def test_escape_brackets(tag: str, escaped: str) -> None:
    assert escape_brackets(tag) == escaped and unescape_brackets(escaped) == tag


# --- edits: (edit, tags before, tags after) ------------------------------------------------------------------

EDIT_CASES = [
    (AddTags(("x",), "front"), ["a", "b"], ["x", "a", "b"]),
    (AddTags(("x", "y")), ["a", "b"], ["a", "b", "x", "y"]),
    (AddTags("x, y", 1), ["a", "b"], ["a", "x", "y", "b"]),
    (AddTags(("x",), 10), ["a"], ["a", "x"]),
    (AddTags(("a", "x"), "front"), ["b", "a"], ["x", "b", "a"]),  # present tags stay where they are
    (RemoveTags(("a",)), ["a", "b", "a"], ["b"]),
    (RemoveTags("b, c"), ["a", "b", "c"], ["a"]),
    (RenameTag("aiming at viewer", "aav"), ["1girl", "aiming at viewer", "gun"], ["1girl", "aav", "gun"]),
    (RenameTag("a", "b"), ["a", "c", "b"], ["c", "b"]),  # onto a present tag: merged
    (RenameTag("a", "a"), ["a", "b"], ["a", "b"]),  # renaming to itself never wipes it
    (RenameTag("x", "y"), ["a"], ["a"]),
    (ReplaceText("hair", "fur"), ["long hair", "hair ornament", "eyes"], ["long fur", "fur ornament", "eyes"]),
    (ReplaceText("_", " "), ["long_hair", "long hair"], ["long hair"]),
    (ReplaceText(r"^(\w+) (hair|eyes)$", r"\2 \1", regex=True), ["red hair", "blue eyes", "x"],
     ["hair red", "eyes blue", "x"]),
    (ReplaceText(r"^.*background$", "", regex=True), ["a", "white background", "b"], ["a", "b"]),
    (ReplaceText("RED", "blue", ignore_case=True), ["red hair"], ["blue hair"]),
    (ReplaceText("a, b", "c", scope="caption"), ["a", "b", "d"], ["c", "d"]),
    (ReplaceText("x", "p, q"), ["x", "y"], ["p", "q", "y"]),
    (ReplaceText(".", "!"), ["a.b", "ab"], ["a!b", "ab"]),  # plain text: "." is not a regex
    (Deduplicate(), ["a", "b", "a", "c", "b"], ["a", "b", "c"]),
    (SortTags(), ["c", "B", "a"], ["a", "B", "c"]),
    (SortTags(keep_tokens=1), ["trigger", "c", "a"], ["trigger", "a", "c"]),
    (SortTags(reverse=True), ["a", "c", "b"], ["c", "b", "a"]),
    (SortTags("frequency", frequencies=(("a", 1), ("b", 5), ("c", 3))), ["a", "b", "c", "z"], ["b", "c", "a", "z"]),
    (MoveToFront(("c", "missing", "b")), ["a", "b", "c", "d"], ["c", "b", "a", "d"]),
]


@pytest.mark.parametrize("edit,before,after", EDIT_CASES, ids=[case[0].description for case in EDIT_CASES])
def test_edits(edit: TagEdit, before: list[str], after: list[str]) -> None:
    snapshot = list(before)
    assert edit.apply(before) == after
    assert before == snapshot  # never mutated
    assert edit.description


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: ReplaceText("(", "x", regex=True), "invalid regular expression"),
        (lambda: ReplaceText("(a)", r"\2", regex=True), "invalid group reference"),
        (lambda: ReplaceText("(a)", r"\g<name>", regex=True), "unknown group name"),
        (lambda: ReplaceText("", "x"), "empty"),
        (lambda: ReplaceText("a", "b", scope="file"), "scope"),
        (lambda: AddTags(()), "no tags"),
        (lambda: AddTags((" ",)), "empty tag"),
        (lambda: AddTags(("a",), -1), "position"),
        (lambda: AddTags(("a",), "middle"), "position"),
        (lambda: RenameTag("a, b", "c"), "without commas"),
        (lambda: RenameTag("a", ""), "non-empty"),
        (lambda: SortTags("random"), "order"),
        (lambda: SortTags(keep_tokens=-1), "keep_tokens"),
        (lambda: TagFilter(include_mode="xor"), "include_mode"),
    ],
)
def test_invalid_edits(make, message: str) -> None:
    with pytest.raises(TagOperationError, match=message):
        make()


def test_regex_replacement_valid_with_plain_text() -> None:
    assert ReplaceText("(", r"\2").apply(["a(b"]) == ["a\\2b"]  # not a regex: the replacement is literal


# --- filters, frequency, apply_edit --------------------------------------------------------------------------

CAPTIONS = {"a": "1girl, red hair, smile", "b": "1girl, blue hair", "c": "2girls, red hair, blue hair", "d": ""}


@pytest.mark.parametrize(
    "tag_filter,keys",
    [
        (TagFilter(), ["a", "b", "c", "d"]),
        (TagFilter(include=("red hair", "1girl")), ["a"]),
        (TagFilter(include=("red hair", "1girl"), include_mode="any"), ["a", "b", "c"]),
        (TagFilter(exclude=("red hair",)), ["b", "d"]),
        (TagFilter(exclude=("red hair", "blue hair")), ["d"]),
        (TagFilter(exclude=("red hair", "blue hair"), exclude_mode="all"), ["a", "b", "d"]),
        (TagFilter(include="1girl", exclude="smile"), ["b"]),
    ],
)
def test_filters(tag_filter: TagFilter, keys: list[str]) -> None:
    assert filter_keys(CAPTIONS, tag_filter) == keys


def test_frequency_counts_each_caption_once() -> None:
    assert tag_frequency({"x": "a, b, a", "y": "b", "z": "B"}) == [("b", 2), ("a", 1), ("B", 1)]
    assert tag_frequency(["a", "a, c"]) == [("a", 2), ("c", 1)]


def test_apply_edit_returns_only_changed_captions() -> None:
    assert apply_edit(CAPTIONS, RemoveTags("smile")) == {"a": "1girl, red hair"}
    assert apply_edit(CAPTIONS, AddTags("trigger", "front"), keys=["b", "d"]) == {
        "b": "trigger, 1girl, blue hair", "d": "trigger",
    }
    assert apply_edit({"x": "a,b"}, Deduplicate()) == {}  # same tags: the text is not rewritten
    with pytest.raises(TagOperationError, match="no caption for"):
        apply_edit(CAPTIONS, Deduplicate(), keys=["zz"])


# --- history -------------------------------------------------------------------------------------------------


def test_undo_redo_restore_exactly() -> None:
    captions = {"a": "x,  y ,x", "b": "y\r\nz", "c": "w"}
    original = dict(captions)
    history: EditHistory[str] = EditHistory()
    assert history.apply(captions, Deduplicate()) == {"a": "x, y"}
    assert history.apply(captions, RenameTag("y", "q")) == {"a": "x, q", "b": "q, z"}
    after = dict(captions)
    assert history.apply(captions, RemoveTags("nothing")) == {} and history.undo_description == "rename 'y' to 'q'"
    assert history.undo(captions) == {"a": "x, y", "b": "y\r\nz"}
    assert history.undo(captions) == {"a": "x,  y ,x"} and captions == original and not history.can_undo
    assert history.undo(captions) == {}
    history.redo(captions)
    history.redo(captions)
    assert captions == after and not history.can_redo


def test_new_edit_clears_redo_and_limit_drops_oldest() -> None:
    captions = {"a": "a"}
    history: EditHistory[str] = EditHistory(limit=2)
    for tag in "xyz":
        history.apply(captions, AddTags(tag))
    history.undo(captions)
    history.set_texts(captions, {"a": "hand edit"}, "edit caption")
    assert not history.can_redo
    history.undo(captions)
    history.undo(captions)
    assert captions == {"a": "a, x"} and not history.can_undo


def test_undo_refuses_when_a_caption_changed_outside() -> None:
    captions = {"a": "a", "b": "b"}
    history: EditHistory[str] = EditHistory()
    history.apply(captions, AddTags("t"))
    captions["b"] = "changed elsewhere"
    with pytest.raises(TagOperationError, match="changed outside"):
        history.undo(captions)
    assert captions == {"a": "a, t", "b": "changed elsewhere"} and history.can_undo


# --- properties ----------------------------------------------------------------------------------------------

tag_text = st.text(st.characters(blacklist_characters=",\r\n"), min_size=1, max_size=12).map(normalise_tag).filter(bool)
tag_lists = st.lists(tag_text, max_size=8)
any_text = st.text(max_size=60)


@settings(max_examples=200, deadline=None)
@given(tags=tag_lists)
def test_split_join_round_trip(tags: list[str]) -> None:
    assert split_tags(join_tags(tags)) == tags


@settings(max_examples=200, deadline=None)
@given(text=any_text)
def test_split_is_stable(text: str) -> None:
    tags = split_tags(text)
    assert split_tags(join_tags(tags)) == tags
    assert all(tag == normalise_tag(tag) and tag and "," not in tag for tag in tags)


@settings(max_examples=200, deadline=None)
@given(text=any_text)
def test_escape_round_trip(text: str) -> None:
    assert unescape_brackets(escape_brackets(text)) == text


@settings(max_examples=100, deadline=None)
@given(tags=tag_lists)
def test_dedupe_idempotent_and_order_keeping(tags: list[str]) -> None:
    once = Deduplicate().apply(tags)
    assert Deduplicate().apply(once) == once and len(set(once)) == len(once)
    assert once == [tag for i, tag in enumerate(tags) if tag not in tags[:i]]


@settings(max_examples=100, deadline=None)
@given(tags=tag_lists, keep=st.integers(0, 4), order=st.sampled_from(["alphabetical", "frequency"]))
def test_sort_is_a_permutation_keeping_the_first_tokens(tags: list[str], keep: int, order: str) -> None:
    result = SortTags(order, keep, tuple(tag_frequency([join_tags(tags)])) if order == "frequency" else ()).apply(tags)
    assert sorted(result) == sorted(tags) and result[:keep] == tags[:keep]


@settings(max_examples=100, deadline=None)
@given(tags=tag_lists, new=tag_text, position=st.sampled_from(["front", "back", 0, 2, 50]))
def test_add_then_remove_is_identity_for_a_new_tag(tags: list[str], new: str, position: object) -> None:
    if new in tags:
        return
    added = AddTags((new,), position).apply(tags)
    assert added.count(new) == 1 and RemoveTags((new,)).apply(added) == tags


edits = st.one_of(
    st.builds(AddTags, st.lists(tag_text, min_size=1, max_size=2).map(tuple), st.sampled_from(["front", "back", 1])),
    st.builds(RemoveTags, st.lists(tag_text, min_size=1, max_size=2).map(tuple)),
    st.builds(RenameTag, tag_text, tag_text),
    st.just(Deduplicate()),
    st.builds(SortTags, st.sampled_from(["alphabetical"]), st.integers(0, 2)),
    st.builds(MoveToFront, st.lists(tag_text, min_size=1, max_size=2).map(tuple)),
)


@settings(max_examples=100, deadline=None)
@given(
    captions=st.dictionaries(st.integers(0, 5), st.one_of(any_text, tag_lists.map(join_tags)), max_size=5),
    steps=st.lists(edits, min_size=1, max_size=4),
)
def test_undo_after_apply_is_identity(captions: dict[int, str], steps: list[TagEdit]) -> None:
    working = dict(captions)
    history: EditHistory[int] = EditHistory()
    states = [dict(working)]
    for edit in steps:
        history.apply(working, edit)
        states.append(dict(working))
    while history.can_undo:
        history.undo(working)
    assert working == captions
    while history.can_redo:
        history.redo(working)
    assert working == states[-1]


def test_the_history_lets_its_oldest_steps_go_past_its_size_limit_and_always_keeps_the_newest() -> None:
    captions = {f"k{n}": "x" * 50 for n in range(10)}
    # a step of all ten holds 20 texts, 3 characters longer each step: 3,030, 3,090, 3,150, 3,210 bytes
    assert ENTRY_BYTES == 100
    history: EditHistory[str] = EditHistory(size_limit=9_500)
    for tag in "abc":
        history.apply(captions, AddTags(tag))
    assert history.depth == 3 and history.let_go == 0
    history.apply(captions, AddTags("d"))
    assert history.depth == 3 and history.let_go == 1
    history.undo(captions)
    history.undo(captions)
    history.undo(captions)
    assert captions["k0"] == "x" * 50 + ", a" and not history.can_undo
    for tag in "ef":  # the undone steps are freed by the change: they count no more
        history.apply(captions, AddTags(tag))
    assert history.depth == 2 and history.let_go == 0
    tiny: EditHistory[str] = EditHistory(size_limit=1)
    tiny.apply(captions, AddTags("g"))
    tiny.apply(captions, AddTags("h"))
    assert tiny.depth == 1 and tiny.let_go == 1 and tiny.undo(captions)
    with pytest.raises(ValueError, match="size_limit must be at least 1, got 0"):
        EditHistory(size_limit=0)
