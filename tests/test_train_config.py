"""TrainConfig: flat sd-scripts options, sections, TOML round trip, errors that name the option, recipes, help."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.train.config import IGNORED, OPTION_PART, REFUSED, TRAIN_HELP, TrainConfig, flatten_sections
from lib_lora.train.errors import ConfigError
from lib_lora.train.recipes import RECIPES
from lib_lora.train.run_config import RUN_HELP, RunConfig

pytestmark = pytest.mark.hostcompat

# An sd-scripts config file as kohya_ss writes it (sections), with typical values.
SD_SCRIPTS_TOML = """
[model_arguments]
pretrained_model_name_or_path = "tiny"
v2 = false
clip_skip = 2

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
network_args = ["conv_dim=8", "conv_alpha=4"]
network_train_unet_only = false

[optimizer_arguments]
optimizer_type = "AdamW"
optimizer_args = ["weight_decay=0.01", "betas=0.9,0.99"]
learning_rate = 0.0001
unet_lr = 0.0001
text_encoder_lr = 5e-5
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 4
lr_warmup_steps = 100

[dataset_arguments]
train_data_dir = "/data/train"
resolution = "512,768"
enable_bucket = true
min_bucket_reso = 320
max_bucket_reso = 1536
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
color_aug = false

[training_arguments]
output_dir = "/out"
output_name = "mika"
save_precision = "fp16"
save_every_n_epochs = 1
max_train_epochs = 8
train_batch_size = 2
mixed_precision = "fp16"
seed = 42
xformers = true
persistent_data_loader_workers = true
max_data_loader_n_workers = 1
noise_offset = 0.05
min_snr_gamma = 5
gradient_checkpointing = true

[sample_prompt_arguments]
sample_prompts = "/out/prompts.txt"
sample_every_n_epochs = 1
sample_sampler = "euler_a"
"""


def test_an_sd_scripts_file_carries_over():
    config = TrainConfig.from_toml_text(SD_SCRIPTS_TOML)
    assert (config.network_dim, config.network_alpha, config.network_args) == (16, 8, {"conv_dim": "8",
                                                                                       "conv_alpha": "4"})
    assert config.optimizer_args == {"weight_decay": 0.01, "betas": (0.9, 0.99)}
    assert (config.resolution, config.keep_tokens, config.max_train_epochs) == ((512, 768), 1, 8)
    assert (config.mixed_precision, config.save_precision, config.clip_skip) == ("fp16", "fp16", 2)
    assert config.learning_rate == 1e-4 and config.text_encoder_lr == 5e-5
    noted = {note.split(" ")[0] for note in config.notes}
    assert noted == {"xformers", "persistent_data_loader_workers", "max_data_loader_n_workers", "sample_sampler"}
    assert all("is not used" in note for note in config.notes)


def test_round_trip_through_toml_is_exact():
    config = TrainConfig.from_toml_text(SD_SCRIPTS_TOML)
    again = TrainConfig.from_toml_text(config.to_toml())
    assert again.to_dict() == config.to_dict()
    assert again.run == config.run and again.data == config.data
    assert again.network == config.network and again.optimizer == config.optimizer
    assert "[training_arguments]" in config.to_toml() and "xformers" not in config.to_toml()


def test_save_toml_writes_a_file_that_reads_back(tmp_path):
    config = TrainConfig.from_dict({"train_data_dir": "d", "network_dim": 8, "optimizer_args": ["eps=1e-06"]})
    path = tmp_path / "run.toml"
    config.save_toml(path)
    assert TrainConfig.from_toml(path).to_dict() == config.to_dict()


@given(
    dim=st.integers(1, 256),
    alpha=st.floats(0, 256, allow_nan=False),
    lr=st.floats(1e-7, 1.0, allow_nan=False),
    steps=st.integers(1, 100_000),
    offset=st.one_of(st.none(), st.floats(0, 1, allow_nan=False)),
    resolution=st.tuples(st.integers(8, 256).map(lambda v: v * 8), st.integers(8, 256).map(lambda v: v * 8)),
    name=st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=20),
    shuffle=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_round_trip_property(dim, alpha, lr, steps, offset, resolution, name, shuffle):
    config = TrainConfig.from_dict({
        "network_dim": dim, "network_alpha": alpha, "learning_rate": lr, "max_train_steps": steps,
        "noise_offset": offset, "resolution": list(resolution), "output_name": name, "shuffle_caption": shuffle,
    })
    assert TrainConfig.from_toml_text(config.to_toml()).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("values", "key", "reason"),
    [
        ({"learning_rat": 1e-4}, "learning_rat", "did you mean learning_rate"),
        ({"network_dimm": 4}, "network_dimm", "did you mean network_dim"),
        ({"zzz": 1}, "zzz", "unknown option$"),
        ({"max_train_steps": 0}, "max_train_steps", "at least 1"),
        ({"max_train_steps": "many"}, "max_train_steps", "expected an integer"),
        ({"mixed_precision": "fp8"}, "mixed_precision", r"one of \['no', 'fp16', 'bf16'\]"),
        ({"full_fp16": True}, "full_fp16", "needs mixed_precision = 'fp16'"),
        ({"full_fp16": True, "full_bf16": True, "mixed_precision": "fp16"}, "full_bf16", "cannot both"),
        ({"save_model_as": "ckpt"}, "save_model_as", "pickles"),
        ({"output_name": "../evil"}, "output_name", "plain file name"),
        ({"output_name": "x.safetensors"}, "output_name", "plain file name"),
        ({"min_timestep": 500, "max_timestep": 400}, "max_timestep", "greater than min_timestep"),
        ({"loss_type": "l3"}, "loss_type", "expected one of"),
        ({"adaptive_noise_scale": 0.1}, "adaptive_noise_scale", "needs noise_offset"),
        ({"sample_every_n_steps": 10}, "sample_every_n_steps", "needs sample_prompts"),
        ({"min_snr_gamma": 0}, "min_snr_gamma", "above 0"),
        ({"vae": "x.safetensors"}, "vae", "host's own VAE"),
        ({"fused_backward_pass": True}, "fused_backward_pass", "not supported here"),
        ({"dataset_config": "d.toml"}, "dataset_config", "train_data_dir"),
        ({"cache_text_encoder_outputs": True}, "cache_text_encoder_outputs", "network_train_unet_only"),
        ({"cache_text_encoder_outputs": True, "network_train_unet_only": True, "shuffle_caption": True},
         "cache_text_encoder_outputs", "shuffle_caption"),
        ({"resolution": "500"}, "resolution", "multiple of 8"),
        ({"network_dim": 0}, "network_dim", "at least 1"),
        ({"lr_scheduler": "cosin"}, "lr_scheduler", "did you mean cosine"),
        ({"model_arguments": {"clip_skip": 1}, "clip_skip": 2}, "clip_skip", "given twice"),
        ({"training_arguments": {"deep": {"x": 1}}}, "training_arguments.deep", "nested tables"),
    ],
)
def test_bad_options_name_the_option_and_the_reason(values, key, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        TrainConfig.from_dict(values)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key} = ")


def test_refused_and_ignored_options_that_are_off_pass_silently():
    config = TrainConfig.from_dict({"fp8_base": False, "vae": None, "xformers": False, "no_half_vae": False})
    assert config.notes == ()


def test_alias_and_set_style_values():
    config = TrainConfig.from_dict({"caption_extention": ".txt", "max_train_steps": "200", "seed": "7",
                                    "gradient_checkpointing": "true", "noise_offset": "0.1"})
    assert (config.caption_extension, config.max_train_steps, config.seed) == (".txt", 200, 7)
    assert config.gradient_checkpointing is True and config.noise_offset == pytest.approx(0.1)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        TrainConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("network_dim = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.from_toml(bad)


def test_with_values_validates_and_keeps_the_rest():
    config = TrainConfig.from_dict({"network_dim": 8, "output_name": "a"})
    changed = config.with_values(output_name="b")
    assert (changed.output_name, changed.network_dim) == ("b", 8)
    with pytest.raises(ConfigError, match="network_dim"):
        config.with_values(network_dim=-1)
    with pytest.raises(AttributeError, match="no option"):
        _ = config.no_such_option


def test_every_option_has_help_and_a_single_owner():
    assert set(TRAIN_HELP) == set(OPTION_PART)
    assert all(isinstance(text, str) and len(text) > 10 for text in TRAIN_HELP.values())
    assert set(RUN_HELP) == {f for f in RunConfig.__dataclass_fields__}
    assert not (set(IGNORED) | set(REFUSED)) & set(OPTION_PART)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_are_valid_configs_that_name_their_source(name):
    recipe = RECIPES[name]
    config = TrainConfig.from_dict(dict(recipe.values))
    assert config.notes == ()
    assert recipe.source.startswith("a practitioner's ") and recipe.title and recipe.description
    assert not {"train_data_dir", "output_name", "output_dir", "sample_prompts"} & set(recipe.values)


def test_recipe_values_follow_the_notes():
    sd1, sdxl = RECIPES["character-sd1"].values, RECIPES["character-sdxl"].values
    assert (sd1["network_dim"], sd1["network_alpha"], sd1["learning_rate"]) == (16, 4, 1.0)
    assert sd1["network_args"] == ["train_blocks=IN04-IN07,OUT03-OUT06"]
    assert (sdxl["network_dim"], sdxl["network_alpha"]) == (8, 2) and sdxl["network_train_unet_only"]
    assert "full_fp16" not in sdxl and "full_bf16" not in sdxl


def test_flatten_sections_lifts_one_level():
    assert flatten_sections({"a_section": {"network_dim": 4}, "seed": 1}) == {"network_dim": 4, "seed": 1}
