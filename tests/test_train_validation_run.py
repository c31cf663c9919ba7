"""Validation in runs on the tiny model: it falls when a run learns, rises when a run memorises, is exact for a
file, lands in the metadata, and leaves training untouched.

Settings (batch 1, UNet only, cached captions, 64 px) keep each run to a few seconds. The learning run trains the
checkerboard pattern at 3e-3 and validates on held-out pattern images (measured falling by about 15% in 30 steps;
the test asks for any fall). The memorising run trains two images of one kind (a shared checkerboard, and a third
of its squares in colours of each image's own, from lib_lora.tiny.images) and validates on four other images of
that kind. The tiny random VAE's latents are about 25 times smaller than a real VAE's, so small that the noise
hides the images and a LoRA learns only to denoise in general, equally well for every image; the test scales them
100× (a spread about four times a real VAE's), so the image outweighs the noise on most timesteps. Then the LoRA (LoCon,
batch 8) first learns the checkerboard (both losses fall) and then the two images' own squares: the loss on the
two, measured with the same fixed noise as the validation, keeps falling while the validation loss climbs from
its lowest. Its latents are the VAE's posterior mean, not a sample: the sample's seed depends on the image's path,
so the run is the same in every process and folder. Measured for data seeds 0-3 (the test runs 0): the
validation loss is lowest at step 32 or 48, then 1.2-3.1% higher at step 80 (3.1% for seed 0); the training
images' loss falls at every measurement, 53-55% in all, ending 35-38% below the validation loss. The test asks for
1%, 50% and 30%. With the latents unscaled the two losses fall together to the end (the test then fails).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_run_helpers import make_pattern_dataset, tiny_config

from lib_lora.cli.main import main
from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.networks.files import read_header
from lib_lora.tiny.images import generate_detail_dataset
from lib_lora.train.loop import TrainRun
from lib_lora.train.validation import ValidationSet, validation_loss

pytest.importorskip("diffusers")

FAST = {"train_batch_size": 1, "network_train_unet_only": True, "cache_text_encoder_outputs": True,
        "optimizer_args": ["foreach=True"]}
MEMORISE = {**FAST, "train_batch_size": 8, "max_train_steps": 80, "learning_rate": 3e-3, "network_dim": 32,
            "network_alpha": 32, "network_args": ["conv_dim=16", "conv_alpha=16"]}
MEMORISE_EVERY = 16
MEMORISE_GAIN = 100.0
"""The memorising run's latent scale (see the module's docstring)."""


@pytest.fixture(scope="module")
def host():
    return load_diffusers_host("tiny")


def noise_dataset(folder: Path, count: int, seed: int, caption: str = "zqnoise") -> Path:
    """`folder/1_noise/` with `count` images of uniform random pixels; returns folder."""
    subset = folder / "1_noise"
    subset.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(subset / f"n{index}.png")
        (subset / f"n{index}.txt").write_text(caption, encoding="utf-8")
    return folder


def test_validation_does_not_change_training_and_each_file_records_its_own_value(tmp_path, host):
    data = make_pattern_dataset(tmp_path / "data", count=3)
    validation = noise_dataset(tmp_path / "validation", 2, seed=5)
    # network dropout draws from the global generator: a measurement that drew from it would change training
    settings = {**FAST, "max_train_steps": 6, "network_dropout": 0.2}
    plain = TrainRun(tiny_config(data, tmp_path / "plain", **settings), host).run()
    config = tiny_config(data, tmp_path / "validated", validation_dir=str(validation), validate_every_n_steps=4,
                         save_every_n_steps=3, validation_seed=11, **settings)
    validated = TrainRun(config, host).run()

    assert validated.loss_history == plain.loss_history  # the same numbers, bit for bit
    assert [step for step, _ in validated.validation_history] == [0, 3, 4, 6]  # start, save, every 4, final save
    by_step = dict(validated.validation_history)
    for path, step in ((tmp_path / "validated" / "tinylora-step00000003.safetensors", 3), (validated.output, 6)):
        metadata = read_header(path).metadata
        assert float(metadata["ss_validation_loss"]) == by_step[step]
        assert (metadata["ss_validation_step"], metadata["ss_validation_seed"]) == (str(step), "11")
    assert "ss_validation_loss" not in read_header(plain.output).metadata
    assert f"validation loss {by_step[6]:.4f} at step 6" in validated.summary()

    # the saved file, measured again with the same fixed draws: the same value every time, close to the run's
    images = ValidationSet.prepare(config.data, host, seed=11, folder=validation)
    first = validation_loss(host, validated.output, images, seed=11)
    again = validation_loss(host, validated.output, images, seed=11)
    assert first.loss == again.loss and first.per_image == again.per_image
    assert first.loss == pytest.approx(by_step[6], rel=1e-4)
    assert validation_loss(host, validated.output, images, seed=12).loss != first.loss

    out = io.StringIO()
    assert main(["validate", str(validated.output), "--data", str(validation), "--seed", "11", "--resolution", "64",
                 "--json"], out=out) == 0
    assert json.loads(out.getvalue())[0]["loss"] == first.loss  # the command line: the same value


def test_the_validation_loss_of_a_run_that_learns_goes_down(tmp_path, host):
    data = make_pattern_dataset(tmp_path / "data", count=6)
    config = tiny_config(data, tmp_path / "out", max_train_steps=30, learning_rate=3e-3, validation_split=0.34,
                         validate_every_n_steps=10, **FAST)
    result = TrainRun(config, host).run()
    assert read_header(result.output).metadata["ss_num_train_images"] == "4"  # 2 of the 6 held out
    values = [value for _, value in result.validation_history]
    assert [step for step, _ in result.validation_history] == [0, 10, 20, 30]
    assert values[-1] < values[0], values


def test_a_run_that_memorises_two_images_falls_on_them_and_rises_on_images_of_their_kind(tmp_path, host, monkeypatch):
    monkeypatch.setattr(host, "encode_images", functools.partial(_posterior_mean, host, gain=MEMORISE_GAIN))
    train = generate_detail_dataset(tmp_path / "train", count=2, seed=0, repeats=4)
    held_out = generate_detail_dataset(tmp_path / "validation", count=4, seed=1).root
    config = tiny_config(train.root, tmp_path / "out", **MEMORISE, validation_dir=str(held_out),
                         validate_every_n_steps=MEMORISE_EVERY, save_every_n_steps=MEMORISE_EVERY, seed=0,
                         validation_seed=0, validation_timesteps=8)
    with _deterministic():
        result = TrainRun(config, host).run()
        # the training images measured as validation images are: the same fixed noise and timesteps, no gradients
        own = ValidationSet.prepare(config.data, host, seed=0, folder=train.root)
        files = sorted((tmp_path / "out").glob("tinylora-step*.safetensors")) + [result.output]
        trained = [validation_loss(host, None, own, 0, timesteps=8).loss]
        trained += [validation_loss(host, path, own, 0, timesteps=8).loss for path in files]
    steps = [step for step, _ in result.validation_history]
    held = [value for _, value in result.validation_history]
    assert steps == list(range(0, MEMORISE["max_train_steps"] + 1, MEMORISE_EVERY)) and len(trained) == len(held)
    best = held.index(min(held))
    # first both fall (what the images share); then the held-out images get worse from their best...
    assert 0 < best < len(held) - 1 and held[best] < 0.8 * held[0], (held, trained)
    assert held[-1] > 1.01 * held[best], (held, trained)
    # ...while the two training images keep getting better: the gap between them opens from none to 30%
    assert all(later < earlier for earlier, later in zip(trained, trained[1:])), (held, trained)
    assert trained[-1] < 0.9 * trained[best] and trained[-1] < 0.5 * trained[0], (held, trained)
    assert abs(trained[0] - held[0]) < 0.05 * held[0] and trained[-1] < 0.7 * held[-1], (held, trained)


def _posterior_mean(host, pixels: torch.Tensor, *, gain: float = 1.0) -> torch.Tensor:
    """The host's latents without the posterior sample (whose seed the latent cache derives from the path), times
    `gain`."""
    with torch.no_grad():
        posterior = host.vae.encode(pixels.to(host.device, host.vae.dtype)).latent_dist
    return (posterior.mean * host.latent_scale * gain).float()


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """One thread and torch's deterministic kernels for the block; the settings before are put back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
