"""Recipe presets for the Train tab: the trainer's RECIPES (values from the seed notes) as form values.

The dropdown shows each recipe's title; choosing one resets every option to TrainConfig's default and then to
the recipe's values, so nothing from an earlier recipe or edit is left behind. The dataset, output name,
trigger word and sample prompts are the user's and stay as they are.
"""

from __future__ import annotations

from typing import Any

from ..train.config import TrainConfig
from ..train.recipes import RECIPES, Recipe
from . import train_form
from .common import escape_markdown


def recipe_titles() -> list[str]:
    """The dropdown's choices, in RECIPES' order."""
    return [recipe.title for recipe in RECIPES.values()]


def recipe_by_title(title: str) -> Recipe:
    for recipe in RECIPES.values():
        if recipe.title == title:
            return recipe
    raise KeyError(title)


def recipe_values(title: str) -> dict[str, Any]:
    """Every field's value under the recipe (fields it does not set take their defaults)."""
    return train_form.values_of(TrainConfig.from_dict(dict(recipe_by_title(title).values)))


def recipe_markdown(title: str) -> str:
    recipe = recipe_by_title(title)
    return f"{escape_markdown(recipe.description)}\n\n*Source: {escape_markdown(recipe.source)}*"
