"""The Train tab's hints, recomputed from the whole form after every change (a field, a recipe, an import): what
the dataset gives under caption_extension, the VRAM estimate, the recipe's card and the optimizer's card (the
package it needs, installed or not; advice on its learning rate and arguments).

Also what choosing another optimizer does to the options that belonged to the old one, and the Install button's
work. No gradio here: functions return {output name: value}; "install" is the package the button offers, or None.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ...packages import can_install, install_package
from ...train.errors import ConfigError
from ...train.optim import (
    LARGE_STEP,
    OptimizerConfig,
    accepted_args,
    adapts_step_size,
    check_optimizer,
    format_optimizer_args,
    missing_package,
    optimizer_notes,
    optimizer_package,
    parse_optimizer_args,
    pip_command,
    split_args,
)
from ...wording import escape_markdown
from . import form as train_form
from . import recipes as train_recipes

if TYPE_CHECKING:
    from .session import OwnFields, TrainSession

Updates = dict[str, Any]
FACTOR = "1.0"  # the learning rate of an optimizer that finds its own step size
STEP = train_form.to_form("learning_rate", "float", OptimizerConfig.learning_rate)  # AdamW's usual one
_OPTIMIZER_FIELDS = tuple(f.name for f in fields(OptimizerConfig))


def hints(session: TrainSession, own: OwnFields, values: Mapping[str, Any], recipe: str | None) -> Updates:
    """Every hint the tab shows, for the form as it is now."""
    card, offer = optimizer_card(values)
    updates: Updates = {
        "dataset_info": session.describe_dataset(own.dataset, str(values.get("caption_extension") or "")),
        "estimate": session.estimate(own, values),
        "optimizer_info": card,
        "install": offer,
    }
    if recipe:
        updates["recipe_info"] = train_recipes.recipe_markdown(recipe)
    return updates


def _optimizer_config(values: Mapping[str, Any]) -> OptimizerConfig:
    options = {name: train_form.from_form(train_form.FIELD_BY_NAME[name],
                                          values.get(name, train_form.FIELD_BY_NAME[name].default))
               for name in _OPTIMIZER_FIELDS}
    return OptimizerConfig(**{name: value for name, value in options.items() if value is not None})


def optimizer_card(values: Mapping[str, Any]) -> tuple[str, str | None]:
    """Markdown about the form's optimizer, and the package the Install button offers (None: no button)."""
    optimizer = str(values.get("optimizer_type") or "").strip()
    if not optimizer:
        return "", None
    shown = escape_markdown(optimizer)
    package = missing_package(optimizer)
    if package is not None:
        offer = package if can_install(package) else None
        fix = f"press **Install {package}**" if offer else f"run `{pip_command(package)}`"
        return (f"**{shown} needs the Python package `{package}`, which is not installed:** {fix}, or choose AdamW. "
                "Start refuses until then."), offer
    lines = []
    needed = optimizer_package(optimizer)
    if needed:
        lines.append(f"{shown} comes from the Python package `{needed}`, which is installed.")
    try:
        config = _optimizer_config(values)
        check_optimizer(config)
        lines += [escape_markdown(note) for note in optimizer_notes(config, [{"lr": config.learning_rate}])]
    except ConfigError as error:
        lines.append(f"**{escape_markdown(str(error))}**")
    return "\n".join(f"- {line}" for line in lines), None


def switch_optimizer(optimizer_type: str | None, args_text: str | None, learning_rate: str | None) -> Updates:
    """What choosing `optimizer_type` changes: optimizer_args it does not take are dropped, and a learning rate of
    the other kind (a factor for DAdapt…/Prodigy, a step size for the others) becomes the new one's usual value.
    The status says what changed."""
    name = (optimizer_type or "").strip()
    if not name:
        return {}
    updates: Updates = {}
    changes: list[str] = []
    try:
        args = parse_optimizer_args(train_form.from_form(train_form.FIELD_BY_NAME["optimizer_args"], args_text))
    except ConfigError:
        args = {}  # unreadable: left as typed, the hints say what is wrong with it
    kept, dropped = split_args(name, args)
    if dropped:
        updates["optimizer_args"] = train_form.to_form("optimizer_args", "args", kept)
        them = "it" if len(dropped) == 1 else "them"
        changes.append(f"dropped {', '.join(format_optimizer_args(dropped))} from optimizer_args ({name} does not "
                       f"take {them})")
    elif args and accepted_args(name) is None and missing_package(name):
        changes.append(f"optimizer_args kept unchecked ({missing_package(name)} is not installed to tell what "
                       f"{name} takes)")
    try:
        rate = float(str(learning_rate or "").strip())
    except ValueError:
        rate = None
    if rate is not None:
        if adapts_step_size(name) and rate < LARGE_STEP:
            updates["learning_rate"] = FACTOR
            changes.append(f"learning_rate {learning_rate} → {FACTOR} ({name} finds its own step size; the learning "
                           "rate is a factor of it)")
        elif not adapts_step_size(name) and rate >= LARGE_STEP:
            updates["learning_rate"] = STEP
            changes.append(f"learning_rate {learning_rate} → {STEP} ({name} takes the learning rate as its step "
                           "size)")
    what = "; ".join(changes) if changes else "the other optimizer options fit it"
    updates["status"] = f"Optimizer **{escape_markdown(name)}**: {escape_markdown(what)}."
    return updates


def install(optimizer_type: str | None) -> Iterator[Updates]:
    """Install the package the form's optimizer lacks (packages.install_package), saying what it is doing."""
    package = missing_package(optimizer_type or "")
    if package is None:
        yield {"status": f"{escape_markdown(optimizer_type or 'The optimizer')} needs no package that is missing."}
        return
    for line in install_package(package):
        yield {"status": escape_markdown(line)}
