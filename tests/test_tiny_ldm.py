"""The tiny LDM-layout models have the real SD1/SDXL module names, run, and are seeded."""

from __future__ import annotations

import pytest
import torch

from lib_lora.errors import UnsupportedArchError
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet, build_tiny_ldm_vae, sd_alphas_cumprod

pytestmark = pytest.mark.hostcompat

# Module names (and their class) that real checkpoints and kohya keys use, per family.
EXPECTED = {
    "sd1": {
        "input_blocks.0.0": "Conv2d",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q": "Linear",
        "input_blocks.3.0.op": "Conv2d",
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q": "Linear",
        "input_blocks.4.1.proj_in": "Conv2d",
        "input_blocks.8.1.transformer_blocks.0.attn2.to_k": "Linear",
        "input_blocks.9.0.op": "Conv2d",
        "input_blocks.11.0.out_layers.3": "Conv2d",
        "middle_block.1": "SpatialTransformer",
        "middle_block.2.emb_layers.1": "Linear",
        "output_blocks.2.1": "Upsample",
        "output_blocks.3.1.transformer_blocks.0.ff.net.0.proj": "Linear",
        "output_blocks.5.2": "Upsample",
        "output_blocks.8.2": "Upsample",
        "output_blocks.11.1.proj_out": "Conv2d",
        "time_embed.2": "Linear",
        "out.2": "Conv2d",
    },
    "sdxl": {
        "input_blocks.0.0": "Conv2d",
        "input_blocks.1.0.in_layers.2": "Conv2d",
        "input_blocks.3.0.op": "Conv2d",
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q": "Linear",
        "input_blocks.4.1.proj_in": "Linear",
        "input_blocks.6.0.op": "Conv2d",
        "input_blocks.7.1.transformer_blocks.1.attn2.to_v": "Linear",
        "input_blocks.8.1.transformer_blocks.1.ff.net.2": "Linear",
        "middle_block.1.transformer_blocks.1.attn1.to_out.0": "Linear",
        "output_blocks.0.1.transformer_blocks.1": "BasicTransformerBlock",
        "output_blocks.2.2": "Upsample",
        "output_blocks.3.1.transformer_blocks.0": "BasicTransformerBlock",
        "output_blocks.5.2": "Upsample",
        "output_blocks.8.0.skip_connection": "Conv2d",
        "label_emb.0.0": "Linear",
        "label_emb.0.2": "Linear",
    },
}
ABSENT = {
    "sd1": [
        "input_blocks.1.1.transformer_blocks.1",  # depth 1 everywhere
        "input_blocks.10.1",  # level 3 has no attention
        "output_blocks.2.2",  # the first Upsample sits at .1 (no attention there)
        "output_blocks.0.1",
        "label_emb",
        "input_blocks.12",
    ],
    "sdxl": [
        "input_blocks.1.1",  # level 0: ResBlocks only
        "input_blocks.4.1.transformer_blocks.1",  # level 1: depth 1 (real: 2)
        "output_blocks.3.1.transformer_blocks.1",
        "output_blocks.6.1",
        "input_blocks.9",
        "output_blocks.9",
        "middle_block.1.transformer_blocks.2",  # level 2: depth 2 (real: 10)
    ],
}
CONTEXT = {"sd1": 32, "sd2": 32, "sdxl": 64}


def _run(unet: torch.nn.Module, arch: str, batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=generator)
    context = torch.randn(batch, 77, CONTEXT[arch], generator=generator)
    t = torch.tensor([10, 900][:batch])
    if arch == "sdxl":
        return unet(x, t, context=context, y=torch.randn(batch, 80, generator=generator))
    return unet(x, t, context=context)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_real_ldm_module_names(arch: str) -> None:
    modules = dict(build_tiny_ldm_unet(arch).named_modules())
    found = {name: type(modules[name]).__name__ for name in EXPECTED[arch] if name in modules}
    assert found == EXPECTED[arch]
    assert [name for name in ABSENT[arch] if name in modules] == []
    top = {name.split(".")[0] + "." + name.split(".")[1] for name in modules if name.count(".") >= 1}
    n_blocks = 12 if arch == "sd1" else 9
    assert {f"input_blocks.{i}" for i in range(n_blocks)} <= top
    assert {f"output_blocks.{i}" for i in range(n_blocks)} <= top


def test_sdxl_per_level_depth_and_heads() -> None:
    modules = dict(build_tiny_ldm_unet("sdxl").named_modules())
    depth = {
        name: len(module.transformer_blocks)
        for name, module in modules.items()
        if type(module).__name__ == "SpatialTransformer"
    }
    assert depth == {
        "input_blocks.4.1": 1,
        "input_blocks.5.1": 1,
        "input_blocks.7.1": 2,
        "input_blocks.8.1": 2,
        "middle_block.1": 2,
        "output_blocks.0.1": 2,
        "output_blocks.1.1": 2,
        "output_blocks.2.1": 2,
        "output_blocks.3.1": 1,
        "output_blocks.4.1": 1,
        "output_blocks.5.1": 1,
    }
    assert modules["input_blocks.7.1.transformer_blocks.1.attn1"].heads == 8  # 128 channels, 16-wide heads
    assert modules["input_blocks.7.1.transformer_blocks.1.attn2"].to_k.in_features == 64


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_unet_forward_shapes_and_seed(arch: str) -> None:
    unet = build_tiny_ldm_unet(arch, seed=0)
    with torch.no_grad():
        out = _run(unet, arch)
        again = _run(build_tiny_ldm_unet(arch, seed=0), arch)
        other = _run(build_tiny_ldm_unet(arch, seed=1), arch)
    assert out.shape == (2, 4, 16, 16)
    assert torch.isfinite(out).all() and out.abs().mean() > 0  # zero-initialised layers were re-initialised
    assert torch.equal(out, again)
    assert not torch.allclose(out, other)
    assert not unet.training


def test_sdxl_label_emb_is_used() -> None:
    unet = build_tiny_ldm_unet("sdxl")
    x, context, t = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 64), torch.tensor([500])
    with torch.no_grad():
        a = unet(x, t, context=context, y=torch.zeros(1, 80))
        b = unet(x, t, context=context, y=torch.ones(1, 80))
    assert not torch.allclose(a, b)


def test_sd2_uses_linear_projections() -> None:
    modules = dict(build_tiny_ldm_unet("sd2").named_modules())
    assert type(modules["input_blocks.4.1.proj_in"]).__name__ == "Linear"
    assert modules["input_blocks.7.1.transformer_blocks.0.attn1"].heads == 8  # 128 channels / 16 per head


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(UnsupportedArchError, match="sd3"):
        build_tiny_ldm_unet("sd3")


def test_vae_encode_decode_shapes() -> None:
    vae = build_tiny_ldm_vae(seed=0)
    assert {"encoder", "decoder", "quant_conv", "post_quant_conv"} <= dict(vae.named_children()).keys()
    with torch.no_grad():
        posterior = vae.encode(torch.rand(2, 3, 64, 48) * 2 - 1)
        assert type(posterior).__name__ == "DiagonalGaussianDistribution"
        z = posterior.mode()
        assert z.shape == (2, 4, 8, 6)
        assert vae.decode(z).shape == (2, 3, 64, 48)
    assert torch.equal(build_tiny_ldm_vae(seed=0).quant_conv.weight, vae.quant_conv.weight)


def test_construction_prints_nothing_and_leaves_no_omegaconf_stub(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    had_omegaconf = "omegaconf" in sys.modules
    build_tiny_ldm_vae()
    build_tiny_ldm_unet("sd1")
    assert capsys.readouterr().out == ""
    assert ("omegaconf" in sys.modules) == had_omegaconf


def test_sd_alphas_cumprod() -> None:
    schedule = sd_alphas_cumprod()
    assert schedule.dtype == torch.float32 and schedule.shape == (1000,)
    assert schedule[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert schedule[-1].item() == pytest.approx(0.0046601, rel=1e-4)  # SD: sqrt(ā_999) ≈ 0.068265
    assert (schedule[1:] < schedule[:-1]).all()
