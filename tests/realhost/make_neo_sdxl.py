"""A random-weight SDXL checkpoint that Forge Neo loads offline, for the full real-host set (`HOSTS_FULL=1`).

usage (with Neo's venv, PYTHONPATH=<this checkout>):  python tests/realhost/make_neo_sdxl.py NEO_TREE OUT.safetensors

Neo recognises SDXL by its UNet's shape (`huggingface_guess` model_list: model_channels 320, linear transformers
of depth [0, 0, 2, 2, 10, 10], context 2048, adm 2816), so a small-channel model is not recognised: this is the
full-size one, 3.47 B parameters, about 7 GB in fp16. LDM key layout:
- `model.diffusion_model.` — Neo's own `IntegratedUNet2DConditionModel` with SDXL base's configuration;
- `first_stage_model.` — Neo's `IntegratedAutoencoderKL` from the tree's SDXL `vae` config;
- `conditioner.embedders.0.transformer.` — transformers' CLIPTextModel from the tree's `text_encoder` config;
- `conditioner.embedders.1.model.` — an open_clip-layout ViT-bigG text tower (`lib_lora.tiny.openclip` classes at
  full width, sized from the tree's `text_encoder_2` config): Neo converts it to its CLIP-G as for a real file.
Every weight is random (seed 1234) and made directly in fp16, one part at a time, so memory peaks near 2× the
largest part (the UNet, 5 GB) rather than the whole model in fp32. Nothing is downloaded. The file is written
under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

SEED = 1234


def reinit_(module, generator) -> None:  # noqa: ANN001 - torch is imported late (Neo reads argv at import)
    """Random weights: N(0, 1/fan_in) matrices, small biases, unit norms (zero-initialised outputs too)."""
    import torch

    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim >= 2:
                values = torch.randn(parameter.shape, generator=generator) / math.sqrt(parameter[0].numel())
            elif name.endswith("bias"):
                values = torch.randn(parameter.shape, generator=generator) * 0.02
            else:
                values = torch.ones(parameter.shape)
            parameter.copy_(values.to(parameter.dtype))


def half_state(module, prefix: str) -> dict:  # noqa: ANN001
    return {prefix + key: (value.half() if value.is_floating_point() else value).contiguous()
            for key, value in module.state_dict().items()}


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit(__doc__)
    tree, out = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    hf = tree / "backend" / "huggingface" / "stabilityai" / "stable-diffusion-xl-base-1.0"
    sys.argv = [sys.argv[0], "--cpu"]  # Neo's backend reads its command line at import
    sys.dont_write_bytecode = True  # the tree is read-only
    sys.path[:0] = [str(tree), str(tree / "modules_forge" / "packages")]
    import torch
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_lora.tiny.openclip import TinyOpenCLIPTextModel

    generator = torch.Generator().manual_seed(SEED)
    state: dict = {}
    torch.set_default_dtype(torch.float16)
    unet = IntegratedUNet2DConditionModel(
        in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
        num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True, context_dim=2048,
        transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
        transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], num_classes="sequential", adm_in_channels=2816)
    reinit_(unet, generator)
    state.update(half_state(unet, "model.diffusion_model."))
    del unet
    vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(str(hf / "vae")))
    reinit_(vae, generator)
    state.update(half_state(vae, "first_stage_model."))
    del vae
    clip_l = CLIPTextModel(CLIPTextConfig.from_pretrained(str(hf / "text_encoder")))
    reinit_(clip_l, generator)
    state.update(half_state(clip_l, "conditioner.embedders.0.transformer."))
    del clip_l
    g = json.loads((hf / "text_encoder_2" / "config.json").read_text())
    clip_g = TinyOpenCLIPTextModel(vocab_size=g["vocab_size"], width=g["hidden_size"], heads=g["num_attention_heads"],
                                   layers=g["num_hidden_layers"], mlp_width=g["intermediate_size"],
                                   context_length=g["max_position_embeddings"], embed_dim=g["projection_dim"],
                                   activation=g["hidden_act"])
    reinit_(clip_g, generator)
    state.update(half_state(clip_g, "conditioner.embedders.1.model."))
    del clip_g
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(state, str(partial))
    os.replace(partial, out)
    print(out, len(state), "tensors", sum(value.numel() for value in state.values()), "params")


if __name__ == "__main__":
    main(sys.argv[1:])
