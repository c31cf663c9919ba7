"""fp8_base / fp8_base_unet: the frozen base stored in float8 for a run, on the tiny models of each host (the A1111
stand-in's SD1 and SDXL, the standalone diffusers host), in both environments.

Checked: a run trains with its UNet in float8 and notes the memory saved; the host is bit-identical after (finished,
stopped, crashed), the Parameters the same objects in their own dtypes; layers the host already keeps in float8
are used as they are; a layer in float8 computes what it did within float8's precision and passes gradients to a
LoRA; a failure while setting weights aside changes nothing; A1111's lazily merged LoRAs are settled first.
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from torch import nn
from train_run_helpers import ENDINGS, tiny_config
from webui_standin.fake_modules import make_opts
from webui_standin.models import build_sd_model_standin

from lib_lora.hosts.a1111 import A1111Host
from lib_lora.tiny.images import generate_dataset
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet
from lib_lora.train import fp8_storage
from lib_lora.train.config import TrainConfig
from lib_lora.train.errors import TrainingError
from lib_lora.train.fp8_storage import STORAGE, fp8_layers, fp8_stored
from lib_lora.train.loop import TrainRun
from lib_lora.train.network.config import NetworkConfig
from lib_lora.train.network.trainable import TrainableNetwork

pytestmark = pytest.mark.hostcompat


def diffusers_host():
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host

    return load_diffusers_host("tiny")


def a1111_host(arch: str) -> A1111Host:
    """The A1111 host over the stand-in, with `modules.devices`' dtypes (which the WebUI always has)."""
    devices = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32, dtype_unet=torch.float32,
                              dtype_vae=torch.float32)
    return A1111Host(build_sd_model_standin(arch, make_opts()), devices=devices)


HOSTS = {
    "a1111-sd1": lambda: a1111_host("sd1"),
    "a1111-sdxl": lambda: a1111_host("sdxl"),
    "diffusers-sd1": diffusers_host,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, count=2, repeats=1, sizes=((64, 64),))
    return root


def layer_dtypes(roots) -> set[torch.dtype]:
    """The weight dtypes of the Linear and Conv2d layers under `roots` (open_clip's out_proj aside)."""
    skip = nn.modules.linear.NonDynamicallyQuantizableLinear
    return {m.weight.dtype for root in roots for m in root.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and type(m) is not skip}


def parameters(host) -> dict[str, tuple[nn.Parameter, torch.dtype]]:
    roots = {"unet": host.unet, **{f"te{i}": te for i, te in enumerate(host.text_encoders)}}
    return {f"{r}.{n}": (p, p.dtype) for r, root in roots.items() for n, p in root.named_parameters()}


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("name", list(HOSTS))
def test_a_run_trains_on_a_float8_unet_and_leaves_the_host_bit_identical(tmp_path, dataset, name: str,
                                                                          ending: str) -> None:
    host = HOSTS[name]()
    before, params = snapshot_host(host), parameters(host)
    seen: list[set[torch.dtype]] = []
    runs: list[TrainRun] = []

    def on_step(progress) -> None:
        seen.append(layer_dtypes([host.unet]))
        if progress.step == 2 and ending == "stopped":
            runs[0].request_stop()
        if progress.step == 2 and ending == "crashed":
            raise RuntimeError("injected failure at step 2")

    config = tiny_config(dataset, tmp_path, max_train_steps=3, train_batch_size=1, fp8_base=True,
                         mixed_precision="bf16")
    runs.append(TrainRun(config, host, on_step=on_step))
    if ending == "crashed":
        with pytest.raises(RuntimeError, match="injected failure"):
            runs[0].run()
    else:
        result = runs[0].run()
        note = next(n for n in result.notes if n.startswith("fp8_base:"))
        assert "layers stored in float8" in note and "saved" in note, note
        assert result.output is not None and result.output.is_file()
    assert seen and all(dtypes == {STORAGE} for dtypes in seen), "the UNet's layers ran in float8"
    assert_same_state(before, snapshot_host(host))
    after = parameters(host)
    assert all(after[k][0] is p and after[k][1] == dtype for k, (p, dtype) in params.items())
    assert all("forward" not in m.__dict__ for root in (host.unet, *host.text_encoders) for m in root.modules())


def test_fp8_base_covers_the_text_encoders_and_fp8_base_unet_does_not(tmp_path, dataset) -> None:
    host = HOSTS["a1111-sd1"]()
    dtypes: dict[str, set[torch.dtype]] = {}
    recorded: dict[str, tuple[str, str]] = {}
    for option in ("fp8_base", "fp8_base_unet"):
        def on_step(progress, option=option) -> None:
            dtypes[option] = layer_dtypes(host.text_encoders)

        config = tiny_config(dataset, tmp_path / option, max_train_steps=1, train_batch_size=1, **{option: True})
        result = TrainRun(config, host, on_step=on_step).run()
        metadata = read_metadata(result.output)
        recorded[option] = (metadata["ss_fp8_base"], metadata["ss_fp8_base_unet"])
    assert dtypes == {"fp8_base": {STORAGE}, "fp8_base_unet": {torch.float32}}
    assert recorded == {"fp8_base": ("True", "False"), "fp8_base_unet": ("False", "True")}  # as sd-scripts writes


def read_metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        return dict(file.metadata())


def tiny_unet_and_input() -> tuple[nn.Module, dict]:
    unet = build_tiny_ldm_unet("sd1", seed=0)
    generator = torch.Generator().manual_seed(0)
    call = {"x": torch.randn(1, 4, 8, 8, generator=generator), "timesteps": torch.tensor([500]),
            "context": torch.randn(1, 77, 32, generator=generator)}
    return unet, call


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_a_float8_unet_computes_within_float8_precision(autocast: torch.dtype | None) -> None:
    unet, call = tiny_unet_and_input()
    with torch.no_grad():
        reference = unet(**call)
        with fp8_stored([unet]) as report, torch.autocast("cpu", dtype=autocast or torch.bfloat16,
                                                           enabled=autocast is not None):
            stored = unet(**call).float()
    assert report.converted == len(fp8_layers([unet])) > 0 and report.bytes_before == 4 * report.bytes_after
    error = (stored - reference).norm() / reference.norm()
    # e4m3 keeps 3 mantissa bits (and small weights fall to its subnormals): ~10% on this UNet, ~140% for another seed
    assert 0 < error < 0.2, error


def test_gradients_reach_the_lora_through_float8_layers() -> None:
    host = a1111_host("sd1")
    network = TrainableNetwork.create(NetworkConfig(network_dim=4, network_train_unet_only=True), host, seed=0)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    cond = host.encode_prompts(["a photo"])
    with host.training_mode(), network.attached(), fp8_stored([host.unet]), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        host.apply_unet(x, torch.tensor([300]), cond).square().mean().backward()
    grads = [p.grad for p in network.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)


def test_layers_the_host_keeps_in_float8_are_used_as_they_are() -> None:
    unet, call = tiny_unet_and_input()
    host_fp8 = [m for m in fp8_layers([unet]) if isinstance(m, nn.Linear)][:5]
    for layer in host_fp8:  # what A1111's "FP8 weight" setting does to a Linear
        layer.weight.data = layer.weight.data.to(STORAGE)
    neo = host_fp8[0]  # Neo's training mode gives its fp8 layers a casting forward of their own: kept
    neo.forward = lambda x, layer=neo: nn.functional.linear(x, layer.weight.to(x.dtype), layer.bias)
    own = neo.forward
    kept = {id(layer): (layer.weight.data_ptr(), layer.weight.detach().clone()) for layer in host_fp8}
    with fp8_stored([unet]) as report, torch.no_grad():
        assert report.reused == len(host_fp8) and "used as they are" in report.note()
        assert neo.forward is own
        assert torch.isfinite(unet(**call)).all()
    assert all(layer.weight.data_ptr() == kept[id(layer)][0] and torch.equal(layer.weight, kept[id(layer)][1])
               for layer in host_fp8), "not copied, not changed"


def test_a_failure_while_setting_weights_aside_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    unet, _ = tiny_unet_and_input()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    put, calls = fp8_storage._Spill.put, []

    def failing_put(self, tensor):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return put(self, tensor)

    monkeypatch.setattr(fp8_storage._Spill, "put", failing_put)
    with pytest.raises(TrainingError, match="free disk space"):
        with fp8_stored([unet]):
            pass
    after = unet.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_the_host_is_restored_when_the_block_raises() -> None:
    unet, _ = tiny_unet_and_input()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(RuntimeError, match="stopped"), fp8_stored([unet]):
        raise RuntimeError("stopped")
    after = unet.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert all("forward" not in m.__dict__ for m in unet.modules())


def test_a1111_builtin_lora_left_merged_is_settled_before_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    unet, _ = tiny_unet_and_input()
    layer = fp8_layers([unet])[0]
    base = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)  # a LoRA the last generation merged, the built-in's backup holding the base
    layer.network_current_names, layer.network_weights_backup = (("x", 1.0, 1.0, None),), base

    def network_apply_weights(module: nn.Module) -> None:  # no network wanted: the built-in copies its backup back
        module.weight.copy_(module.network_weights_backup)
        module.network_current_names = ()

    networks = ModuleType("networks")
    networks.network_apply_weights, networks.loaded_networks = network_apply_weights, []
    monkeypatch.setitem(sys.modules, "networks", networks)
    with fp8_stored([unet]):
        assert layer.network_current_names == ()
    assert torch.equal(layer.weight, base)


def test_the_options_are_read_from_a_config_and_shown_with_help() -> None:
    from lib_lora.train.config import TRAIN_HELP

    config = TrainConfig.from_dict({"fp8_base": "true", "fp8_base_unet": False})
    assert config.fp8_base is True and config.fp8_base_unet is False and not config.notes
    assert "float8" in TRAIN_HELP["fp8_base"] and "UNet only" in TRAIN_HELP["fp8_base_unet"]


def test_the_report_says_what_was_stored_and_saved() -> None:
    report = fp8_storage.Fp8Report(converted=3, bytes_before=4 * 2**30, bytes_after=2**30, device="cuda:0",
                                   aside="CPU memory")
    assert report.note() == ("fp8_base: 3 layers stored in float8 for the run on cuda:0 (4.00 GB → 1.00 GB, "
                             "3.00 GB saved; the original weights wait in CPU memory and come back after)")


def test_on_forge_only_the_hosts_own_float8_layers_are_used() -> None:
    unet, call = tiny_unet_and_input()
    own = [m for m in fp8_layers([unet]) if isinstance(m, nn.Linear)][:3]
    for layer in own:
        layer.weight.data = layer.weight.data.to(STORAGE)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    neo = SimpleNamespace(kind="forge-neo", host_name="Forge Neo", unet=unet, text_encoders=[])
    with fp8_storage.fp8_base_stored(neo, fp8_base=True, fp8_base_unet=False) as report, torch.no_grad():
        assert (report.converted, report.reused) == (0, len(own)) and "Diffusion in Low Bits" in report.note()
        assert {m.weight.dtype for m in fp8_layers([unet])} == {torch.float32, STORAGE}
        assert torch.isfinite(unet(**call)).all()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in before.items())
