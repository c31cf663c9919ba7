"""Scores to tags (thresholds, MCut, rating, exclude, max tags, formatting), caption merging, option checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.dataset.tagging.tagger import (
    OPTION_HELP,
    TaggerOptionError,
    TaggerOptions,
    TagLabels,
    mcut_threshold,
    merge_caption,
    tags_from_scores,
)

pytestmark = pytest.mark.hostcompat

ROWS = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("long_hair", 0), ("^_^", 0), ("star_(symbol)", 0), ("smile", 0), ("solo", 0), (">_<", 0),
    ("hu_tao_(genshin_impact)", 4), ("hatsune_miku", 4), ("kamado_nezuko", 4),
]
LABELS = TagLabels(tuple(n for n, _ in ROWS), np.array([c for _, c in ROWS]))
BASE = {"general": 0.7, "sensitive": 0.2, "questionable": 0.05, "explicit": 0.01,
        "1girl": 0.95, "long_hair": 0.6, "^_^": 0.4, "star_(symbol)": 0.36, "smile": 0.2, "solo": 0.35, ">_<": 0.1,
        "hu_tao_(genshin_impact)": 0.9, "hatsune_miku": 0.5, "kamado_nezuko": 0.1}


def scores(changes: dict[str, float] | None = None, **named: float) -> np.ndarray:
    values = {**BASE, **(changes or {}), **named}
    assert set(values) == set(BASE)
    return np.array([values[name] for name, _ in ROWS], dtype=np.float32)


CASES = [
    # defaults: general > 0.35 (solo at exactly 0.35 is out: strictly above), characters > 0.85, characters first
    ({}, scores(), ["hu tao (genshin impact)", "1girl", "long hair", "^_^", "star (symbol)"]),
    ({"general_threshold": 0.5}, scores(), ["hu tao (genshin impact)", "1girl", "long hair"]),
    ({"character_threshold": 0.4}, scores(), ["hu tao (genshin impact)", "hatsune miku", "1girl", "long hair",
                                              "^_^", "star (symbol)"]),
    ({"character_threshold": 0.95}, scores(), ["1girl", "long hair", "^_^", "star (symbol)"]),
    ({"include_rating": True}, scores(), ["general", "hu tao (genshin impact)", "1girl", "long hair", "^_^",
                                          "star (symbol)"]),
    ({"include_rating": True}, scores(explicit=0.99), ["explicit", "hu tao (genshin impact)", "1girl",
                                                       "long hair", "^_^", "star (symbol)"]),
    ({"exclude": "long hair, Star_(symbol)"}, scores(), ["hu tao (genshin impact)", "1girl", "^_^"]),
    ({"exclude": ("hu_tao_(genshin_impact)",)}, scores(), ["1girl", "long hair", "^_^", "star (symbol)"]),
    # max_tags keeps the best scores over both categories, then characters first
    ({"max_tags": 2}, scores(), ["hu tao (genshin impact)", "1girl"]),
    ({"max_tags": 2}, scores({"hu_tao_(genshin_impact)": 0.86, "long_hair": 0.99}),
     ["long hair", "1girl"]),
    ({"max_tags": 3, "exclude": "1girl"}, scores(), ["hu tao (genshin impact)", "long hair", "^_^"]),
    ({"underscores_to_spaces": False}, scores(), ["hu_tao_(genshin_impact)", "1girl", "long_hair", "^_^",
                                                  "star_(symbol)"]),
    ({"escape_brackets": True}, scores(), [r"hu tao \(genshin impact\)", "1girl", "long hair", "^_^",
                                           r"star \(symbol\)"]),
    ({"general_threshold": 0.05}, scores(), ["hu tao (genshin impact)", "1girl", "long hair", "^_^",
                                             "star (symbol)", "solo", "smile", ">_<"]),
    # MCut: general scores 0.95 | 0.6 0.4 0.36 0.35 0.2 0.1: the largest gap is below 1girl
    ({"general_mcut": True}, scores(), ["hu tao (genshin impact)", "1girl"]),
    # character MCut: 0.9 | 0.45 0.1 -> threshold 0.675; with all low, the floor of 0.15 holds
    ({"character_mcut": True, "general_threshold": 0.9}, scores(hatsune_miku=0.45),
     ["hu tao (genshin impact)", "1girl"]),
    ({"character_mcut": True, "general_threshold": 0.9},
     scores({"hu_tao_(genshin_impact)": 0.14, "hatsune_miku": 0.12, "kamado_nezuko": 0.01}), ["1girl"]),
    ({"character_mcut": True, "general_threshold": 0.9},
     scores({"hu_tao_(genshin_impact)": 0.3, "hatsune_miku": 0.16, "kamado_nezuko": 0.01}),
     ["hu tao (genshin impact)", "hatsune miku", "1girl"]),
]


@pytest.mark.parametrize(("kwargs", "row", "expected"), CASES)
def test_tags_from_scores(kwargs: dict, row: np.ndarray, expected: list[str]) -> None:
    assert tags_from_scores(row, LABELS, TaggerOptions(**kwargs)) == expected


def test_equal_scores_keep_the_tag_list_order_and_shape_is_checked() -> None:
    row = scores(long_hair=0.95)
    assert tags_from_scores(row, LABELS, TaggerOptions(character_threshold=1.0))[:2] == ["1girl", "long hair"]
    with pytest.raises(ValueError, match="expected 14 scores"):
        tags_from_scores(row[:-1], LABELS, TaggerOptions())


@pytest.mark.parametrize(("probs", "threshold"), [
    ([0.9, 0.8, 0.2, 0.1], 0.5),
    ([0.1, 0.9, 0.2, 0.8], 0.5),  # order does not matter
    ([0.6, 0.5], 0.55),
    ([0.3, 0.3, 0.3], 0.3),
])
def test_mcut_threshold(probs: list[float], threshold: float) -> None:
    assert mcut_threshold(np.array(probs)) == pytest.approx(threshold)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=2, max_size=40))
def test_mcut_splits_at_the_largest_gap(probs: list[float]) -> None:
    ordered = sorted(probs, reverse=True)
    threshold = mcut_threshold(np.array(probs))
    above = [p for p in ordered if p > threshold]
    gaps = [a - b for a, b in zip(ordered, ordered[1:])]
    if max(gaps) > 0:
        assert 1 <= len(above) < len(ordered)
        k = len(above)
        assert ordered[k - 1] - ordered[k] == pytest.approx(max(gaps), abs=1e-6)


def test_mcut_needs_two_scores() -> None:
    with pytest.raises(ValueError, match="at least two"):
        mcut_threshold(np.array([0.5]))


MERGES = [
    # (existing policy, existing caption, trigger, expected)
    ("overwrite", "old, tags", "", "1girl, long hair"),
    ("skip", None, "", "1girl, long hair"),
    ("skip", None, "tinychar", "tinychar, 1girl, long hair"),
    ("append", "tinychar, long_hair, blue eyes", "tinychar", "tinychar, long_hair, blue eyes, 1girl"),
    ("append", "blue eyes", "tinychar", "tinychar, blue eyes, 1girl, long hair"),
    ("prepend", "blue eyes, 1girl", "", "1girl, long hair, blue eyes"),
    ("prepend", "blue eyes, TinyChar", "tinychar", "tinychar, 1girl, long hair, blue eyes"),
    ("overwrite", "x", "a, b, a", "a, b, 1girl, long hair"),
    ("append", "", "", "1girl, long hair"),
]


@pytest.mark.parametrize(("policy", "existing", "trigger", "expected"), MERGES)
def test_merge_caption(policy: str, existing: str | None, trigger: str, expected: str) -> None:
    options = TaggerOptions(existing=policy, trigger=trigger)
    assert merge_caption(["1girl", "long hair"], existing, options) == expected


def test_escaped_and_plain_spellings_are_one_tag_when_merging() -> None:
    options = TaggerOptions(existing="append", escape_brackets=True)
    assert merge_caption([r"star \(symbol\)"], "star (symbol)", options) == "star (symbol)"


BAD_OPTIONS = [
    ("general_threshold", 1.5), ("general_threshold", -0.1), ("general_threshold", "0.3"),
    ("character_threshold", True), ("max_tags", -1), ("max_tags", 2.5), ("existing", "replace"),
    ("caption_ext", "txt"), ("caption_ext", ".png"), ("caption_ext", "./x"), ("batch_size", 0),
    ("batch_size", "big"),
]


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS)
def test_bad_option_names_field_and_value(name: str, value: object) -> None:
    with pytest.raises(TaggerOptionError) as caught:
        TaggerOptions(**{name: value})
    assert name in str(caught.value) and repr(value) in str(caught.value)


def test_option_text_lists_are_split_and_every_option_has_help() -> None:
    options = TaggerOptions(exclude=" a ,b,, c", trigger=["x ", ""])
    assert options.exclude == ("a", "b", "c") and options.trigger == ("x",)
    fields = set(TaggerOptions.__dataclass_fields__)
    assert set(OPTION_HELP) == fields
