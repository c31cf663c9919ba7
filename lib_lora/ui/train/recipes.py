"""Recipe presets for the Train tab: the trainer's RECIPES (values from the seed notes) as form values.

The dropdown shows each recipe's title; choosing one resets every option to TrainConfig's default and then to
the recipe's values, so nothing from an earlier recipe or edit is left behind. The dataset, output name,
trigger word and sample prompts are the user's and stay as they are.
"""

from __future__ import annotations

from typing import Any

from ...packages import can_install
from ...train.config import TrainConfig
from ...train.optim import missing_package, pip_command
from ...train.recipes import RECIPES, Recipe
from ...wording import escape_markdown
from . import form as train_form


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
    """The recipe's card: what it is for, what it needs beyond torch (installed or not), where it comes from."""
    recipe = recipe_by_title(title)
    source = escape_markdown(recipe.source)
    return f"{escape_markdown(recipe.description)}\n\n{needs_line(recipe)}\n\n*Source: {source}*"


def needs_line(recipe: Recipe) -> str:
    """Markdown: the Python package the recipe's optimizer needs and whether this Python has it."""
    package = recipe.package
    if package is None:
        return "**Needs:** nothing beyond torch."
    optimizer = escape_markdown(str(recipe.values.get("optimizer_type")))
    if missing_package(str(recipe.values.get("optimizer_type"))) is None:
        return f"**Needs:** the Python package `{package}` (for {optimizer}), which is installed."
    fix = f"press **Install {package}** under the options" if can_install(package) else \
        f"install it (`{pip_command(package)}`)"
    return (f"**Needs:** the Python package `{package}` (for {optimizer}), which is **not installed**: {fix}, or "
            "choose optimizer_type AdamW.")
