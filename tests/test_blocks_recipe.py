"""LBW's R, U and X in block weights: parsed as written, drawn with a seed (the same seed, the same numbers),
X from the grid, and recorded so an image can be made again."""

from __future__ import annotations

import re

import pytest

from lib_lora.blocks.recipe import RANDOM_FIELD, WeightRecipe, draw_seed, is_recipe, with_field
from lib_lora.errors import BlockWeightError

ONES_16 = ",1" * 16


@pytest.mark.parametrize(("text", "weights", "random", "uses_x"), [
    ("1,0,0.5", (1.0, 0.0, 0.5), False, False),
    ("R,U,1", ("R", "U", 1.0), True, False),
    (" X , X+0.5,X-.25", ("X", "X+0.5", "X-.25"), False, True),
    ("R,X", ("R", "X"), True, True),
])
def test_parse(text, weights, random, uses_x):
    recipe = WeightRecipe.parse(text)
    assert recipe.weights == weights and (recipe.random, recipe.uses_x) == (random, uses_x)
    assert recipe.plain == (not random and not uses_x)
    assert WeightRecipe.parse(recipe.text()) == recipe


@pytest.mark.parametrize(("text", "needle"), [
    ("1,r", "value 2: 'r' is not a number, R, U, X, X+f or X-f"),
    ("1,X*2", "'X*2' is not a number"),
    ("1,,1", "empty value"),
    ("Y" + ONES_16, "value 1: 'Y'"),
    (",".join(["R"] * 200), "200 values"),
])
def test_parse_errors_name_the_value(text, needle):
    with pytest.raises(BlockWeightError, match=re.escape(needle)):
        WeightRecipe.parse(text)


@pytest.mark.parametrize(("text", "x", "expected"), [
    ("1,X,X+0.5,X-0.25,0", 1.0, (1.0, 1.0, 1.5, 0.75, 0.0)),
    ("X,X+0.5,X-0.25", 0.5, (0.5, 1.0, 0.25)),
    ("X-1", 0.0, (-1.0,)),
])
def test_x_takes_the_value_given(text, x, expected):
    assert WeightRecipe.parse(text).resolve(seed=0, x=x) == expected


def test_random_values_follow_lbw_ranges_and_the_seed():
    recipe = WeightRecipe.parse(",".join(["R", "U"] * 40))
    first = recipe.resolve(seed=7)
    assert first == recipe.resolve(seed=7)  # the seed makes it again
    assert first != recipe.resolve(seed=8)
    r_values, u_values = first[0::2], first[1::2]
    assert all(0.0 <= v < 1.0 for v in r_values) and all(-0.5 <= v <= 1.5 for v in u_values)
    assert min(u_values) < 0.0 and max(u_values) > 1.0  # U reaches past R's range on both sides
    assert all(round(v, 3) == v for v in first)  # three decimals, as LBW rounds


@pytest.mark.parametrize(("text", "record"), [
    ("1,R,U", '"1,R,U: seed 42"'),
    ("1,X,X-0.5", '"1,X,X-0.5: X 0.5"'),
    ("R,X", '"R,X: seed 42, X 0.5"'),
])
def test_record_names_what_resolves_it(text, record):
    assert WeightRecipe.parse(text).record(seed=42, x=0.5) == record


@pytest.mark.parametrize(("text", "found"), [("1,R", True), ("X+1,0", True), ("1,0.5", False), ("CHAR", False),
                                             ("1, U ", True), ("RR,1", False)])
def test_is_recipe(text, found):
    assert is_recipe(text) is found


def test_with_field_appends_to_the_fields_line():
    text = "a cat\nSteps: 2, Seed: 0"
    assert with_field(text, RANDOM_FIELD, '"R: seed 1"') == 'a cat\nSteps: 2, Seed: 0, Lora random weights: "R: seed 1"'


def test_draw_seed_is_a_recordable_seed():
    seeds = {draw_seed() for _ in range(8)}
    assert len(seeds) > 1 and all(0 <= seed < 2**32 for seed in seeds)
