"""The validation loss: the model's error on held-out images with noise and timesteps fixed by a seed.

Every validation image gets its own draws from a generator seeded by (seed, image key): `timesteps` timesteps, one
in each equal slice of the noise schedule (stratified, so every value covers the whole schedule), and one noise
tensor per timestep. The draws depend on nothing else — not on the run, the batch, the order or the other images
— so values are comparable between the measurements of a run, between runs and between saved files. The loss is
the plain mean squared error of the prediction (noise, or v for v-prediction models) over the images and their
timesteps, whatever loss the run trains with, so runs with other loss settings stay comparable too.

A measurement runs under `torch.no_grad()`, with every module in eval behaviour (dropout off; each module's own
mode restored after) and the global random states of torch, NumPy and Python saved and restored, so a run with
validation trains exactly as one without. `validation_loss` measures a saved LoRA file the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import noise
from .data import TrainBatch, TrainData
from .data_config import DataConfig
from .data_scan import ImageItem
from .latent_cache import derived_seed
from .runtime import preserved_global_rng
from .step_loss import conditioning_for
from .validation_split import once_each, split_items

if TYPE_CHECKING:
    from ..hosts.base import Host
    from ..jobs import JobControl

DEFAULT_TIMESTEPS = 4

# the options that make a use of an image differ from the next: off for validation, where every use is the same
_FIXED_DATA = {"reg_data_dir": None, "shuffle_caption": False, "caption_dropout_rate": 0.0,
               "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0.0, "flip_aug": False,
               "color_aug": False, "random_crop": False, "cache_latents": True, "cache_latents_to_disk": False}


@dataclass(frozen=True)
class ValidationResult:
    """One measurement: the mean loss and each image's own (image key → mean over its timesteps)."""

    loss: float
    per_image: dict[str, float]


def fixed_draws(key: str, seed: int, count: int, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps [count] int64, noise [count, *shape] float32) of image `key`: a function of (key, seed) only."""
    generator = torch.Generator().manual_seed(derived_seed(seed, "validation", key))
    offsets = torch.rand(count, generator=generator, dtype=torch.float64)
    timesteps = ((torch.arange(count, dtype=torch.float64) + offsets) * noise.NUM_TIMESTEPS / count).long()
    eps = torch.randn((count, *shape), generator=generator, dtype=torch.float32)
    return timesteps.clamp(0, noise.NUM_TIMESTEPS - 1), eps


@contextmanager
def evaluating(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Every module (and submodule) in eval behaviour for the block; each one's own train/eval mode restored after."""
    modes: dict[torch.nn.Module, bool] = {}
    for module in modules:
        for sub in module.modules():
            modes.setdefault(sub, sub.training)
    try:
        for sub in modes:
            sub.training = False
        yield
    finally:
        for sub, training in modes.items():
            sub.training = training


def measure(host: Host, batches: Iterable[TrainBatch], *, seed: int, timesteps: int = DEFAULT_TIMESTEPS,
            modules: Sequence[torch.nn.Module] = (),
            autocast: Callable[[], AbstractContextManager[object]] | None = None) -> ValidationResult:
    """The validation loss of `batches` on `host` as it is now (a network attached counts; pass it in `modules` so
    it is put in eval behaviour too). ValueError when there is no image."""
    device, dtype = host.device, host.dtype
    alphas_cumprod = host.alphas_cumprod()
    v_prediction = host.prediction_type == "v_prediction"
    per_image: dict[str, float] = {}
    with preserved_global_rng(), torch.no_grad(), evaluating([*modules, host.unet, *host.text_encoders]):
        for batch in batches:
            latents = batch.latents.float()
            draws = [fixed_draws(key, seed, timesteps, latents.shape[1:]) for key in batch.keys]
            all_t = torch.stack([t for t, _ in draws])  # [B, count]
            all_eps = torch.stack([eps for _, eps in draws])  # [B, count, C, H, W]
            sums = torch.zeros(len(batch), dtype=torch.float64)
            with autocast() if autocast is not None else nullcontext():
                cond = conditioning_for(host, batch, with_grad=False).to(device)
            for k in range(timesteps):
                t, eps = all_t[:, k], all_eps[:, k]
                noisy = noise.add_noise(latents, eps, t, alphas_cumprod)
                target = noise.v_target(latents, eps, t, alphas_cumprod) if v_prediction else eps
                with autocast() if autocast is not None else nullcontext():
                    prediction = host.apply_unet(noisy.to(device, dtype), t.to(device), cond)
                error = (prediction.float().cpu() - target) ** 2
                sums += error.flatten(1).mean(dim=1).double()
            for key, total in zip(batch.keys, sums.tolist()):
                per_image[key] = total / timesteps
    if not per_image:
        raise ValueError("no validation image to measure")
    return ValidationResult(sum(per_image.values()) / len(per_image), per_image)


class ValidationSet:
    """Validation images prepared once (latents cached in memory; captions fixed): `batches()` yields them."""

    def __init__(self, data: TrainData) -> None:
        self.data = data
        self.keys: list[str] = sorted(key for batch in data.batches(0) for key in batch.keys)
        """The images' keys (paths relative to their folder)."""

    @classmethod
    def prepare(cls, data_config: DataConfig, host: Host, *, seed: int, folder: str | Path | None = None,
                select: Callable[[list[ImageItem]], list[ImageItem]] | None = None,
                cache_text_encoder_outputs: bool = False, control: JobControl | None = None) -> ValidationSet:
        """The images of `folder` (default: train_data_dir) that `select` keeps (default: all, once each), under
        `data_config` with every per-use variation off (shuffle, dropout, flips, crops); latents cached from `seed`.
        """
        values = {item.name: getattr(data_config, item.name) for item in fields(data_config)}
        values.update(_FIXED_DATA)
        if folder is not None:
            values["train_data_dir"] = str(folder)
        data = TrainData(DataConfig(**values), host, seed=seed, cache_text_encoder_outputs=cache_text_encoder_outputs,
                         select=select or once_each)
        with preserved_global_rng():
            data.prepare(control)
        return cls(data)

    def __len__(self) -> int:
        return len(self.keys)

    def batches(self) -> Iterator[TrainBatch]:
        return self.data.batches(0)


def held_out_selection(fraction: float, seed: int, *, training: bool) -> Callable[[list[ImageItem]], list[ImageItem]]:
    """The `select` of TrainData that keeps the training part (or, `training=False`, the held-out part) of a split."""
    def select(items: list[ImageItem]) -> list[ImageItem]:
        train, held = split_items(items, fraction, seed)
        return train if training else held

    return select


def validation_loss(host: Host, network_file: str | Path | None, items: ValidationSet, seed: int, *,
                    timesteps: int = DEFAULT_TIMESTEPS, multiplier: float = 1.0) -> ValidationResult:
    """The validation loss of the LoRA in `network_file` at `multiplier` (None: the model alone) on `items`, with
    the fixed draws of `seed`: the same file, images and seed always give the same value."""
    if network_file is None:
        return measure(host, items.batches(), seed=seed, timesteps=timesteps)
    from ..networks.attach import hooked
    from ..networks.keys import build_target_index
    from ..networks.loaded import as_applied, load_network

    applied = as_applied(load_network(network_file), te_multiplier=multiplier, unet_multiplier=multiplier)
    with hooked(build_target_index(host), [applied]):
        return measure(host, items.batches(), seed=seed, timesteps=timesteps)


__all__ = ["ValidationResult", "ValidationSet", "evaluating", "fixed_draws", "held_out_selection", "measure",
           "validation_loss"]
