"""DiffusersHost on tiny SD1 and SDXL pipelines: encoding shapes, denoiser, generation, exact restore."""

from __future__ import annotations

import pytest
import torch
from host_checks import assert_same_state, snapshot_host

from lib_lora.errors import ModelLoadError
from lib_lora.hosts.base import Conditioning, GenerationRequest, Host
from lib_lora.hosts.diffusers import DiffusersHost, load_diffusers_host

pytest.importorskip("diffusers")

# (spec, arch, context width, extra tensors and their widths)
CASES = [
    ("tiny", "sd1", 32, {}),
    ("tiny-sdxl", "sdxl", 64, {"text_embeds": 32, "time_ids": 6}),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    spec, arch, width, extra = request.param
    return load_diffusers_host(spec), arch, width, extra


def test_host_describes_the_model(case):
    host, arch, _, _ = case
    assert isinstance(host, Host)
    info = host.info()
    assert (info.kind, info.arch, info.layout, info.device, info.dtype) == ("diffusers", arch, "diffusers", "cpu",
                                                                            "float32")
    assert info.unet_parameters == sum(p.numel() for p in host.unet.parameters())
    assert arch in info.as_markdown()
    assert len(host.text_encoders) == (2 if arch == "sdxl" else 1)


def test_encode_prompts_shapes_and_dtypes(case):
    host, _, width, extra = case
    cond = host.encode_prompts(["a photo of 1girl, blue hair", "cat"], size=(64, 96))
    assert cond.context.shape == (2, 77, width) and cond.context.dtype == torch.float32
    assert {k: v.shape for k, v in cond.extra.items()} == {k: (2, n) for k, n in extra.items()}
    assert not cond.context.requires_grad
    if "time_ids" in cond.extra:
        assert cond.extra["time_ids"][0].tolist() == [64, 96, 0, 0, 64, 96]
    different = host.encode_prompts(["a photo of 1girl, blue hair", "dog"])
    assert torch.equal(cond.context[0], different.context[0]) and not torch.equal(cond.context[1], different.context[1])


def test_encode_prompts_with_grad_reaches_the_text_encoder(case):
    host, _, _, _ = case
    with host.training_mode():
        weight = host.text_encoders[-1].text_model.encoder.layers[0].mlp.fc1.weight
        weight.requires_grad_(True)
        cond = host.encode_prompts(["girl"], with_grad=True)
        assert cond.context.requires_grad
        cond.context.sum().backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0
        weight.grad = None


def test_clip_skip_changes_the_encoding(case):
    host, _, _, _ = case
    skipped = DiffusersHost(host.pipeline, clip_skip=2).encode_prompts(["girl"])
    assert not torch.equal(skipped.context, host.encode_prompts(["girl"]).context)


def test_encode_images_gives_scaled_latents(case):
    host, _, _, _ = case
    pixels = torch.rand(2, 3, 64, 96) * 2 - 1
    latents = host.encode_images(pixels)
    assert latents.shape == (2, 4, 8, 12) and latents.dtype == torch.float32
    torch.manual_seed(0)
    raw = host.vae.encode(pixels).latent_dist.sample()
    torch.manual_seed(0)
    assert torch.allclose(host.encode_images(pixels), raw * host.latent_scale)


def test_apply_unet_and_schedule(case):
    host, _, _, _ = case
    cond = host.encode_prompts(["girl", "cat"])
    out = host.apply_unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 999]), cond)
    assert out.shape == (2, 4, 8, 8)
    schedule = host.alphas_cumprod()
    assert schedule.shape == (1000,) and schedule.dtype == torch.float32
    assert 0.99 < schedule[0] < 1 and schedule[-1] < 0.01 and bool((schedule[1:] < schedule[:-1]).all())


def test_generate_is_seeded(case):
    host, _, _, _ = case
    request = GenerationRequest("a photo of girl", steps=2, width=64, height=64, seed=3)
    first, again = host.generate(request), host.generate(request)
    assert first.size == (64, 64) and first.tobytes() == again.tobytes()


def _train_inside(host, before, *, raise_at_end: bool) -> None:
    """What a training run does to the host: the body changes flags, hooks and attention, and trains an adapter."""
    from diffusers.models.attention_processor import AttnProcessor

    target = next(m for n, m in host.unet.named_modules() if n.endswith("attn1.to_q"))
    with host.training_mode():
        assert not any(p.requires_grad for p in host.unet.parameters()), "training_mode must freeze the UNet"
        assert not host.unet.training
        adapter = torch.nn.Linear(target.in_features, target.out_features, bias=False)
        target.register_forward_hook(lambda mod, args, out: out + adapter(args[0]))
        host.unet.set_attn_processor(AttnProcessor())
        host.unet.train()
        target.weight.requires_grad_(True)  # a host weight that collects a gradient in the body
        cond = host.encode_prompts(["girl"])
        loss = host.apply_unet(torch.randn(1, 4, 8, 8), torch.tensor([500]), cond).pow(2).mean()
        loss.backward()
        torch.optim.SGD(adapter.parameters(), lr=0.1).step()
        assert adapter.weight.grad is not None and target.weight.grad is not None
        changed = snapshot_host(host)
        assert changed.hooks != before.hooks and changed.training != before.training
        assert changed.attention != before.attention and changed.requires_grad != before.requires_grad
        if raise_at_end:
            raise KeyboardInterrupt("cancelled mid-run")


@pytest.mark.parametrize("raise_at_end", [False, True], ids=["completes", "raises"])
def test_training_mode_restores_everything(case, raise_at_end):
    host, _, _, _ = case
    before = snapshot_host(host)
    if raise_at_end:
        with pytest.raises(KeyboardInterrupt):
            _train_inside(host, before, raise_at_end=True)
    else:
        _train_inside(host, before, raise_at_end=False)
    assert_same_state(before, snapshot_host(host))


def test_conditioning_cat_and_select():
    a = Conditioning(torch.zeros(2, 3, 4), {"y": torch.zeros(2, 5)})
    b = Conditioning(torch.ones(1, 3, 4), {"y": torch.ones(1, 5)})
    both = Conditioning.cat([a, b])
    assert len(both) == 3 and both.extra["y"].shape == (3, 5)
    assert torch.equal(both.select([2]).context, b.context)
    with pytest.raises(ValueError, match="at least one"):
        Conditioning.cat([])


@pytest.mark.parametrize(
    "spec, message",
    [("/nonexistent/model", "not found"), (__file__, "only .safetensors")],
)
def test_bad_model_spec_is_a_clear_error(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_diffusers_host(spec)


def test_folder_round_trip_and_missing_config(tmp_path):
    host = load_diffusers_host("tiny")
    host.pipeline.save_pretrained(tmp_path / "tiny_sd")
    loaded = load_diffusers_host(str(tmp_path / "tiny_sd"))
    assert loaded.arch.name == "sd1"
    for key, value in host.unet.state_dict().items():
        assert torch.equal(value, loaded.unet.state_dict()[key])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_diffusers_host(str(tmp_path / "empty"))
    (tmp_path / "lonely.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="config folder"):
        load_diffusers_host(str(tmp_path / "lonely.safetensors"))
