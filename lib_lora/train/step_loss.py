"""One training step's loss on any host: noise the latents, run the host's UNet, weigh the error.

The host decides how captions are encoded and how its UNet is called (`encode_prompts`, `apply_unet`); the
differences between SD1/SD2 and SDXL live there (SDXL size conditioning rides in `Conditioning.extra`), so
this module has no family-specific branch. Noise and timesteps come from the run's own CPU generator, so a run
is reproducible on any device and resumable from the generator's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import noise
from .run_config import RunConfig

if TYPE_CHECKING:
    from ..hosts.base import Conditioning, Host
    from .data import TrainBatch
    from .runtime import Precision


@dataclass(frozen=True)
class LossSettings:
    """The noise and loss options of a run (RunConfig's names), plus what the host predicts."""

    v_prediction: bool = False
    noise_offset: float | None = None
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    min_snr_gamma: float | None = None
    timestep_range: tuple[int, int] = (0, noise.NUM_TIMESTEPS)
    loss_type: noise.LossType = "l2"
    huber_c: float = 0.1
    huber_schedule: noise.HuberSchedule = "snr"

    @classmethod
    def from_run(cls, run: RunConfig, *, v_prediction: bool) -> LossSettings:
        return cls(
            v_prediction=v_prediction,
            noise_offset=run.noise_offset,
            noise_offset_random_strength=run.noise_offset_random_strength,
            adaptive_noise_scale=run.adaptive_noise_scale,
            multires_noise_iterations=run.multires_noise_iterations,
            multires_noise_discount=run.multires_noise_discount,
            min_snr_gamma=run.min_snr_gamma,
            timestep_range=run.timestep_range,
            loss_type=run.loss_type,  # type: ignore[arg-type]
            huber_c=run.huber_c,
            huber_schedule=run.huber_schedule,  # type: ignore[arg-type]
        )


def make_noise(latents: torch.Tensor, settings: LossSettings, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise like `latents` (drawn on the CPU from `generator`), with offset and pyramid noise applied."""
    eps = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if settings.noise_offset:
        eps = noise.offset_noise(eps, settings.noise_offset, generator=generator,
                                 random_strength=settings.noise_offset_random_strength,
                                 latents=latents, adaptive_scale=settings.adaptive_noise_scale)
    if settings.multires_noise_iterations:
        eps = noise.pyramid_noise(eps, iterations=settings.multires_noise_iterations,
                                  discount=settings.multires_noise_discount, generator=generator)
    return eps


def batch_loss(
    host: Host,
    batch: TrainBatch,
    *,
    settings: LossSettings,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    precision: Precision,
    encode_with_grad: bool,
) -> torch.Tensor:
    """The mean loss of `batch` (a 0-dim float32 tensor with grad to the network's parameters)."""
    device = host.device
    latents_cpu = batch.latents.float()
    eps_cpu = make_noise(latents_cpu, settings, generator)
    low, high = settings.timestep_range
    timesteps = noise.sample_timesteps(len(latents_cpu), min_timestep=low, max_timestep=high, generator=generator)
    noisy = noise.add_noise(latents_cpu, eps_cpu, timesteps, alphas_cumprod)
    if settings.v_prediction:
        target = noise.v_target(latents_cpu, eps_cpu, timesteps, alphas_cumprod)
    else:
        target = eps_cpu
    with precision.autocast(device):
        cond = conditioning_for(host, batch, with_grad=encode_with_grad)
        prediction = host.apply_unet(noisy.to(device, host.dtype), timesteps.to(device), cond.to(device))
    huber_c = None
    if settings.loss_type in ("huber", "smooth_l1"):
        huber_c = noise.huber_c_for(timesteps, alphas_cumprod, settings.huber_c, settings.huber_schedule)
    per_sample = noise.per_sample_loss(prediction.float(), target.to(device), settings.loss_type, huber_c=huber_c)
    weights = batch.loss_weights.to(device)
    if settings.min_snr_gamma:
        snr_weights = noise.min_snr_weights(timesteps, alphas_cumprod, settings.min_snr_gamma,
                                            v_prediction=settings.v_prediction)
        weights = weights * snr_weights.to(device)
    return (per_sample * weights).mean()


def conditioning_for(host: Host, batch: TrainBatch, *, with_grad: bool) -> Conditioning:
    """The batch's cached text-encoder outputs, or the captions encoded now by the host (with grad when the text
    encoder is trained); SDXL size conditioning from the batch's bucket (all images of a batch share it)."""
    if batch.conditioning is not None:
        return batch.conditioning
    size = batch.sizes[0] if batch.sizes else None
    return host.encode_prompts(batch.captions, with_grad=with_grad, size=size)
