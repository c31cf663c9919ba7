"""Every training mode from a TOML file and the command line, and in the Train tab's form and recipes."""

from __future__ import annotations

import io

import pytest

from lib_lora.cli.main import main
from lib_lora.train.config import TRAIN_HELP, TrainConfig
from lib_lora.train.modes.config import MODE_HELP, MODE_NAMES
from lib_lora.train.modes.registry import MODES, mode_for
from lib_lora.train.recipes import RECIPES
from lib_lora.ui.train import form as train_form
from lib_lora.ui.train import recipes as train_recipes

pytestmark = pytest.mark.hostcompat

SLIDER_TOML = """\
[model_arguments]
pretrained_model_name_or_path = "tiny"

[training_arguments]
max_train_steps = 2
seed = 1

[saving_arguments]
output_dir = "{out}"
output_name = "slider"

[dataset_arguments]
resolution = "64"

[training_mode_arguments]
training_mode = "slider"
slider_prompt = "red hair"
slider_target = "blue hair"
"""


def test_a_slider_trains_from_a_toml_file_on_the_command_line(tmp_path):
    pytest.importorskip("diffusers")
    config = tmp_path / "slider.toml"
    config.write_text(SLIDER_TOML.format(out=tmp_path.as_posix()), encoding="utf-8")
    out = io.StringIO()
    assert main(["train", str(config), "--quiet", "--set", "slider_guidance_scale=2"], out=out) == 0
    assert out.getvalue().startswith(f"train: wrote {tmp_path / 'slider.safetensors'} (2 steps")


def test_the_registry_has_every_mode_in_order():
    assert tuple(MODES) == MODE_NAMES
    assert [mode_for(name).name for name in MODE_NAMES] == ["lora", "slider", "difference", "rounds"]


def test_mode_options_share_one_help_text_in_the_cli_toml_and_the_tab():
    for name, text in MODE_HELP.items():
        assert TRAIN_HELP[name].startswith(text.rstrip(".")) and train_form.FIELD_BY_NAME[name].help == TRAIN_HELP[name]
    assert train_form.FIELD_BY_NAME["training_mode"].group == "basic"
    assert train_form.FIELD_BY_NAME["training_mode"].choices == MODE_NAMES
    assert train_form.FIELD_BY_NAME["rounds"].kind == "args"
    assert train_form.FIELD_BY_NAME["slider_prompt"].group == "training_mode_arguments"


@pytest.mark.parametrize("mode", MODE_NAMES[1:])
def test_every_mode_has_a_recipe_that_says_when_to_use_it(mode):
    recipes = [r for r in RECIPES.values() if r.values.get("training_mode") == mode]
    assert recipes and all("Use it" in r.description for r in recipes)
    for recipe in recipes:
        values = train_recipes.recipe_values(recipe.title)
        assert values["training_mode"] == mode
        assert train_form.config_from(values).mode.training_mode == mode  # the form reads its own values back


def test_a_mode_config_round_trips_through_toml_and_the_form():
    config = TrainConfig.from_dict({"training_mode": "rounds", "rounds": ["lr=1e-4,epochs=6,merge=0.7"],
                                    "rounds_rank": 16, "slider_prompt": "x", "difference_method": "direct"})
    assert TrainConfig.from_toml_text(config.to_toml()) == config
    assert train_form.config_from(train_form.values_of(config)) == config
