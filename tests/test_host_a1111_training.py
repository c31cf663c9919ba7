"""A1111Host.training_mode under the WebUI's --medvram / --lowvram, over the stand-in sd_model.

`modules.lowvram` is stood in by `LowVramStandIn`: the mechanism A1111 1.10 uses (the big parts on the CPU, a
forward pre-hook named `send_me_to_gpu` that moves the part being called to `devices.device` and the previous one
back, VAE encode/decode wrapped to do the same), recording every move so the tests can see the swaps.
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from webui_standin.fake_modules import install_fake_modules, make_opts

from lib_lora.errors import HostError
from lib_lora.hosts.a1111 import A1111Host
from lib_lora.hosts.a1111_training import LOWVRAM_HOOK_NAME

pytestmark = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.fixtures",)  # a1111_host, sd_model, standin_arch, webui, webui_opts

CPU = torch.device("cpu")


class LowVramStandIn(ModuleType):
    """`modules.lowvram` as --medvram leaves it: `module_in_gpu`, `send_everything_to_cpu`, hooks that swap."""

    def __init__(self, device: torch.device) -> None:
        super().__init__("modules.lowvram")
        self.device = device
        self.module_in_gpu: torch.nn.Module | None = None
        self.moves: list[str] = []

    def send_everything_to_cpu(self) -> None:
        if self.module_in_gpu is not None:
            self.module_in_gpu.to(CPU)
        self.module_in_gpu = None

    def setup(self, sd_model: Any) -> dict[str, torch.nn.Module]:
        """Hook the big parts as A1111 does with use_medvram=True; returns them by name."""
        parts = {
            "text encoder": sd_model.conditioner if sd_model.is_sdxl else sd_model.cond_stage_model,
            "vae": sd_model.first_stage_model,
            "unet": sd_model.model,
        }
        names = {id(module): name for name, module in parts.items()}

        def send_me_to_gpu(module: torch.nn.Module, _: Any) -> None:
            if self.module_in_gpu is module:
                return
            if self.module_in_gpu is not None:
                self.module_in_gpu.to(CPU)
            module.to(self.device)
            self.module_in_gpu = module
            self.moves.append(names[id(module)])

        vae = sd_model.first_stage_model
        encode, decode = vae.encode, vae.decode

        def encode_wrap(x: torch.Tensor) -> Any:
            send_me_to_gpu(vae, None)
            return encode(x)

        def decode_wrap(z: torch.Tensor) -> Any:
            send_me_to_gpu(vae, None)
            return decode(z)

        for module in parts.values():
            module.to(CPU)
            module.register_forward_pre_hook(send_me_to_gpu)
        vae.encode, vae.decode = encode_wrap, decode_wrap
        sd_model.lowvram = True
        return parts


def _medvram_webui(monkeypatch: pytest.MonkeyPatch, sd_model: Any, device: torch.device) -> LowVramStandIn:
    webui = install_fake_modules(monkeypatch, sd_model, make_opts())
    webui.shared.cmd_opts = SimpleNamespace(lowvram=False, medvram=True)
    webui.devices.device = device
    lowvram = LowVramStandIn(device)
    lowvram.setup(sd_model)
    webui.modules.lowvram = lowvram
    monkeypatch.setitem(sys.modules, "modules.lowvram", lowvram)
    return lowvram


def _one_training_step(host: A1111Host) -> torch.Tensor:
    """Text encoder forward with grad, then the UNet, then backward: what a step that trains the TE does."""
    te_param = next(host.text_encoders[0].parameters())
    te_param.requires_grad_(True)
    try:
        cond = host.encode_prompts(["1girl, solo"], with_grad=True, size=(64, 64))
        noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        host.apply_unet(noisy, torch.tensor([400]), cond).pow(2).mean().backward()
        assert te_param.grad is not None and te_param.grad.abs().sum() > 0
        return te_param.grad.detach().clone()
    finally:
        te_param.requires_grad_(False)
        te_param.grad = None


def _lowvram_hook_count(sd_model: Any) -> int:
    return sum(getattr(hook, "__name__", "") == LOWVRAM_HOOK_NAME
               for module in sd_model.modules() for hook in module._forward_pre_hooks.values())


SD1_ONLY = pytest.mark.parametrize("standin_arch", ["sd1"])  # the mechanism does not depend on the family


@SD1_ONLY
def test_the_stand_in_swaps_parts_between_the_calls_of_a_step(monkeypatch, sd_model):
    """Outside training_mode a step's calls move the text encoder in and out: what training must not meet."""
    lowvram = _medvram_webui(monkeypatch, sd_model, CPU)
    host = A1111Host.from_webui()
    for _ in range(2):
        cond = host.encode_prompts(["1girl"], size=(64, 64))
        host.apply_unet(torch.zeros(1, 4, 8, 8), torch.tensor([10]), cond)
    assert lowvram.moves == ["text encoder", "unet", "text encoder", "unet"]


def test_medvram_keeps_the_model_in_place_while_training_and_restores_the_swapping(monkeypatch, sd_model):
    lowvram = _medvram_webui(monkeypatch, sd_model, CPU)
    host = A1111Host.from_webui()
    hooks_before = _lowvram_hook_count(sd_model)
    assert hooks_before == 3
    lowvram.module_in_gpu = sd_model.first_stage_model  # as after a generation's decode
    before = snapshot_host(host)
    with host.training_mode():
        assert _lowvram_hook_count(sd_model) == 0
        assert lowvram.module_in_gpu is None
        _one_training_step(host)
        host.encode_images(torch.zeros(1, 3, 64, 64))  # the VAE's wrapper still runs: it may claim the slot
        lowvram.send_everything_to_cpu()  # what the WebUI's processing does after a sample
        _one_training_step(host)
        assert lowvram.moves.count("unet") == 0 and lowvram.moves.count("text encoder") == 0
    assert _lowvram_hook_count(sd_model) == hooks_before
    assert lowvram.module_in_gpu is sd_model.first_stage_model
    assert_same_state(before, snapshot_host(host))
    lowvram.moves.clear()
    host.encode_prompts(["1girl"], size=(64, 64))
    assert lowvram.moves == ["text encoder"]  # swapping is back for generation


@SD1_ONLY
def test_medvram_restores_on_errors(monkeypatch, sd_model):
    lowvram = _medvram_webui(monkeypatch, sd_model, CPU)
    host = A1111Host.from_webui()
    with pytest.raises(RuntimeError, match="stopped"), host.training_mode():
        _one_training_step(host)
        raise RuntimeError("stopped")
    assert _lowvram_hook_count(sd_model) == 3 and lowvram.module_in_gpu is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="moving parts between devices needs a GPU")
def test_medvram_parts_go_to_the_gpu_for_the_run_and_back_to_the_cpu(monkeypatch, sd_model):
    cuda = torch.device("cuda")
    _medvram_webui(monkeypatch, sd_model, cuda)
    host = A1111Host.from_webui()
    before = {name: tensor.device for name, tensor in sd_model.state_dict().items()}
    assert {device.type for device in before.values()} == {"cpu"}
    weights = {name: tensor.clone() for name, tensor in sd_model.state_dict().items()}
    with host.training_mode():
        assert {p.device.type for p in host.unet.parameters()} == {"cuda"}
        assert {p.device.type for te in host.text_encoders for p in te.parameters()} == {"cuda"}
        for _ in range(2):
            _one_training_step(host)
    after = sd_model.state_dict()
    assert {name: tensor.device for name, tensor in after.items()} == before
    assert all(torch.equal(weights[name], after[name]) for name in weights)


@SD1_ONLY
def test_without_medvram_nothing_moves(a1111_host, sd_model):
    sd_model.lowvram = False
    marker = sd_model.model.register_forward_pre_hook(lambda module, args: None)
    try:
        with a1111_host.training_mode():
            _one_training_step(a1111_host)
            assert len(sd_model.model._forward_pre_hooks) == 1
    finally:
        marker.remove()


@SD1_ONLY
def test_lowvram_is_refused_with_what_to_do(monkeypatch, sd_model):
    webui = install_fake_modules(monkeypatch, sd_model, make_opts(), lowvram=True)
    sd_model.lowvram = True
    host = A1111Host(sd_model, devices=webui.devices, cmd_opts=webui.shared.cmd_opts)
    with pytest.raises(HostError, match="--lowvram.*--medvram"), host.training_mode():
        pass
