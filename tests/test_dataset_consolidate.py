"""Consolidation into a trigger word: the seed's example, the share threshold, the feature table's contents."""

from __future__ import annotations

import csv

import pytest

from lib_lora.dataset.consolidate import (
    FEATURE_TAGS_CSV,
    Consolidate,
    consolidate,
    feature_category,
    load_feature_tags,
    propose_consolidation,
)
from lib_lora.dataset.errors import TagOperationError
from lib_lora.dataset.history import EditHistory
from lib_lora.dataset.tags import split_tags

pytestmark = pytest.mark.hostcompat

# The seed notes' example (001_*, タグについて): WD14's tags for one picture of the character.
KAYOKO = (
    "kayoko (blue archive), 1girl, solo, multicolored hair, black hair, horns, hood, white hair, halo, sitting, "
    "skirt, bag, hoodie, two-tone hair, red eyes, blush, long sleeves, black hoodie, red skirt, ponytail, bangs, "
    "looking at viewer, closed mouth, miniskirt, collarbone, hair between eyes, feet out of frame, plaid skirt, "
    "pleated skirt, sidelocks, hood down, hand up, mole on neck, medium hair, backpack, clothes writing, plaid"
)
SEED_REMOVED = {
    "white hair", "horns", "black hair", "halo", "red eyes", "ponytail", "two-tone hair", "bangs",
    "hair between eyes", "sidelocks", "multicolored hair",
}
KEPT = {
    "1girl", "solo", "looking at viewer", "hood", "hoodie", "skirt", "red skirt", "plaid skirt", "miniskirt",
    "long sleeves", "sitting", "feet out of frame", "collarbone", "closed mouth", "backpack", "bag", "blush",
}


def test_seed_example() -> None:
    proposals = propose_consolidation([KAYOKO], "kayoko (blue archive)")
    proposed = {p.tag for p in proposals}
    assert SEED_REMOVED <= proposed
    assert not proposed & KEPT
    assert proposed - SEED_REMOVED == {"mole on neck", "medium hair"}  # features the seed's list did not name
    assert all(p.share == 1.0 and p.count == 1 for p in proposals)
    assert {p.tag: p.category for p in proposals}["red eyes"] == "eye_color"
    [result] = consolidate({"k": KAYOKO}, "kayoko (blue archive)", proposed).values()
    assert split_tags(result)[:3] == ["kayoko (blue archive)", "1girl", "solo"]
    assert set(split_tags(result)) == set(split_tags(KAYOKO)) - proposed


def test_share_counts_only_captions_with_the_trigger() -> None:
    captions = {
        1: "char, 1girl, red hair, blue eyes",
        2: "char, 1girl, red hair, long_hair",
        3: "char, red hair, long_hair",
        4: "char, green eyes",
        **{10 + i: "other, blue eyes, wings" for i in range(10)},
    }
    proposals = propose_consolidation(captions, "char", min_share=0.5)
    assert [(p.tag, p.count, p.share) for p in proposals] == [("red hair", 3, 0.75), ("long_hair", 2, 0.5)]
    assert [p.tag for p in propose_consolidation(captions, "char", min_share=0.25)] == [
        "red hair", "long_hair", "blue eyes", "green eyes",
    ]


def test_without_the_trigger_every_caption_counts() -> None:
    proposals = propose_consolidation(["red hair, smile", "red hair"], "newchar")
    assert [(p.tag, p.share) for p in proposals] == [("red hair", 1.0)]
    assert propose_consolidation([], "x") == []


def test_consolidate_adds_the_trigger_first_and_is_undoable() -> None:
    captions = {"a": "1girl, red hair, char, smile", "b": "red_hair, 1girl", "c": "char, 1girl"}
    assert consolidate(captions, "char", ["red hair"]) == {"a": "char, 1girl, smile", "b": "char, 1girl"}
    history: EditHistory[str] = EditHistory()
    working = dict(captions)
    history.apply(working, Consolidate("char", ("red hair",)))
    history.undo(working)
    assert working == captions


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: propose_consolidation(["a"], "char", min_share=0), "min_share"),
        (lambda: propose_consolidation(["a"], "char", min_share=1.5), "min_share"),
        (lambda: propose_consolidation(["a"], ""), "trigger"),
        (lambda: consolidate({"a": "x"}, "red hair", ["red_hair"]), "cannot be one of the removed"),
        (lambda: consolidate({"a": "x"}, "a, b", ["red hair"]), "trigger"),
    ],
)
def test_errors(call, message: str) -> None:
    with pytest.raises(TagOperationError, match=message):
        call()


# --- the feature table ---------------------------------------------------------------------------------------

CATEGORIES = {
    "hair_color", "hair_length", "hair_style", "eye_color", "eyes", "face", "ears", "tail", "halo", "horns",
    "wings", "skin", "body", "species",
}
NOT_FEATURES = [
    "1girl", "solo", "2girls", "multiple girls", "looking at viewer", "from side", "from behind", "upper body",
    "cowboy shot", "full body", "school uniform", "skirt", "hood", "hair ornament", "hairclip", "hair ribbon",
    "hair bow", "glasses", "hat", "blush", "smile", "open mouth", "collarbone", "navel", "holding gun", "aiming",
    "simple background", "white background", "highres", "virtual youtuber",
]


def test_feature_table_is_clean() -> None:
    with open(FEATURE_TAGS_CSV, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 300
    tags = [row["tag"] for row in rows]
    assert len(tags) == len(set(tags)) == len(load_feature_tags())
    assert {row["category"] for row in rows} == CATEGORIES
    assert all(tag == tag.strip().lower() and "_" not in tag and "," not in tag for tag in tags)


@pytest.mark.parametrize("tag", NOT_FEATURES)
def test_clothing_counts_directions_and_composition_are_not_features(tag: str) -> None:
    assert feature_category(tag) is None


@pytest.mark.parametrize(
    "tag,category",
    [("long_hair", "hair_length"), ("Blue Eyes", "eye_color"), ("cat ears", "ears"), ("fang", "face"),
     ("mole under eye", "face"), ("dragon wings", "wings"), ("mechanical halo", "halo"), ("fox tail", "tail"),
     ("dark-skinned female", "skin"), ("large breasts", "body"), ("freckles", "face")],
)
def test_feature_lookup_ignores_spelling(tag: str, category: str) -> None:
    assert feature_category(tag) == category
