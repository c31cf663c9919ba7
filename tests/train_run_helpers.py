"""Helpers for the training-run tests: a dataset whose trigger word carries a distinctive pattern, configs, metrics.

The pattern is a blue/yellow checkerboard of 16-pixel cells, coarse enough to survive the VAE's 8× downscale
(each cell is 2×2 latent pixels). Every training image is that pattern with a little per-image colour jitter,
captioned with the trigger word. A random tiny VAE cannot draw the pattern, so closeness is measured on latents:
`latent_distance` compares generated latents with the pattern's own latent.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lib_lora.train.config import TrainConfig

TRIGGER = "zqpattern"
CELL = 16
SIZE = 64
COLOURS = ((30, 60, 230), (240, 210, 40))


def pattern_image(size: int = SIZE, *, jitter: int = 0, rng: random.Random | None = None) -> Image.Image:
    """The checkerboard; `jitter` shifts each colour channel by up to ±jitter (same image per rng state)."""
    rng = rng or random.Random(0)
    colours = [tuple(max(0, min(255, c + rng.randint(-jitter, jitter))) for c in colour) for colour in COLOURS]
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    for y in range(size):
        for x in range(size):
            pixels[y, x] = colours[((x // CELL) + (y // CELL)) % 2]
    return Image.fromarray(pixels)


def make_pattern_dataset(root: Path, *, count: int = 4, repeats: int = 1, trigger: str = TRIGGER,
                         caption_extension: str = ".txt") -> Path:
    """`root/<repeats>_<trigger>/` with `count` jittered pattern images captioned with the trigger; returns root."""
    folder = Path(root) / f"{repeats}_{trigger}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    for index in range(count):
        pattern_image(jitter=12, rng=rng).save(folder / f"pattern_{index:02d}.png")
        (folder / f"pattern_{index:02d}{caption_extension}").write_text(f"{trigger}\n", encoding="utf-8")
    return Path(root)


def tiny_config(data_dir: Path, output_dir: Path, **overrides: Any) -> TrainConfig:
    """The smallest config that trains: tiny model, 64 px, rank 4, AdamW at 1e-3, fixed seed."""
    values: dict[str, Any] = {
        "pretrained_model_name_or_path": "tiny",
        "train_data_dir": str(data_dir),
        "output_dir": str(output_dir),
        "output_name": "tinylora",
        "caption_extension": ".txt",
        "resolution": "64",
        "train_batch_size": 2,
        "network_dim": 4,
        "network_alpha": 4,
        "learning_rate": 1e-3,
        "max_train_steps": 4,
        "seed": 1,
        "save_model_as": "safetensors",
    }
    values.update(overrides)
    return TrainConfig.from_dict(values)


def pattern_latent(host) -> torch.Tensor:
    """The pattern's latent (posterior mean, unscaled) under the host's VAE, [1, 4, 8, 8]."""
    pixels = torch.from_numpy(np.asarray(pattern_image(), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        return host.vae.encode(pixels).latent_dist.mean


def generated_latents(host, prompt: str, seed: int, *, steps: int = 10) -> torch.Tensor:
    """The latents the host's pipeline generates for `prompt` (unscaled, before the VAE decoder), CFG off."""
    generator = torch.Generator().manual_seed(seed)
    latents = host.pipeline(prompt, num_inference_steps=steps, guidance_scale=1.0, height=SIZE, width=SIZE,
                            generator=generator, output_type="latent").images
    return latents / host.latent_scale


def latent_distance(latents: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared difference between generated and target latents."""
    return float(((latents - target) ** 2).mean())


ENDINGS = ("finished", "stopped", "crashed")


def run_with_ending(config: TrainConfig, host: Any, ending: str) -> Any:
    """Run `config` on `host` and end it as `ending` says: finished, stopped at step 2, or crashed at step 2 (the
    injected error is checked). Returns the run's result, or None when it crashed."""
    import pytest

    from lib_lora.train.loop import TrainRun

    runs: list[TrainRun] = []

    def on_step(progress: Any) -> None:
        if progress.step == 2 and ending == "stopped":
            runs[0].request_stop()
        if progress.step == 2 and ending == "crashed":
            raise RuntimeError("injected failure at step 2")

    runs.append(TrainRun(config, host, on_step=on_step))
    if ending != "crashed":
        return runs[0].run()
    with pytest.raises(RuntimeError, match="injected failure"):
        runs[0].run()
    return None
