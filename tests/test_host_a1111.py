"""A1111Host over stand-ins of A1111 1.10.1's `shared.sd_model` (real ldm UNet/VAE trees, real HF CLIP text models)."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from webui_standin.fake_modules import install_fake_modules, make_opts
from webui_standin.models import build_sd_model_standin

from lib_lora.errors import HostError, UnsupportedArchError
from lib_lora.hosts.a1111 import A1111Host
from lib_lora.hosts.base import GenerationRequest, Host
from lib_lora.tiny.ldm_models import sd_alphas_cumprod

pytestmark = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.fixtures",)  # a1111_host, sd_model, standin_arch, webui, webui_opts

TEXTS = ["a photo of a cat", "1girl, solo, long hair, smile"]
CONTEXT_DIM = {"sd1": 32, "sdxl": 64}


def _pixels(batch: int = 2, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1


# --- what the model is ---------------------------------------------------------------------------------------------


def test_from_webui_describes_the_loaded_model(
    a1111_host: A1111Host, sd_model: Any, standin_arch: str
) -> None:
    host = a1111_host
    assert isinstance(host, Host)
    assert host.sd_model is sd_model
    assert host.arch.name == standin_arch and host.layout == "ldm"
    assert host.unet is sd_model.model.diffusion_model
    assert host.vae is sd_model.first_stage_model
    assert host.latent_scale == pytest.approx(0.18215 if standin_arch == "sd1" else 0.13025)
    assert host.prediction_type == "epsilon"
    assert host.device == torch.device("cpu") and host.dtype == torch.float32
    if standin_arch == "sd1":
        expected = [sd_model.cond_stage_model.wrapped.transformer]
    else:
        embedders = sd_model.conditioner.embedders
        expected = [embedders[0].wrapped.transformer, embedders[1].wrapped.model]
    assert [id(m) for m in host.text_encoders] == [id(m) for m in expected]
    info = host.info()
    assert (info.kind, info.model_name, info.arch, info.layout) == (
        "a1111",
        f"tiny-{standin_arch}",
        standin_arch,
        "ldm",
    )
    assert info.unet_parameters == sum(p.numel() for p in sd_model.model.diffusion_model.parameters())


def test_v_parameterization(sd_model: Any) -> None:
    sd_model.parameterization = "v"
    assert A1111Host(sd_model).prediction_type == "v_prediction"


def test_from_webui_without_a_model(webui: SimpleNamespace) -> None:
    webui.shared.sd_model = None
    with pytest.raises(HostError, match="no model is loaded"):
        A1111Host.from_webui()


def test_from_webui_outside_the_webui(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "modules", raising=False)
    with pytest.raises(HostError, match="`modules` package is not importable"):
        A1111Host.from_webui()


@pytest.mark.parametrize(
    ("flags", "error", "message"),
    [
        ({"is_sd3": True, "is_sdxl": False}, UnsupportedArchError, "SD3"),
        ({}, UnsupportedArchError, "not SD1, SD2 or SDXL"),
        ({"is_sdxl": True, "forge_objects": object()}, HostError, "Forge"),
    ],
)
def test_unsupported_models_are_refused(flags: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        A1111Host(SimpleNamespace(**flags))


# --- encoding and denoising -----------------------------------------------------------------------------------------


def test_encode_prompts_shapes_and_dtypes(a1111_host: A1111Host, standin_arch: str) -> None:
    cond = a1111_host.encode_prompts(TEXTS)
    assert cond.context.shape == (2, 77, CONTEXT_DIM[standin_arch])
    assert cond.context.dtype == torch.float32 and not cond.context.requires_grad
    if standin_arch == "sdxl":
        assert set(cond.extra) == {"y"}
        assert cond.extra["y"].shape == (2, 80) and cond.extra["y"].dtype == torch.float32
    else:
        assert cond.extra == {}


def test_sdxl_size_goes_through_sd_conditioning(
    monkeypatch: pytest.MonkeyPatch, webui_opts: SimpleNamespace
) -> None:
    sd_model = build_sd_model_standin("sdxl", webui_opts)
    batches: list[Any] = []
    original = sd_model.get_learned_conditioning
    monkeypatch.setattr(
        sd_model, "get_learned_conditioning", lambda batch: batches.append(batch) or original(batch)
    )
    outside = A1111Host(sd_model).encode_prompts(TEXTS, size=(64, 96))  # no WebUI: the local list subclass
    fake = install_fake_modules(monkeypatch, sd_model, webui_opts)
    host = A1111Host.from_webui()
    small = host.encode_prompts(TEXTS, size=(64, 96))
    default = host.encode_prompts(TEXTS)
    assert [(b.height, b.width, list(b)) for b in batches] == [
        (64, 96, TEXTS),
        (64, 96, TEXTS),
        (1024, 1024, TEXTS),
    ]
    assert type(batches[1]) is fake.prompt_parser.SdConditioning
    assert torch.equal(outside.extra["y"], small.extra["y"])
    assert torch.equal(small.context, default.context)
    assert torch.equal(small.extra["y"][:, :32], default.extra["y"][:, :32])  # pooled text part
    assert not torch.equal(small.extra["y"][:, 32:], default.extra["y"][:, 32:])  # size embeddings


def test_sd1_prompts_honour_clip_skip(webui_opts: SimpleNamespace) -> None:
    host = A1111Host(build_sd_model_standin("sd1", webui_opts))
    last = host.encode_prompts(TEXTS).context
    webui_opts.CLIP_stop_at_last_layers = 2
    skipped = host.encode_prompts(TEXTS).context
    assert not torch.allclose(last, skipped)


def _train_only_one_te_param(host: A1111Host) -> list[torch.nn.Parameter]:
    chosen = []
    for encoder in host.text_encoders:
        encoder.requires_grad_(False)
        param = encoder.text_model.encoder.layers[0].self_attn.q_proj.weight
        param.requires_grad_(True)
        chosen.append(param)
    return chosen


def test_with_grad_reaches_text_encoder_params(
    a1111_host: A1111Host, sd_model: Any, standin_arch: str
) -> None:
    params = _train_only_one_te_param(a1111_host)
    with torch.enable_grad():
        direct = sd_model.get_learned_conditioning(TEXTS)
    direct_context = direct["crossattn"] if isinstance(direct, dict) else direct
    # The stand-in has sgm's pitfall: non-trainable embedders run under no_grad (SD1's wrapper does not).
    assert direct_context.requires_grad == (standin_arch == "sd1")

    assert not a1111_host.encode_prompts(TEXTS).context.requires_grad
    cond = a1111_host.encode_prompts(TEXTS, with_grad=True)
    assert cond.context.requires_grad
    loss = cond.context.pow(2).mean() + sum(v.pow(2).mean() for v in cond.extra.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    if standin_arch == "sdxl":
        assert cond.extra["y"].requires_grad
        assert [e.is_trainable for e in sd_model.conditioner.embedders] == [False] * 5


def test_with_grad_restores_is_trainable_on_error(
    monkeypatch: pytest.MonkeyPatch, webui_opts: SimpleNamespace
) -> None:
    sd_model = build_sd_model_standin("sdxl", webui_opts)
    seen: list[list[bool]] = []

    def failing(batch: Any) -> None:
        seen.append([e.is_trainable for e in sd_model.conditioner.embedders])
        raise RuntimeError("boom")

    monkeypatch.setattr(sd_model, "get_learned_conditioning", failing)
    with pytest.raises(RuntimeError, match="boom"):
        A1111Host(sd_model).encode_prompts(TEXTS, with_grad=True)
    assert seen == [[True, True, False, False, False]]
    assert [e.is_trainable for e in sd_model.conditioner.embedders] == [False] * 5


def test_encode_images_shape_and_dtype(a1111_host: A1111Host, standin_arch: str) -> None:
    torch.manual_seed(3)
    latents = a1111_host.encode_images(_pixels(2, 64, 48).double())  # cast to the VAE's dtype on the way in
    assert latents.shape == (2, 4, 8, 6) and latents.dtype == torch.float32
    assert not latents.requires_grad
    scale = 0.18215 if standin_arch == "sd1" else 0.13025
    torch.manual_seed(3)
    with torch.no_grad():
        expected = a1111_host.vae.encode(_pixels(2, 64, 48)).sample() * scale  # the posterior sample, scaled
    assert torch.allclose(latents, expected, atol=1e-6)


def test_alphas_cumprod_is_the_original(a1111_host: A1111Host, sd_model: Any) -> None:
    sd_model.alphas_cumprod = torch.linspace(1, 0, 1000).half()  # as apply_alpha_schedule_override may do
    schedule = a1111_host.alphas_cumprod()
    assert schedule.dtype == torch.float32 and schedule.device.type == "cpu"
    assert torch.equal(schedule, sd_alphas_cumprod())
    schedule.zero_()
    assert torch.equal(a1111_host.alphas_cumprod(), sd_alphas_cumprod())
    del sd_model.alphas_cumprod_original
    assert torch.equal(a1111_host.alphas_cumprod(), torch.linspace(1, 0, 1000).half().float())


def test_apply_unet_routes_the_conditioning(a1111_host: A1111Host, standin_arch: str) -> None:
    cond = a1111_host.encode_prompts(TEXTS)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    with torch.no_grad():
        out = a1111_host.apply_unet(x, t, cond)
        y = {"y": cond.extra["y"]} if standin_arch == "sdxl" else {}
        direct = a1111_host.unet(x, t, context=cond.context, **y)
    assert out.shape == (2, 4, 8, 8) and out.dtype == torch.float32
    assert torch.equal(out, direct)


# --- training mode ---------------------------------------------------------------------------------------------------


def _attention_classes(sd_model: Any) -> list[type]:
    return sorted(
        {type(m) for m in sd_model.modules() if type(m).__name__.endswith("CrossAttention")}, key=str
    )


def _snapshot(sd_model: Any) -> dict[str, dict]:
    modules = dict(sd_model.named_modules())
    return {
        "weights": {k: v.detach().clone() for k, v in sd_model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in sd_model.named_parameters()},
        "training": {k: m.training for k, m in modules.items()},
        "hooks": {
            k: (tuple(m._forward_hooks.items()), tuple(m._forward_pre_hooks.items()))
            for k, m in modules.items()
        },
        "flags": {
            (k, attr): m.__dict__[attr]
            for k, m in modules.items()
            for attr in ("checkpoint", "use_checkpoint", "is_trainable")
            if attr in m.__dict__
        },
        "attention": {cls: cls.__dict__.get("forward") for cls in _attention_classes(sd_model)},
    }


def _differences(before: dict[str, dict], after: dict[str, dict]) -> set[str]:
    """The categories in which two snapshots differ (weights compared bit for bit)."""
    changed = set()
    for category, values in before.items():
        other = after[category]
        if category == "weights":
            same = values.keys() == other.keys() and all(torch.equal(values[k], other[k]) for k in values)
        else:
            same = values == other
        if not same:
            changed.add(category)
    return changed


def test_snapshot_comparison_detects_each_change(webui_opts: SimpleNamespace) -> None:
    sd_model = build_sd_model_standin("sd1", webui_opts)
    before = _snapshot(sd_model)
    unet = sd_model.model.diffusion_model
    attention = _attention_classes(sd_model)[0]
    original_forward = attention.__dict__["forward"]
    try:
        with torch.no_grad():
            weight = unet.input_blocks[4][1].transformer_blocks[0].attn1.to_q.weight
            weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(1e9))
        unet.out[2].weight.requires_grad_(False)
        unet.middle_block.train()
        unet.time_embed.register_forward_hook(lambda *args: None)
        unet.input_blocks[1][0].use_checkpoint = False
        attention.forward = lambda self, x, context=None, mask=None: x
        assert _differences(before, _snapshot(sd_model)) == set(before)
    finally:
        attention.forward = original_forward


def _prepare_host_state(sd_model: Any) -> list[torch.utils.hooks.RemovableHandle]:
    """A non-default starting state that training_mode must give back: frozen VAE, a hook, a module in train mode."""
    sd_model.first_stage_model.requires_grad_(False)
    sd_model.first_stage_model.decoder.train()
    return [sd_model.model.diffusion_model.time_embed.register_forward_pre_hook(lambda module, args: None)]


def _training_body(host: A1111Host, sd_model: Any, before: dict[str, dict], fail: bool) -> None:
    """What a trainer does: flip flags, hook an adapter in, swap the attention implementation, forward + backward."""
    inside = _snapshot(sd_model)
    assert _differences(before, inside) == {"requires_grad", "training", "flags"}
    assert not any(p.requires_grad for p in sd_model.parameters())
    assert not any(m.training for m in sd_model.modules())
    assert not any(
        inside["flags"][key] for key in inside["flags"] if key[1] in ("checkpoint", "use_checkpoint")
    )

    unet = host.unet
    target = unet.input_blocks[4][1].transformer_blocks[0].attn2.to_k
    adapter = torch.nn.Linear(target.in_features, target.out_features, bias=False)
    target.register_forward_hook(lambda module, args, output: output + adapter(args[0]))
    attention = _attention_classes(sd_model)[0]
    original_forward = attention.__dict__["forward"]
    calls = []

    def swapped(self: Any, x: torch.Tensor, context: Any = None, mask: Any = None) -> torch.Tensor:
        calls.append(1)
        return original_forward(self, x, context=context, mask=mask)

    attention.forward = swapped
    sd_model.train()
    sd_model.first_stage_model.requires_grad_(True)
    for embedder in getattr(sd_model, "conditioner", SimpleNamespace(embedders=[])).embedders:
        embedder.is_trainable = True

    cond = host.encode_prompts(TEXTS[:1], size=(64, 64))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    out = host.apply_unet(x, torch.tensor([500]), cond)
    out.pow(2).mean().backward()
    assert calls and adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in unet.parameters())
    assert _differences(before, _snapshot(sd_model)) == {
        "requires_grad",
        "training",
        "flags",
        "hooks",
        "attention",
    }
    if fail:
        raise RuntimeError("training failed")


@pytest.mark.parametrize("fail", [False, True], ids=["completes", "raises"])
def test_training_mode_restores_everything(a1111_host: A1111Host, sd_model: Any, fail: bool) -> None:
    handles = _prepare_host_state(sd_model)
    before, host_before = _snapshot(sd_model), snapshot_host(a1111_host)
    originals = {cls: cls.__dict__["forward"] for cls in _attention_classes(sd_model)}
    try:
        raises = pytest.raises(RuntimeError, match="training failed") if fail else nullcontext()
        with raises, a1111_host.training_mode():
            _training_body(a1111_host, sd_model, before, fail)
        after = _snapshot(sd_model)
        assert _differences(before, after) == set()
        assert (
            after["hooks"] == before["hooks"]
        )  # the pre-existing hook is still there, the adapter's is gone
        assert_same_state(host_before, snapshot_host(a1111_host))
    finally:
        for cls, forward in originals.items():
            cls.forward = forward
        for handle in handles:
            handle.remove()


def test_training_mode_clears_builtin_networks(
    monkeypatch: pytest.MonkeyPatch, a1111_host: A1111Host
) -> None:
    networks = ModuleType("networks")
    networks.loaded_networks = ["some_lora"]
    calls: list[list[str]] = []

    def load_networks(names: list[str], *args: Any) -> None:
        calls.append(list(names))
        networks.loaded_networks = []

    networks.load_networks = load_networks
    monkeypatch.setitem(sys.modules, "networks", networks)
    with a1111_host.training_mode():
        assert calls == [[]] and networks.loaded_networks == []


def test_training_mode_refuses_lowvram(monkeypatch: pytest.MonkeyPatch, sd_model: Any) -> None:
    install_fake_modules(monkeypatch, sd_model, make_opts(), lowvram=True)
    host = A1111Host.from_webui()
    with pytest.raises(HostError, match="--lowvram"), host.training_mode():
        pass
    assert all(p.requires_grad for p in host.unet.parameters())


# --- generation ------------------------------------------------------------------------------------------------------


def test_generate_needs_the_webui(a1111_host: A1111Host) -> None:
    with pytest.raises(HostError, match="only available inside the A1111 WebUI"):
        a1111_host.generate(GenerationRequest(prompt="a cat"))


def test_generate_uses_webui_processing(
    monkeypatch: pytest.MonkeyPatch, a1111_host: A1111Host, webui: Any
) -> None:
    made: list[Any] = []
    image = object()

    class Txt2Img(SimpleNamespace):
        closed = False

        def close(self) -> None:
            self.closed = True

    def process_images(p: Any) -> SimpleNamespace:
        made.append((p, torch.is_grad_enabled()))
        return SimpleNamespace(images=[image])

    processing = ModuleType("modules.processing")
    processing.StableDiffusionProcessingTxt2Img = lambda **kwargs: Txt2Img(**kwargs)
    processing.process_images = process_images
    monkeypatch.setitem(sys.modules, "modules.processing", processing)
    monkeypatch.setattr(webui.modules, "processing", processing, raising=False)

    request = GenerationRequest(
        prompt="a cat", negative_prompt="dog", steps=3, cfg_scale=5.0, width=64, height=96, seed=7
    )
    assert a1111_host.generate(request) is image
    ((p, grad_enabled),) = made
    assert (p.prompt, p.negative_prompt, p.steps, p.cfg_scale, p.width, p.height, p.seed) == (
        "a cat",
        "dog",
        3,
        5.0,
        64,
        96,
        7,
    )
    assert p.sd_model is a1111_host.sd_model and p.do_not_save_samples and p.closed and not grad_enabled


def test_generate_runs_the_always_on_scripts_with_their_defaults_and_the_gate_holder(
    monkeypatch: pytest.MonkeyPatch, a1111_host: A1111Host, webui: Any
) -> None:
    """Without p.scripts A1111 runs no script, so `<lora:x:0.8:NCNF>` would reach the built-in Lora unrewritten."""
    from lib_lora.hosts.gate import ALLOW_WHILE_HELD_ATTR, WEBUI_GPU

    made: list[Any] = []
    processing = ModuleType("modules.processing")
    processing.StableDiffusionProcessingTxt2Img = lambda **kwargs: SimpleNamespace(**kwargs)
    processing.process_images = lambda p: made.append(p) or SimpleNamespace(images=["image"])
    runner = SimpleNamespace(inputs=[None, SimpleNamespace(value=True), SimpleNamespace(value=0.5), None])
    scripts = ModuleType("modules.scripts")
    scripts.scripts_txt2img = runner
    for name, module in (("processing", processing), ("scripts", scripts)):
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
        monkeypatch.setattr(webui.modules, name, module, raising=False)

    a1111_host.generate(GenerationRequest(prompt="a cat <lora:x:0.8:NCNF>"))
    with WEBUI_GPU.hold("training"):
        a1111_host.generate(GenerationRequest(prompt="a cat"))
    first, second = made
    assert first.scripts is runner and first.script_args == (0, True, 0.5, None)
    assert first.prompt == "a cat <lora:x:0.8:NCNF>"  # the script rewrites it, not us
    assert getattr(first, ALLOW_WHILE_HELD_ATTR) is None and getattr(second, ALLOW_WHILE_HELD_ATTR) == "training"
