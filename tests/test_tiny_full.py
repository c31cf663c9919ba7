"""Full-size SD1.5 / SDXL builders: real parameter counts on the meta device; real builds only on request."""

from __future__ import annotations

import os

import pytest
import torch

from lib_lora.errors import ModelLoadError
from lib_lora.tiny.full_size import build_fast, build_full_text_encoders, build_full_unet, parameter_count

pytest.importorskip("diffusers")

FULL = pytest.mark.skipif(
    os.environ.get("LORA_STUDIO_FULL_MODELS") != "1",
    reason="set LORA_STUDIO_FULL_MODELS=1 (~8 GB RAM, ~45 s on 2 cores)",
)


@pytest.mark.parametrize(
    ("arch", "layout", "expected"),
    [("sd1", "diffusers", 859_520_964), ("sd1", "ldm", 859_520_964), ("sdxl", "diffusers", 2_567_463_684)],
)
def test_unet_parameter_counts_on_meta(arch: str, layout: str, expected: int) -> None:
    unet = build_full_unet(arch, layout=layout, device="meta")
    assert parameter_count(unet) == expected
    assert all(p.is_meta and p.dtype == torch.float16 for p in unet.parameters())


def test_text_encoder_parameter_counts_on_meta() -> None:
    (clip_l,) = build_full_text_encoders("sd1", device="meta")
    assert parameter_count(clip_l) == 123_060_480
    clip_l2, big_g = build_full_text_encoders("sdxl", device="meta", dtype=torch.float32)
    assert parameter_count(clip_l2) == 123_060_480 and parameter_count(big_g) == 694_659_840
    assert big_g.config.hidden_size == 1280 and big_g.config.num_hidden_layers == 32
    assert next(big_g.parameters()).dtype == torch.float32


def test_layout_keys_match_their_families() -> None:
    diffusers_keys = build_full_unet("sd1", device="meta").state_dict().keys()
    ldm_keys = build_full_unet("sd1", layout="ldm", device="meta").state_dict().keys()
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight" in diffusers_keys
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in ldm_keys
    sdxl_keys = build_full_unet("sdxl", device="meta").state_dict().keys()
    assert "add_embedding.linear_1.weight" in sdxl_keys
    assert "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight" in sdxl_keys


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="arch"):
        build_full_unet("sd3", device="meta")
    with pytest.raises(ValueError, match="sd1 only"):
        build_full_unet("sdxl", layout="ldm", device="meta")
    with pytest.raises(ValueError, match="layout"):
        build_full_unet("sd1", layout="comfy", device="meta")


def test_fast_build_fills_seeded_values_and_rebuilds_position_ids() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    a, b, c = (
        build_fast(lambda: CLIPTextModel(config), dtype=torch.float32, device="cpu", seed=s)
        for s in (3, 3, 4)
    )
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    assert not torch.equal(
        a.text_model.embeddings.token_embedding.weight, c.text_model.embeddings.token_embedding.weight
    )
    emb = a.text_model.embeddings
    assert torch.equal(emb.position_ids[0], torch.arange(77))
    assert torch.equal(a.text_model.final_layer_norm.weight, torch.ones(32))
    assert torch.equal(a.text_model.final_layer_norm.bias, torch.zeros(32))
    fc1 = a.text_model.encoder.layers[0].mlp.fc1.weight
    assert fc1.std().item() == pytest.approx(32**-0.5, rel=0.15)
    with torch.no_grad():
        out = a(torch.tensor([[0, 20, 2] + [1] * 74])).last_hidden_state
    assert out.shape == (1, 77, 32) and torch.isfinite(out).all()


def test_unknown_buffers_are_refused() -> None:
    class WithBuffer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.register_buffer("scale", torch.ones(2))

    with pytest.raises(ModelLoadError, match="scale"):
        build_fast(WithBuffer, dtype=torch.float32, device="cpu", seed=0)


@FULL
@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_real_full_build(arch: str) -> None:
    unet = build_full_unet(arch)
    params = list(unet.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float16 for p in params)
    assert all(torch.isfinite(p).all() for p in params[:20])
    assert unet.conv_in.weight.float().std().item() == pytest.approx(1 / 6, rel=0.1)
    del unet, params
    encoders = build_full_text_encoders(arch, dtype=torch.float32)
    assert len(encoders) == (1 if arch == "sd1" else 2)
    ids = torch.tensor([[0, 320, 2] + [1] * 74])
    with torch.no_grad():
        assert all(torch.isfinite(te(ids).last_hidden_state).all() for te in encoders)
