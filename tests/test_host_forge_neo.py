"""ForgeNeoHost over stand-ins of Forge Neo's loaded engine (real tiny ldm UNet/VAE, real HF CLIP text models).

What the model is, encoding and denoising through the engine's own code, generation through processing, and which
host the WebUI glue builds for which Forge. Training mode: test_host_forge_neo_training.py.
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from webui_standin.forge_modules import install_neo_modules, make_neo_opts
from webui_standin.forge_neo import Flux, build_engine

from lib_lora.errors import HostError, UnsupportedArchError
from lib_lora.hosts.base import GenerationRequest, Host
from lib_lora.hosts.forge_neo import ForgeNeoHost
from lib_lora.tiny.ldm_models import sd_alphas_cumprod

pytestmark = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.forge_fixtures",)  # neo, neo_arch, neo_engine, neo_host, neo_opts

TEXTS = ["a photo of a cat", "1girl, solo, long hair, smile"]
CONTEXT_DIM = {"sd1": 32, "sdxl": 64}


def _pixels(batch: int = 2, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1


# --- what the model is ---------------------------------------------------------------------------------------------


def test_from_webui_describes_the_loaded_model(neo_host: ForgeNeoHost, neo_engine: Any, neo_arch: str) -> None:
    host = neo_host
    objects = neo_engine.forge_objects
    assert isinstance(host, Host) and host.handles_lora_tags and host.clip_skip is None
    assert host.sd_model is neo_engine and host.arch.name == neo_arch and host.layout == "ldm"
    assert host.unet is objects.unet.model.diffusion_model
    assert host.vae is objects.vae.first_stage_model
    names = ["clip_l", "clip_g"] if neo_arch == "sdxl" else ["clip_l"]
    assert host.text_encoders == [objects.clip.cond_stage_model[n].transformer for n in names]
    assert host.latent_scale == pytest.approx(0.18215 if neo_arch == "sd1" else 0.13025)
    assert host.prediction_type == "epsilon"
    assert host.device == torch.device("cpu") and host.dtype == torch.float32
    info = host.info()
    assert (info.kind, info.model_name, info.arch) == ("forge-neo", f"tiny-{neo_arch}", neo_arch)
    assert "Forge model" not in info.as_text()


def test_the_weights_are_inference_tensors_as_in_neo(neo_host: ForgeNeoHost) -> None:
    """Neo loads under inference mode; the stand-in does too, so training mode's aliasing is exercised."""
    assert all(p.is_inference() for p in neo_host.unet.parameters())
    assert all(p.is_inference() for te in neo_host.text_encoders for p in te.parameters())


def test_v_prediction(neo_opts: Any) -> None:
    engine = build_engine("sd1", neo_opts)
    engine.forge_objects.unet.model.predictor.prediction_type = "v_prediction"
    assert ForgeNeoHost(engine).prediction_type == "v_prediction"


def test_no_model_loaded(neo: SimpleNamespace) -> None:
    neo.shared.sd_model = SimpleNamespace(first_stage_model=None)  # Neo's FakeInitialModel has no forge_objects
    with pytest.raises(HostError, match="no model is loaded in Forge Neo"):
        ForgeNeoHost.from_webui()


def test_no_checkpoint_chosen(neo: SimpleNamespace) -> None:
    def fails() -> None:
        raise ValueError("Failed to find available model...")

    neo.sd_models.forge_model_reload = fails
    with pytest.raises(HostError, match="no checkpoint is chosen"):
        ForgeNeoHost.from_webui()


def test_a_load_takes_the_webuis_queue_lock_and_happens_once(monkeypatch: pytest.MonkeyPatch,
                                                                neo: SimpleNamespace) -> None:
    """Neo loads lazily; UI events arriving together must not load the checkpoint twice at once (OOM on a real
    SD1.5: each load holds a full copy). A loaded checkpoint is served without waiting for the lock."""
    import threading

    queue_lock = threading.Lock()
    call_queue = ModuleType("modules.call_queue")
    call_queue.queue_lock = queue_lock
    monkeypatch.setitem(sys.modules, "modules.call_queue", call_queue)
    reload = neo.sd_models.forge_model_reload
    seen: list[bool] = []

    def slow_reload() -> tuple[Any, bool]:
        seen.append(queue_lock.locked())
        threading.Event().wait(0.05)
        return reload()

    neo.sd_models.forge_model_reload = slow_reload
    hosts: list[ForgeNeoHost] = []
    threads = [threading.Thread(target=lambda: hosts.append(ForgeNeoHost.from_webui())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(hosts) == 4 and neo.sd_models.reloads == 1 and all(seen)
    with queue_lock:  # a generation holds the lock: a loaded checkpoint is still served
        assert ForgeNeoHost.from_webui().sd_model is neo.shared.sd_model


def _flux(opts: Any) -> Any:
    sd1 = build_engine("sd1", opts, inference=False)
    return type("Flux", (), {"model_config": Flux(), "forge_objects": sd1.forge_objects, "is_inpaint": False})()


@pytest.mark.parametrize(("change", "message"), [
    ("flux", "the loaded model is Flux .*supports SD 1.x and SDXL on Forge Neo"),
    ("inpaint", "inpainting SD15 model"),
    ("flow", "predicts 'const'"),
])
def test_unsupported_models_are_refused(neo_opts: Any, change: str, message: str) -> None:
    engine = _flux(neo_opts) if change == "flux" else build_engine("sd1", neo_opts, inference=False)
    if change == "inpaint":
        engine.is_inpaint = True
    if change == "flow":
        engine.forge_objects.unet.model.predictor.prediction_type = "const"
    with pytest.raises(UnsupportedArchError, match=message):
        ForgeNeoHost(engine)


# --- encoding and denoising -----------------------------------------------------------------------------------------


def test_encode_prompts_shapes_and_ownership(neo_host: ForgeNeoHost, neo_arch: str) -> None:
    cond = neo_host.encode_prompts(TEXTS, size=(64, 64))
    assert cond.context.shape == (2, 77, CONTEXT_DIM[neo_arch]) and cond.context.dtype == torch.float32
    assert not cond.context.requires_grad and not cond.context.is_inference()
    if neo_arch == "sdxl":
        assert set(cond.extra) == {"y"} and cond.extra["y"].shape == (2, 80) and not cond.extra["y"].is_inference()
    else:
        assert cond.extra == {}
    direct = neo_host.sd_model.get_learned_conditioning(TEXTS)  # Neo's own call, in inference mode
    direct = direct["crossattn"] if isinstance(direct, dict) else direct
    assert direct.is_inference() and torch.equal(direct, cond.context)


def test_clip_skip_is_the_webui_setting_applied_as_neo_does(neo: SimpleNamespace, neo_opts: Any) -> None:
    engine = neo.shared.sd_model
    host = ForgeNeoHost.from_webui()
    engine.clip_skip = 1  # the engine's own value until a generation sets it from the option (Neo's default: 2)
    skipped = host.encode_prompts(TEXTS).context
    assert engine.clip_skip == 2
    neo_opts.CLIP_stop_at_last_layers = 1
    last = host.encode_prompts(TEXTS).context
    assert engine.clip_skip == 1
    if host.arch.name == "sd1":
        assert not torch.allclose(last, skipped)
    else:  # SDXL's minimal clip skip is 2 (the penultimate layer either way)
        assert torch.equal(last, skipped)


@pytest.mark.parametrize("neo_arch", ["sdxl"])
def test_sdxl_size_goes_into_the_vector(neo_host: ForgeNeoHost) -> None:
    small = neo_host.encode_prompts(TEXTS, size=(64, 96))
    default = neo_host.encode_prompts(TEXTS)
    assert torch.equal(small.context, default.context)
    assert torch.equal(small.extra["y"][:, :32], default.extra["y"][:, :32])  # pooled text part
    assert not torch.equal(small.extra["y"][:, 32:], default.extra["y"][:, 32:])  # size embeddings


def test_encode_images(neo_host: ForgeNeoHost, neo_arch: str) -> None:
    torch.manual_seed(3)
    latents = neo_host.encode_images(_pixels(2, 64, 48).double())
    assert latents.shape == (2, 4, 8, 6) and latents.dtype == torch.float32
    assert not latents.requires_grad and not latents.is_inference()
    torch.manual_seed(3)
    with torch.no_grad():
        expected = neo_host.vae.encode(_pixels(2, 64, 48)).sample() * neo_host.latent_scale
    assert torch.allclose(latents, expected, atol=1e-5)


def test_alphas_cumprod_is_the_predictors_copy(neo_host: ForgeNeoHost) -> None:
    schedule = neo_host.alphas_cumprod()
    assert schedule.dtype == torch.float32 and torch.equal(schedule, sd_alphas_cumprod())
    schedule.zero_()
    assert torch.equal(neo_host.alphas_cumprod(), sd_alphas_cumprod())


def test_apply_unet_calls_the_diffusion_model_as_kmodel_does(neo_host: ForgeNeoHost, neo_arch: str) -> None:
    cond = neo_host.encode_prompts(TEXTS, size=(64, 64))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    with torch.no_grad():
        out = neo_host.apply_unet(x, t, cond)
        y = {"y": cond.extra["y"]} if neo_arch == "sdxl" else {}
        direct = neo_host.unet(x, t.float(), context=cond.context, **y)
    assert out.shape == (2, 4, 8, 8) and out.dtype == torch.float32 and torch.equal(out, direct)


# --- generation ------------------------------------------------------------------------------------------------------


def test_generate_needs_the_webui(monkeypatch: pytest.MonkeyPatch, neo_host: ForgeNeoHost,
                                 neo: SimpleNamespace) -> None:
    monkeypatch.delitem(sys.modules, "modules.processing")
    monkeypatch.delattr(neo.modules, "processing")
    with pytest.raises(HostError, match="only available inside Forge Neo"):
        neo_host.generate(GenerationRequest(prompt="a cat"))


def test_generate_runs_processing_with_the_always_on_scripts(
    monkeypatch: pytest.MonkeyPatch, neo_host: ForgeNeoHost, neo: SimpleNamespace
) -> None:
    from lib_lora.hosts.gate import ALLOW_WHILE_HELD_ATTR, WEBUI_GPU

    made: list[tuple[Any, bool]] = []
    processing = neo.processing
    processing.StableDiffusionProcessingTxt2Img = lambda **kwargs: SimpleNamespace(closed=False, **kwargs)
    processing.process_images = lambda p: made.append((p, torch.is_grad_enabled())) or SimpleNamespace(images=["i"])
    runner = SimpleNamespace(inputs=[None, SimpleNamespace(value=True), None])
    scripts = ModuleType("modules.scripts")
    scripts.scripts_txt2img = runner
    monkeypatch.setitem(sys.modules, "modules.scripts", scripts)
    monkeypatch.setattr(neo.modules, "scripts", scripts, raising=False)

    request = GenerationRequest(prompt="a cat <lora:x:0.8>", negative_prompt="dog", steps=3, cfg_scale=5.0,
                                width=64, height=96, seed=7)
    assert neo_host.generate(request) == "i"
    with WEBUI_GPU.hold("training"):
        neo_host.generate(GenerationRequest(prompt="a cat"))
    (first, grad), (second, _) = made
    assert (first.prompt, first.negative_prompt, first.steps, first.cfg_scale, first.width, first.height,
            first.seed) == ("a cat <lora:x:0.8>", "dog", 3, 5.0, 64, 96, 7)
    assert first.sd_model is neo_host.sd_model and first.do_not_save_samples and not grad
    assert first.scripts is runner and first.script_args == (0, True, None)
    assert getattr(first, ALLOW_WHILE_HELD_ATTR) is None and getattr(second, ALLOW_WHILE_HELD_ATTR) == "training"


def test_generate_refuses_on_step(neo_host: ForgeNeoHost) -> None:
    with pytest.raises(HostError, match="on_step"):
        neo_host.generate(GenerationRequest(prompt="a cat"), on_step=lambda step: None)


# --- which host the WebUI glue builds --------------------------------------------------------------------------------


@pytest.mark.parametrize("neo_arch", ["sd1"])
def test_current_host_on_neo_is_forge_neo_host(neo: SimpleNamespace) -> None:
    from lib_lora.webui.host import current_host

    host = current_host()
    assert type(host) is ForgeNeoHost and host.sd_model is neo.shared.sd_model


def test_current_host_on_a1111(monkeypatch: pytest.MonkeyPatch) -> None:
    from webui_standin.fake_modules import install_fake_modules, make_opts
    from webui_standin.models import build_sd_model_standin

    from lib_lora.hosts.a1111 import A1111Host
    from lib_lora.webui.host import current_host

    opts = make_opts()
    install_fake_modules(monkeypatch, build_sd_model_standin("sd1", opts), opts)
    monkeypatch.delitem(sys.modules, "modules_forge", raising=False)
    monkeypatch.delitem(sys.modules, "modules_forge.forge_version", raising=False)
    assert type(current_host()) is A1111Host


def test_current_host_on_an_unknown_forge_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from lib_lora.webui.host import current_host

    opts = make_neo_opts()
    install_neo_modules(monkeypatch, build_engine("sd1", opts), opts, version="classic-1.0")
    with pytest.raises(HostError, match="Forge version 'classic-1.0'"):
        current_host()
