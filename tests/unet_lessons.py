"""A quick full-weight lesson for a tiny model's UNet, for tests that need a model which already knows something.

The random tiny UNet draws nothing in particular, and a LoRA on its attention layers alone cannot teach it where
a region of the picture is (that lives in the convolutions). A few dozen steps on every weight can: for example
that one word paints the top-left quarter red. The lesson changes the weights in place and keeps no backup, so
it is for a model the caller built for itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lib_lora.train.noise import add_noise

if TYPE_CHECKING:
    from lib_lora.hosts.base import Host


def teach_unet(host: Host, latents: torch.Tensor, captions: Sequence[str], *, steps: int = 120,
               learning_rate: float = 2e-3, seed: int = 0) -> float:
    """Train every weight of `host.unet` in place on the noise-prediction loss over all examples each step
    (`latents` [N, C, h, w], one caption each; timesteps over the whole schedule); returns the last step's loss.
    Each parameter's requires_grad and .grad are put back afterwards; the weights stay taught."""
    if len(latents) != len(captions) or steps < 1:
        raise ValueError(f"teach_unet: {len(latents)} latents for {len(captions)} captions, {steps} steps")
    generator = torch.Generator().manual_seed(seed)
    cond = host.encode_prompts(list(captions)).detach()
    schedule = host.alphas_cumprod()
    params = list(host.unet.parameters())
    flags, grads = [param.requires_grad for param in params], [param.grad for param in params]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    clean = latents.float().cpu()
    try:
        for param in params:
            param.requires_grad_(True)
        for _ in range(steps):
            timesteps = torch.randint(0, len(schedule), (len(clean),), generator=generator)
            eps = torch.randn(clean.shape, generator=generator)
            noisy = add_noise(clean, eps, timesteps, schedule).to(host.device, host.dtype)
            prediction = host.apply_unet(noisy, timesteps.to(host.device), cond)
            loss = torch.nn.functional.mse_loss(prediction.float(), eps.to(host.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for param, flag, grad in zip(params, flags, grads):
            param.requires_grad_(flag)
            param.grad = grad
    return float(loss.detach())
