"""A recipe's optimizer and what it needs: the recipe and optimizer cards say which package and whether it is
installed, Start (tab, queue, command line) refuses a missing one or arguments the optimizer does not take before
any work, and choosing another optimizer drops the arguments of the old one and says which. Packages are made
missing (`sys.modules[name] = None`, as Python does for an absent one) or present (a small stand-in module), so the
cases hold whatever this environment has installed."""

from __future__ import annotations

import importlib.machinery
import io
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from lib_lora.train.config import TrainConfig
from lib_lora.train.errors import ConfigError
from lib_lora.train.optim import OptimizerConfig, check_optimizer, split_args
from lib_lora.train.recipes import RECIPES
from lib_lora.ui.train import form as train_form
from lib_lora.ui.train import hints as train_hints
from lib_lora.ui.train import recipes as train_recipes

pytestmark = pytest.mark.hostcompat


class _DAdaptLion(torch.optim.Optimizer):
    """dadaptation's DAdaptLion as far as its signature goes."""

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, log_every: int = 0, d0: float = 1e-6, fsdp_in_use: bool = False) -> None:
        super().__init__(params, {"lr": lr})


@pytest.fixture
def packages(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`packages(dadaptation=True, prodigyopt=False)`: the module present (a stand-in) or missing."""
    def arrange(**present: bool) -> None:
        for name, there in present.items():
            module: types.ModuleType | None = None
            if there:
                module = types.ModuleType(name)
                module.__spec__ = importlib.machinery.ModuleSpec(name, None)
                module.DAdaptLion = _DAdaptLion  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, name, module)
    return arrange


def recipe_form(name: str, **changes: str) -> dict[str, Any]:
    return {**train_recipes.recipe_values(RECIPES[name].title), **changes}


# --- which package a recipe needs, and the cards -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "package"), [
    ("character-sd1", "dadaptation"), ("character-sdxl", "dadaptation"), ("style", None), ("object", None),
    ("background", None),
])
def test_each_recipe_says_what_it_needs(packages, name, package):
    packages(dadaptation=False)
    recipe = RECIPES[name]
    assert recipe.package == package
    card = train_recipes.recipe_markdown(recipe.title)
    if package is None:
        assert "**Needs:** nothing beyond torch." in card
    else:
        assert f"`{package}`" in card and "**not installed**" in card and f"Install {package}" in card
        packages(dadaptation=True)
        assert "which is installed" in train_recipes.recipe_markdown(recipe.title)


@pytest.mark.parametrize(("present", "pip", "offer", "fragments"), [
    (False, True, "dadaptation", ["needs the Python package `dadaptation`", "press **Install dadaptation**",
                                  "Start refuses"]),
    (False, False, None, ["needs the Python package `dadaptation`", "-m pip install dadaptation"]),
    (True, True, None, ["`dadaptation`, which is installed"]),
])
def test_the_optimizer_card_offers_the_install_only_where_it_can_run(packages, monkeypatch, present, pip, offer,
                                                                     fragments):
    packages(dadaptation=present)
    monkeypatch.setattr("lib_lora.packages.pip_available", lambda: pip)
    card, offered = train_hints.optimizer_card(recipe_form("character-sd1"))
    assert offered == offer
    for fragment in fragments:
        assert fragment in card


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"optimizer_type": "AdamW"}, "AdamW does not take d0"),  # the recipe's hidden argument, left by hand
    ({"optimizer_type": "AdamW", "optimizer_args": ""}, "1 is far above the usual 1e-4"),
    ({"learning_rate": "0.0001"}, "usually 1.0"),
])
def test_the_optimizer_card_warns_of_what_start_would_refuse_or_regret(packages, changes, fragment):
    packages(dadaptation=True)
    card, _ = train_hints.optimizer_card(recipe_form("character-sd1", **changes))
    assert fragment in card.replace("\\", "")


# --- changing the optimizer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "changes", "optimizer", "present", "expected", "said"), [
    ("character-sd1", {}, "AdamW", False,
     {"optimizer_args": "betas=0.9,0.999\nweight_decay=0", "learning_rate": "0.0001"},
     ["dropped d0=1e-06", "learning_rate 1.0 → 0.0001"]),
    ("character-sd1", {}, "SGDNesterov", False,
     {"optimizer_args": "weight_decay=0", "learning_rate": "0.0001"}, ["dropped betas=0.9,0.999, d0=1e-06"]),
    ("character-sd1", {}, "AdaFactor", False, {"optimizer_args": "weight_decay=0", "learning_rate": "0.0001"},
     ["dropped betas"]),
    ("style", {}, "DAdaptLion", True, {"learning_rate": "1.0"}, ["learning_rate 0.0001 → 1.0"]),
    ("style", {"optimizer_args": "betas=0.9,0.99\nweight_decay=0.01"}, "DAdaptLion", True,
     {"learning_rate": "1.0"}, ["learning_rate 0.0001 → 1.0"]),
    ("character-sd1", {}, "DAdaptLion", False, {}, ["kept unchecked"]),  # cannot tell what it takes
    ("style", {"optimizer_args": "eps=1e-08\nd0=1"}, "torch.optim.RAdam", False, {"optimizer_args": "eps=1e-08"},
     ["dropped d0=1"]),
    ("style", {}, "Lion", False, {}, ["fit it"]),
])
def test_changing_the_optimizer_drops_what_belonged_to_the_old_one(packages, start, changes, optimizer, present,
                                                                   expected, said):
    packages(dadaptation=present, lion_pytorch=False)
    values = recipe_form(start, **changes)
    updates = train_hints.switch_optimizer(optimizer, values["optimizer_args"], values["learning_rate"])
    status = updates.pop("status").replace("\\", "")
    assert updates == expected
    for fragment in said:
        assert fragment in status
    if present or optimizer in ("AdamW", "SGDNesterov", "AdaFactor", "torch.optim.RAdam"):
        config = train_form.config_from({**values, **updates, "optimizer_type": optimizer})
        check_optimizer(config.optimizer)  # what is left runs


@pytest.mark.parametrize(("optimizer", "args", "dropped"), [
    ("AdamW", {"betas": (0.9, 0.99), "weight_decay": 0.0, "d0": 1e-6}, {"d0": 1e-6}),
    ("adamw", {"fused": False}, {}),
    ("SGDNesterov", {"momentum": 0.8, "betas": (0.9, 0.99)}, {"betas": (0.9, 0.99)}),
    ("AdaFactor", {"relative_step": False, "d0": 1.0}, {"d0": 1.0}),
    ("NoSuchOptimizer", {"d0": 1.0}, {}),  # unknown: nothing is dropped, the run names it
])
def test_split_args_by_what_the_class_takes(optimizer, args, dropped):
    kept, gone = split_args(optimizer, args)
    assert gone == dropped and {**kept, **gone} == args


# --- Start refuses before any work --------------------------------------------------------------------------------


def _config(tmp_path: Path, recipe: str, **changes: Any) -> TrainConfig:
    values = {**RECIPES[recipe].values, "train_data_dir": str(tmp_path), "output_name": "refused",
              "output_dir": str(tmp_path / "out"), **changes}
    return TrainConfig.from_dict(values)


@pytest.mark.parametrize(("recipe", "changes", "key", "fragments"), [
    ("character-sd1", {}, "optimizer_type", ["'dadaptation'", "-m pip install dadaptation", "AdamW"]),
    ("character-sdxl", {}, "optimizer_type", ["'dadaptation'", "-m pip install dadaptation"]),
    ("character-sd1", {"optimizer_type": "AdamW", "learning_rate": 1e-4}, "optimizer_args",
     ["AdamW does not take d0", "remove it"]),
])
def test_a_run_is_refused_before_any_work(packages, tmp_path, recipe, changes, key, fragments):
    from lib_lora.train.loop import TrainRun

    packages(dadaptation=False)
    config = _config(tmp_path, recipe, **changes)
    with pytest.raises(ConfigError) as caught:
        TrainRun(config, object(), output_dir=tmp_path / "out")  # type: ignore[arg-type]  # the host is not touched
    assert caught.value.key == key
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_the_command_line_refuses_before_loading_the_model(packages, tmp_path, monkeypatch, capsys):
    from lib_lora.cli import train as cli_train
    from lib_lora.cli.main import main

    packages(dadaptation=False)
    monkeypatch.setattr(cli_train, "_load_host", lambda *a, **k: pytest.fail("the model was loaded"))
    config = _config(tmp_path, "character-sd1", pretrained_model_name_or_path="tiny")
    (tmp_path / "cfg.toml").write_text(config.to_toml(), encoding="utf-8")
    assert main(["train", str(tmp_path / "cfg.toml")], out=io.StringIO()) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'dadaptation'" in err and "pip install dadaptation" in err


def test_missing_package_names_the_fix_for_this_python(packages):
    packages(dadaptation=False)
    with pytest.raises(ConfigError) as caught:
        check_optimizer(OptimizerConfig(optimizer_type="DAdaptLion", learning_rate=1.0))
    assert f'"{sys.executable}" -m pip install dadaptation' in str(caught.value)
