"""The tiny LDM-layout UNets have exactly the block structure of the tiny diffusers UNets (hence the real ones).

Checked with diffusers' own converters: LDM weights converted by diffusers load into our diffusers config
without a missing or unexpected key, and both layouts then compute the same output.
"""

from __future__ import annotations

import pytest
import torch

from lib_lora.hosts.base import Conditioning
from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.tiny.checkpoint import write_tiny_sd1_single_file
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet

diffusers = pytest.importorskip("diffusers")


def test_single_file_sd1_checkpoint_loads_and_matches_the_ldm_unet(tmp_path):
    path = write_tiny_sd1_single_file(tmp_path)
    host = load_diffusers_host(str(path))
    assert host.arch.name == "sd1" and host.info().model_name == "tiny_sd1"
    ldm = build_tiny_ldm_unet("sd1", 0)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 32)
    with torch.no_grad():
        expected = ldm(x, t, context=context)
        actual = host.apply_unet(x, t, Conditioning(context))
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()


def test_sdxl_ldm_unet_converts_onto_the_diffusers_config():
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from lib_lora.tiny.diffusers_models import TINY_SDXL_UNET

    ldm = build_tiny_ldm_unet("sdxl", 0)
    target = UNet2DConditionModel(**TINY_SDXL_UNET).eval()
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in ldm.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(target.config))
    missing, unexpected = target.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])

    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 64)
    pooled, time_ids = torch.randn(2, 32), torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    with torch.no_grad():
        size_embedding = target.add_time_proj(time_ids.flatten()).reshape(2, -1)
        expected = ldm(x, t, context=context, y=torch.cat([pooled, size_embedding], dim=1))
        actual = target(x, t, encoder_hidden_states=context,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()
