"""Our LoRA files and our merge against independent implementations, on tiny models, offline.

- diffusers' own kohya loader (`load_lora_weights`, via peft) renders the same image as our merge;
- the same file merged into an LDM-layout UNet and into the same weights in diffusers layout (converted by
  diffusers' own LDM→diffusers conversion) gives the same UNet output, whichever UNet spelling the file uses.
(LyCORIS maths is checked against lycoris-lora in test_network_formats.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import save_lora_file
from lib_lora.networks.keys import build_target_index, build_target_index_for
from lib_lora.networks.loaded import as_applied, load_network
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.tiny.clip import build_tiny_text_encoder
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet

pytest.importorskip("diffusers")
pytest.importorskip("peft")

MULTIPLIER = 0.8


def render(pipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline("a photo of girl, blue hair", num_inference_steps=3, height=64, width=64,
                    generator=generator, output_type="np").images[0]


@pytest.mark.parametrize("spec", ["tiny", "tiny-sdxl"])
@pytest.mark.parametrize("kind", ["lora", "locon"])
def test_diffusers_load_lora_weights_renders_what_our_merge_renders(tmp_path, spec, kind):
    host = load_diffusers_host(spec)
    index = build_target_index(host)
    path = tmp_path / f"{spec}_{kind}.safetensors"
    save_lora_file(path, random_lora_state_dict(index, kind=kind, seed=1, rank=4, alpha=2.0), {})

    base = render(host.pipeline)
    merger = WeightMerger(index)
    with merger.applied([as_applied(load_network(path), unet_multiplier=MULTIPLIER, te_multiplier=MULTIPLIER)]):
        ours = render(host.pipeline)
    assert np.array_equal(render(host.pipeline), base)

    reference = load_diffusers_host(spec).pipeline
    reference.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="crosscheck")
    reference.set_adapters(["crosscheck"], [MULTIPLIER])
    theirs = render(reference)

    assert np.abs(ours - base).max() > 0.05, "the LoRA must visibly change the image"
    assert np.allclose(ours, theirs, atol=1e-4), np.abs(ours - theirs).max()


def ldm_and_diffusers_unets(arch: str):
    """The tiny LDM UNet and the same weights converted by diffusers into the tiny diffusers UNet config."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from lib_lora.tiny.diffusers_models import TINY_SD1_UNET, TINY_SDXL_UNET

    ldm = build_tiny_ldm_unet(arch, seed=0)
    diffusers_unet = UNet2DConditionModel(**(TINY_SDXL_UNET if arch == "sdxl" else TINY_SD1_UNET)).eval()
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in ldm.state_dict().items()}
    diffusers_unet.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, dict(diffusers_unet.config)), strict=True)
    return ldm, diffusers_unet


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("spelling", ["canonical", "diffusers", "ldm"])
@pytest.mark.parametrize("kind", ["lora", "locon", "loha", "dora"])
def test_same_file_on_ldm_and_diffusers_layouts_gives_the_same_output(tmp_path, arch, spelling, kind):
    ldm, diffusers_unet = ldm_and_diffusers_unets(arch)
    encoders = [build_tiny_text_encoder(1)] + ([build_tiny_text_encoder(2, with_projection=True)]
                                               if arch == "sdxl" else [])
    ldm_index = build_target_index_for(ldm, "ldm", encoders, arch)
    diffusers_index = build_target_index_for(diffusers_unet, "diffusers", encoders, arch)
    path = tmp_path / "lora.safetensors"
    state_dict = random_lora_state_dict(ldm_index, kind=kind, seed=2, roots=("unet",), spelling=spelling)
    save_lora_file(path, state_dict, {})
    applied = [as_applied(load_network(path), unet_multiplier=0.9)]

    context_width, batch = (64, 2) if arch == "sdxl" else (32, 2)
    x, t = torch.randn(batch, 4, 8, 8), torch.tensor([20, 800])
    context = torch.randn(batch, 77, context_width)
    pooled, time_ids = torch.randn(batch, 32), torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)
    with torch.no_grad():
        y = torch.cat([pooled, diffusers_unet.add_time_proj(time_ids.flatten()).reshape(batch, -1)], dim=1) \
            if arch == "sdxl" else None
        base = ldm(x, t, context=context, **({"y": y} if y is not None else {}))
        ldm_merger, diffusers_merger = WeightMerger(ldm_index), WeightMerger(diffusers_index)
        ldm_report = ldm_merger.apply(applied)
        diffusers_report = diffusers_merger.apply(applied)
        assert not ldm_report.unmatched and not diffusers_report.unmatched
        assert ldm_report.rebuilt == diffusers_report.rebuilt == len(applied[0].modules)
        ldm_out = ldm(x, t, context=context, **({"y": y} if y is not None else {}))
        added = {"text_embeds": pooled, "time_ids": time_ids} if arch == "sdxl" else None
        diffusers_out = diffusers_unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        ldm_merger.restore()
        diffusers_merger.restore()
    assert (ldm_out - base).abs().max() > 1e-3
    assert torch.allclose(ldm_out, diffusers_out, atol=1e-4), (ldm_out - diffusers_out).abs().max()
