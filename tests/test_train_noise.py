"""The diffusion maths of a training step (lib_lora.train.noise): properties and small exact cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.tiny.ldm_models import sd_alphas_cumprod
from lib_lora.train import noise

pytestmark = pytest.mark.hostcompat

SCHEDULE = sd_alphas_cumprod()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@given(st.integers(0, 998), st.integers(1, 1000), st.integers(1, 64))
@settings(max_examples=50, deadline=None)
def test_timesteps_stay_in_their_range(low, high, batch):
    if low >= high:
        with pytest.raises(ValueError, match="min_timestep < max_timestep"):
            noise.sample_timesteps(batch, min_timestep=low, max_timestep=high)
        return
    t = noise.sample_timesteps(batch, min_timestep=low, max_timestep=high, generator=gen())
    assert t.shape == (batch,) and t.dtype == torch.int64
    assert int(t.min()) >= low and int(t.max()) < high


def test_timesteps_are_deterministic_for_a_generator():
    assert torch.equal(noise.sample_timesteps(8, generator=gen(3)), noise.sample_timesteps(8, generator=gen(3)))


@given(st.integers(0, 999), st.floats(-3, 3), st.floats(-3, 3))
@settings(max_examples=60, deadline=None)
def test_noised_latent_is_the_forward_process_and_v_inverts_it(t, x, e):
    """x_t = √ā·x + √(1-ā)·ε and v = √ā·ε − √(1-ā)·x recover x = √ā·x_t − √(1-ā)·v exactly (up to rounding)."""
    latents = torch.full((1, 4, 2, 2), x, dtype=torch.float64)
    eps = torch.full((1, 4, 2, 2), e, dtype=torch.float64)
    steps = torch.tensor([t])
    a = float(SCHEDULE[t])
    noisy = noise.add_noise(latents, eps, steps, SCHEDULE)
    assert torch.allclose(noisy, torch.full_like(noisy, math.sqrt(a) * x + math.sqrt(1 - a) * e), atol=1e-5)
    v = noise.v_target(latents, eps, steps, SCHEDULE).double()
    recovered = math.sqrt(a) * noisy - math.sqrt(1 - a) * v
    assert torch.allclose(recovered, latents, atol=1e-5)


@given(st.integers(0, 999), st.floats(0.5, 20))
@settings(max_examples=60, deadline=None)
def test_min_snr_weights(t, gamma):
    steps = torch.tensor([t])
    ratio = float(SCHEDULE[t] / (1 - SCHEDULE[t]))
    eps_weight = float(noise.min_snr_weights(steps, SCHEDULE, gamma))
    v_weight = float(noise.min_snr_weights(steps, SCHEDULE, gamma, v_prediction=True))
    assert eps_weight == pytest.approx(min(ratio, gamma) / ratio, rel=1e-5)
    assert v_weight == pytest.approx(min(ratio, gamma) / (ratio + 1), rel=1e-5)
    assert 0 < v_weight < eps_weight <= 1 + 1e-6


def test_min_snr_weights_down_weight_only_the_easy_timesteps():
    steps = torch.arange(0, 1000, 50)
    weights = noise.min_snr_weights(steps, SCHEDULE, 5.0)
    snr = noise.snr(steps, SCHEDULE)
    assert torch.all(weights[snr <= 5] == 1) and torch.all(weights[snr > 5] < 1)
    with pytest.raises(ValueError, match="must be > 0"):
        noise.min_snr_weights(steps, SCHEDULE, 0.0)


@pytest.mark.parametrize(
    ("loss_type", "diff", "c", "expected"),
    [
        ("l2", 3.0, None, 9.0),
        ("l1", -3.0, None, 3.0),
        ("huber", 0.0, 0.1, 0.0),
        ("huber", 3.0, 0.1, 2 * 0.1 * (math.sqrt(9.01) - 0.1)),
        ("smooth_l1", 3.0, 0.1, 2 * (math.sqrt(9.01) - 0.1)),
    ],
)
def test_loss_types(loss_type, diff, c, expected):
    prediction = torch.full((2, 4, 2, 2), diff)
    loss = noise.per_sample_loss(prediction, torch.zeros_like(prediction), loss_type, huber_c=c)
    assert loss.shape == (2,) and torch.allclose(loss, torch.full((2,), expected), atol=1e-6)


@given(st.floats(-5, 5), st.floats(0.01, 1))
@settings(max_examples=60, deadline=None)
def test_huber_is_quadratic_near_zero_and_linear_far_out(d, c):
    prediction = torch.full((1, 1, 1, 1), d, dtype=torch.float64)
    huber = float(noise.per_sample_loss(prediction, torch.zeros_like(prediction), "huber", huber_c=c))
    assert huber <= d * d + 1e-6  # never above l2
    assert huber <= 2 * c * abs(d) + 1e-6  # never above the linear asymptote


def test_per_sample_huber_threshold_and_errors():
    steps = torch.tensor([0, 999])
    per_sample = noise.huber_c_for(steps, SCHEDULE, 0.1, "snr")
    assert per_sample[0] > per_sample[1] >= 0.1  # a larger threshold (more l2-like) at low noise
    assert torch.allclose(noise.huber_c_for(steps, SCHEDULE, 0.1, "constant"), torch.tensor([0.1, 0.1]))
    exponential = noise.huber_c_for(steps, SCHEDULE, 0.1, "exponential")
    assert exponential[0] == pytest.approx(1.0) and exponential[1] == pytest.approx(0.1, rel=0.01)
    prediction = torch.ones(2, 4, 2, 2)
    loss = noise.per_sample_loss(prediction, torch.zeros_like(prediction), "huber", huber_c=per_sample)
    assert loss[0] > loss[1]
    with pytest.raises(ValueError, match="unknown loss_type"):
        noise.per_sample_loss(prediction, prediction, "l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs huber_c"):
        noise.per_sample_loss(prediction, prediction, "huber")
    with pytest.raises(ValueError, match="unknown huber_schedule"):
        noise.huber_c_for(steps, SCHEDULE, 0.1, "cosine")  # type: ignore[arg-type]


def test_noise_offset_shifts_each_channel_by_a_constant():
    base = torch.zeros(3, 4, 8, 8)
    shifted = noise.offset_noise(base, 0.1, generator=gen())
    per_channel = shifted.flatten(2)
    assert torch.all(per_channel.std(dim=2) == 0)  # constant over the image
    assert per_channel.mean(dim=2).abs().max() > 0
    random = noise.offset_noise(base, 0.1, generator=gen(), random_strength=True)
    assert random.abs().max() <= shifted.abs().max() + 1e-6
    latents = torch.full((3, 4, 8, 8), 2.0)
    adaptive = noise.offset_noise(base, 0.0, generator=gen(), latents=latents, adaptive_scale=0.5)
    assert adaptive.abs().max() > 0  # the offset grew with |mean(latents)| although noise_offset is 0
    with pytest.raises(ValueError, match="needs the latents"):
        noise.offset_noise(base, 0.1, adaptive_scale=0.5)


@given(st.integers(1, 10), st.floats(0.1, 0.9), st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_pyramid_noise_keeps_shape_and_unit_std(iterations, discount, seed):
    base = torch.randn(2, 4, 32, 32, generator=gen(seed))
    pyramid = noise.pyramid_noise(base, iterations=iterations, discount=discount, generator=gen(seed + 1))
    assert pyramid.shape == base.shape and pyramid.dtype == base.dtype and torch.isfinite(pyramid).all()
    assert torch.allclose(pyramid.flatten(1).std(dim=1), torch.ones(2), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pyramid_noise_adds_low_frequency_power(seed):
    """Averaging 8×8 cells keeps the low frequencies: white noise keeps 1/64 of its variance, pyramid noise with
    a strong discount much more."""
    base = torch.randn(2, 4, 64, 64, generator=gen(seed))
    pyramid = noise.pyramid_noise(base, iterations=6, discount=0.8, generator=gen(seed + 1))
    pooled = torch.nn.functional.avg_pool2d
    assert pooled(pyramid, 8).var() > 3 * pooled(base, 8).var()


def test_pyramid_noise_off_is_identity():
    base = torch.randn(1, 4, 8, 8, generator=gen())
    assert noise.pyramid_noise(base, iterations=0, discount=0.3) is base
