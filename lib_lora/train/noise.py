"""The diffusion maths of a training step, as pure torch functions: noise, timesteps, targets, loss weights.

Names and meanings follow sd-scripts' options (noise_offset, multires_noise_*, min_snr_gamma, min/max_timestep,
loss_type, huber_*); the formulas are the published ones (offset noise, pyramid noise, Min-SNR weighting from
Hang et al. 2023, pseudo-Huber loss), written here because they are a few lines each and we need them to run on
any host's schedule (`Host.alphas_cumprod()`), not diffusers' scheduler objects.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["l2", "l1", "huber", "smooth_l1"]
HuberSchedule = Literal["constant", "exponential", "snr"]
LOSS_TYPES: tuple[str, ...] = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES: tuple[str, ...] = ("constant", "exponential", "snr")
NUM_TIMESTEPS = 1000


def sample_timesteps(
    batch: int, *, min_timestep: int = 0, max_timestep: int = NUM_TIMESTEPS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`batch` discrete timesteps drawn uniformly from [min_timestep, max_timestep), int64 on the CPU."""
    if not 0 <= min_timestep < max_timestep <= NUM_TIMESTEPS:
        raise ValueError(
            f"need 0 <= min_timestep < max_timestep <= {NUM_TIMESTEPS}, got {min_timestep}, {max_timestep}"
        )
    return torch.randint(min_timestep, max_timestep, (batch,), generator=generator, dtype=torch.int64)


def offset_noise(
    noise: torch.Tensor,
    offset: float,
    *,
    generator: torch.Generator | None = None,
    random_strength: bool = False,
    latents: torch.Tensor | None = None,
    adaptive_scale: float | None = None,
) -> torch.Tensor:
    """`noise` plus a per-sample, per-channel constant of std `offset` (lets the model shift overall brightness).

    `random_strength` draws the strength uniformly in [0, offset) per sample; `adaptive_scale` adds
    |mean of each latent channel| × adaptive_scale to the offset (sd-scripts' adaptive_noise_scale).
    """
    batch, channels = noise.shape[:2]
    strength = torch.full((batch, 1, 1, 1), float(offset))
    if adaptive_scale is not None:
        if latents is None:
            raise ValueError("adaptive_scale needs the latents")
        mean = latents.detach().float().mean(dim=(2, 3), keepdim=True).abs().cpu()
        strength = strength + mean * adaptive_scale
    if random_strength:
        strength = strength * torch.rand((batch, 1, 1, 1), generator=generator)
    shift = torch.randn((batch, channels, 1, 1), generator=generator) * strength
    return noise + shift.to(noise.device, noise.dtype)


def pyramid_noise(
    noise: torch.Tensor, *, iterations: int, discount: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Multi-resolution noise: `noise` plus up-sampled coarser noise, level i weighted discount**i, renormalised.

    Each level shrinks the grid by a random factor in [2, 4) per level (as the multires-noise recipe does) and stops
    at a 1-pixel grid; the result has unit standard deviation per sample.
    """
    if iterations < 1:
        return noise
    batch, channels, height, width = noise.shape
    total = noise.detach().float().cpu().clone()
    for level in range(1, iterations + 1):
        ratio = 2.0 + 2.0 * torch.rand((), generator=generator).item()
        h, w = max(1, int(height / ratio**level)), max(1, int(width / ratio**level))
        coarse = torch.randn((batch, channels, h, w), generator=generator)
        total += F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False) * discount**level
        if h == 1 or w == 1:
            break
    total = total / total.flatten(1).std(dim=1).view(batch, 1, 1, 1)
    return total.to(noise.device, noise.dtype)


def _schedule_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ā_t per sample, shaped [B, 1, 1, 1] on `like`'s device, float32."""
    values = alphas_cumprod.to(torch.float32)[timesteps.cpu()]
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.device)


def add_noise(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The forward process x_t = √ā_t·x_0 + √(1-ā_t)·ε, in the latents' dtype."""
    a = _schedule_at(alphas_cumprod, timesteps, latents)
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)


def v_target(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The v-prediction target v = √ā_t·ε − √(1-ā_t)·x_0 (float32)."""
    a = _schedule_at(alphas_cumprod, timesteps, latents)
    return a.sqrt() * noise.float() - (1 - a).sqrt() * latents.float()


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ā_t / (1 − ā_t) per timestep, float32 on the CPU."""
    a = alphas_cumprod.to(torch.float32)[timesteps.cpu()]
    return a / (1 - a)


def min_snr_weights(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, *, v_prediction: bool = False
) -> torch.Tensor:
    """Min-SNR-γ loss weights: min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR + 1) for v-prediction."""
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")
    ratio = snr(timesteps, alphas_cumprod)
    clipped = torch.clamp(ratio, max=gamma)
    return clipped / (ratio + 1) if v_prediction else clipped / ratio


def huber_c_for(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, huber_c: float, schedule: HuberSchedule = "snr"
) -> torch.Tensor:
    """The per-sample Huber threshold: constant, decaying exponentially with t, or shrinking with the noise level."""
    t = timesteps.cpu().to(torch.float32)
    if schedule == "constant":
        return torch.full_like(t, huber_c)
    if schedule == "exponential":
        rate = -torch.log(torch.tensor(huber_c)) / NUM_TIMESTEPS
        return torch.exp(-rate * t)
    if schedule == "snr":
        a = alphas_cumprod.to(torch.float32)[timesteps.cpu()]
        sigma = ((1 - a) / a).sqrt()
        return (1 - huber_c) / (1 + sigma) ** 2 + huber_c
    raise ValueError(f"unknown huber_schedule {schedule!r}; expected one of {list(HUBER_SCHEDULES)}")


def per_sample_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    loss_type: LossType = "l2",
    *,
    huber_c: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The loss of each sample, averaged over all but the batch dimension, float32 [B].

    l2 = squared error d², l1 = |d|, huber = pseudo-Huber 2c(√(d²+c²) − c) (≈ d² near 0, ≈ 2c|d| far out),
    smooth_l1 = 2(√(d²+c²) − c) (≈ d²/c near 0, ≈ 2|d| far out), as sd-scripts defines them.
    """
    diff = prediction.float() - target.float()
    if loss_type == "l2":
        loss = diff**2
    elif loss_type == "l1":
        loss = diff.abs()
    elif loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"loss_type {loss_type!r} needs huber_c")
        c = torch.as_tensor(huber_c, dtype=torch.float32).to(diff.device)
        c = c.view(-1, *([1] * (diff.dim() - 1))) if c.dim() == 1 else c
        root = torch.sqrt(diff**2 + c**2) - c
        loss = 2 * c * root if loss_type == "huber" else 2 * root
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {list(LOSS_TYPES)}")
    return loss.flatten(1).mean(dim=1)
