"""A tiny SD1 single-file checkpoint in the original (LDM) key layout, with its diffusers config folder.

The checkpoint holds the tiny LDM UNet, the tiny LDM VAE and the tiny CLIP text encoder under the prefixes of
an original SD1 `.safetensors` (`model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.transformer.`);
the config folder beside it is the tiny diffusers pipeline saved without weights, so diffusers'
`from_single_file(..., config=folder)` loads it offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip import build_tiny_text_encoder
from .ldm_models import build_tiny_ldm_unet, build_tiny_ldm_vae

SD1_CHECKPOINT_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}


def tiny_sd1_checkpoint_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of a tiny SD1 checkpoint in original layout (UNet seed, VAE seed+1, text encoder seed+2)."""
    parts = {
        "unet": build_tiny_ldm_unet("sd1", seed),
        "vae": build_tiny_ldm_vae(seed + 1),
        "text_encoder": build_tiny_text_encoder(seed + 2),
    }
    return {
        SD1_CHECKPOINT_PREFIXES[part] + key: tensor.detach().contiguous()
        for part, module in parts.items()
        for key, tensor in module.state_dict().items()
    }


def write_tiny_sd1_single_file(directory: Path, *, name: str = "tiny_sd1", seed: int = 0) -> Path:
    """Write `<name>.safetensors` and its config folder `<name>/` into `directory`; returns the checkpoint path."""
    from safetensors.torch import save_file

    from .diffusers_models import build_tiny_sd1_pipeline

    directory.mkdir(parents=True, exist_ok=True)
    config_dir = directory / name
    pipeline = build_tiny_sd1_pipeline(seed)
    pipeline.save_pretrained(config_dir)
    for weights in config_dir.rglob("*.safetensors"):
        weights.unlink()  # the folder is configuration only; the weights live in the single file
    path = directory / f"{name}.safetensors"
    save_file(tiny_sd1_checkpoint_state_dict(seed), str(path))
    return path
