"""The slider mode on a tiny model taught that one word is red: erasing the word, a slider over −1..1, LECO's file.

The fixture first teaches the tiny random model (a LoRA trained on red images captioned `zqred` and grey ones
captioned `plain`, merged for good into this module's copy of the model), so `zqred` means a colour. Its images
are encoded by 8×8 average pooling instead of the random tiny VAE, which maps a red and a grey picture to nearly
the same latent; the pooled latents keep the colour, as SD's VAE does. Colour is measured where the tiny model
works: the latents it generates, projected on the direction from grey's latent to red's, compared seed by seed
(the random model's seeds differ far more than its prompts do). The tiny model learns the colour only weakly in
the seconds a test has, so the slider is measured on the word's own axis: per seed, the direction from `plain`'s
picture to `zqred`'s.
Generation runs without classifier-free guidance: a LoRA on every layer of a random model moves the empty
prompt's prediction as much as the word's, so CFG would measure that mix, not what the slider learned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from PIL import Image

from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import load_lora_file
from lib_lora.networks.keys import build_target_index
from lib_lora.networks.loaded import as_applied, load_network
from lib_lora.train.config import TrainConfig
from lib_lora.train.errors import ConfigError
from lib_lora.train.loop import TrainRun
from lib_lora.train.modes.slider_prompts import MAX_PROMPTS_FILE_BYTES, read_prompts_file

pytest.importorskip("diffusers")

RED, GREY = (230, 30, 30), (128, 128, 128)
SEEDS = (0, 1, 2, 3)
LECO_EXAMPLE = """\
- target: "van gogh" # what word for erasing the positive concept from
  positive: "van gogh" # concept to erase
  unconditional: "" # word to take the difference from the positive concept
  neutral: "" # starting point for conditioning the target
  action: "erase" # erase or enhance
  guidance_scale: 1.0
  resolution: 512
  bucketing: false
  batch_size: 2
"""
"""The prompts file of LECO's README (examples/prompts.yaml), as users have it."""


def _write_colour_data(root: Path) -> Path:
    for word, colour in (("zqred", RED), ("plain", GREY)):
        folder = root / f"1_{word}"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for index in range(2):
            pixels = np.clip(np.array(colour)[None, None] + rng.integers(-10, 10, (64, 64, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")
            (folder / f"{index}.txt").write_text(word, encoding="utf-8")
    return root


def _config(tmp: Path, **values) -> TrainConfig:
    base = {"pretrained_model_name_or_path": "tiny", "output_dir": str(tmp), "resolution": "64",
            "train_batch_size": 2, "network_dim": 4, "network_alpha": 4, "seed": 1, "network_train_unet_only": True,
            "optimizer_args": ["foreach=True"]}
    return TrainConfig.from_dict({**base, **values})


@pytest.fixture(scope="module")
def colour_host(tmp_path_factory):
    """The tiny model after a quick lesson: `zqred` images are red, `plain` ones grey (merged in for good)."""
    torch.manual_seed(0)
    host = load_diffusers_host("tiny")
    host.encode_images = pooled_latents
    root = tmp_path_factory.mktemp("colour")
    config = _config(root / "out", train_data_dir=str(_write_colour_data(root / "data")), output_name="colour",
                     train_batch_size=4, network_dim=8, network_alpha=8, learning_rate=1e-2, max_train_steps=80,
                     min_timestep=700, cache_text_encoder_outputs=True)
    result = TrainRun(config, host).run()
    WeightMerger(build_target_index(host)).apply([as_applied(load_network(result.output))])  # no restore: ours
    return host


def pooled_latents(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 4, H/8, W/8]: each 8×8 block's mean colour, and its grey level as the fourth channel."""
    pooled = torch.nn.functional.avg_pool2d(pixels.float().cpu(), 8)
    return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)


def generated(host, prompt: str, lora: Path | None = None, weight: float = 1.0) -> torch.Tensor:
    """Latents for `prompt` at SEEDS (4 steps, no CFG), with `lora` merged at `weight` when given."""
    def run() -> torch.Tensor:
        generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
        latents = host.pipeline([prompt] * len(SEEDS), num_inference_steps=4, guidance_scale=1.0, height=64,
                                width=64, generator=generators, output_type="latent").images
        return latents
    if lora is None:
        return run()
    applied = as_applied(load_network(lora), te_multiplier=weight, unet_multiplier=weight)
    with WeightMerger(build_target_index(host)).applied([applied]):
        return run()


def word_axis(host) -> torch.Tensor:
    """Per seed, the unit direction from `plain`'s latents to `zqred`'s: where the red word takes a picture."""
    axis = (generated(host, "zqred") - generated(host, "plain")).flatten(1)
    return axis / axis.norm(dim=1, keepdim=True)


def test_an_erase_slider_brings_the_word_to_the_neutral_prompt(colour_host, tmp_path):
    before = snapshot_host(colour_host)
    config = _config(tmp_path, training_mode="slider", slider_prompt="zqred", slider_target="",
                     slider_neutral="plain", output_name="erase", learning_rate=2e-3, max_train_steps=40)
    result = TrainRun(config, colour_host).run()
    assert_same_state(before, snapshot_host(colour_host))
    assert result.output is not None and result.loss_history[-1] < result.loss_history[0]

    neutral = generated(colour_host, "plain")
    distance_before = (generated(colour_host, "zqred") - neutral).flatten(1).norm(dim=1)
    distance_after = (generated(colour_host, "zqred", result.output) - neutral).flatten(1).norm(dim=1)
    assert float(distance_after.mean()) < 0.8 * float(distance_before.mean()), (distance_after, distance_before)
    metadata = load_lora_file(result.output).metadata
    assert metadata["lora_studio_training_mode"] == "slider" and "zqred" in metadata["lora_studio_slider_prompts"]


def test_a_slider_moves_the_colour_both_ways_monotonically(colour_host, tmp_path):
    config = _config(tmp_path, training_mode="slider", slider_prompt="plain", slider_target="zqred",
                     slider_guidance_scale=2.0, output_name="redder", learning_rate=2e-3, max_train_steps=40)
    lora = TrainRun(config, colour_host).run().output
    axis, base = word_axis(colour_host), generated(colour_host, "plain").flatten(1)
    shifts = [float(((generated(colour_host, "plain", lora, w).flatten(1) - base) * axis).sum(1).mean())
              for w in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    assert all(a < b for a, b in zip(shifts, shifts[1:])), shifts
    gap = float((generated(colour_host, "zqred").flatten(1) - base).norm(dim=1).mean())
    assert shifts[0] < -0.1 * gap and shifts[-1] > 0.1 * gap, (shifts, gap)


def test_lecos_readme_example_runs(colour_host, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(LECO_EXAMPLE, encoding="utf-8")
    sets = read_prompts_file(prompts)
    assert [(s.target, s.positive, s.unconditional, s.neutral, s.action, s.resolution, s.batch_size)
            for s in sets] == [("van gogh", "van gogh", "", "", "erase", 512, 2)]
    prompts.write_text(LECO_EXAMPLE.replace("resolution: 512", "resolution: 64"), encoding="utf-8")
    config = _config(tmp_path, training_mode="slider", slider_prompts_file=str(prompts), output_name="leco",
                     max_train_steps=2)
    result = TrainRun(config, colour_host).run()
    assert result.steps == 2 and result.output is not None and result.output.is_file()


@pytest.mark.parametrize(("text", "key", "words"), [
    ("- positive: x\n", "slider_prompts_file[0].target", "needs a target"),
    ("- target: x\n  action: forget\n", "slider_prompts_file[0].action", "erase"),
    ("- target: x\n  strength: 2\n", "slider_prompts_file[0].strength", "not a LECO prompt setting"),
    ("- target: x\n  guidance_scale: 1000\n", "slider_prompts_file[0].guidance_scale", "at most 100"),
    ("- target: x\n  resolution: 100\n", "slider_prompts_file[0].resolution", "multiple of 8"),
    ("target: x\n", "slider_prompts_file", "YAML list"),
    ("- target: [unclosed\n", "slider_prompts_file", "not a readable YAML"),
    ("- !!python/object/apply:os.system ['echo hi']\n", "slider_prompts_file", "not a readable YAML"),
])
def test_a_bad_prompts_file_names_what_is_wrong(tmp_path, text, key, words):
    path = tmp_path / "prompts.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=words) as caught:
        read_prompts_file(path)
    assert caught.value.key == key


def test_a_prompts_file_past_its_bound_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"- target: x\n" + b"#" * MAX_PROMPTS_FILE_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        read_prompts_file(path)


def test_slider_options_are_checked(tmp_path):
    host = load_diffusers_host("tiny")
    before = snapshot_host(host)
    with pytest.raises(ConfigError, match="set the prompt whose concept") as caught:
        TrainRun(_config(tmp_path, training_mode="slider", output_name="none"), host).run()
    assert caught.value.key == "slider_prompt"
    assert_same_state(before, snapshot_host(host))
    with pytest.raises(ConfigError, match="multiple of 8"):
        TrainConfig.from_dict({"training_mode": "slider", "slider_prompt": "x", "slider_resolution": 100})
    with pytest.raises(ConfigError, match="lora mode only"):
        TrainConfig.from_dict({"training_mode": "slider", "slider_prompt": "x", "validation_split": 0.2})
