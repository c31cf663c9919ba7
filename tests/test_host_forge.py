"""ForgeHost (lllyasviel's Forge 2) over stand-ins written from Forge 2's patcher, LoRA loader and memory manager:
the WebUI glue picks it, training unmerges the LoRAs through Forge's loader and leaves the host bit-identical."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from train_run_helpers import tiny_config
from webui_standin import forge2
from webui_standin.forge_modules import install_neo_modules, make_neo_opts
from webui_standin.forge_neo import build_engine, prepare_generation, random_patches

from lib_lora.errors import HostError
from lib_lora.hosts.forge import ForgeHost
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.loop import TrainRun
from lib_lora.webui.host import current_host, is_forge2

pytestmark = pytest.mark.hostcompat


@pytest.fixture
def forge(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    opts = make_neo_opts()
    engine = forge2.use_forge2_patchers(build_engine("sd1", opts))
    fake = install_neo_modules(monkeypatch, engine, opts)
    fake.memory = forge2.install_forge2(monkeypatch)
    return fake


def _weights(host: ForgeHost) -> dict[str, torch.Tensor]:
    roots = {"unet": host.unet, "te": host.text_encoders[0]}
    return {f"{r}.{k}": v for r, root in roots.items() for k, v in root.state_dict(keep_vars=True).items()}


def _values(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in weights.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _merge_a_lora(host: ForgeHost) -> dict[str, torch.Tensor]:
    forge2.apply_loras(host.sd_model, [(random_patches(host), 1.0)])
    prepare_generation(host.sd_model)
    return _values(_weights(host))


@pytest.mark.parametrize(("version", "forge_two"), [("2.0.1v1.10.1", True), ("f2.0.1v1.10.1-previous-669", True),
                                                    ("neo", False), ("f0.0.17v1.8.0rc", False)])
def test_forge2_versions(version: str, forge_two: bool) -> None:
    assert is_forge2(version) is forge_two


def test_current_host_on_forge2_is_forge_host(forge: SimpleNamespace) -> None:
    host = current_host()
    assert type(host) is ForgeHost and host.sd_model is forge.shared.sd_model
    info = host.info()
    assert (info.kind, info.arch, info.model_name) == ("forge", "sd1", "tiny-sd1")


def test_training_unmerges_through_forges_loader_and_puts_everything_back(forge: SimpleNamespace) -> None:
    host = ForgeHost.from_webui()
    engine = host.sd_model
    base_tensors = _weights(host)
    base, originals = _values(base_tensors), {k: id(v) for k, v in base_tensors.items()}
    merged = _merge_a_lora(host)
    assert not _same(base, merged)
    objects, after, lora_hash = engine.forge_objects, engine.forge_objects_after_applying_lora, engine.current_lora_hash
    before = snapshot_host(host)
    with host.training_mode():
        inside = _weights(host)
        assert _same(base, _values(inside))  # Forge's backups: the checkpoint's own weights
        assert all(v.data_ptr() == base_tensors[k].data_ptr() for k, v in inside.items())
        assert engine.forge_objects.unet.lora_patches == {} and engine.current_lora_hash == "[]"
        with pytest.raises(HostError, match="take the tag out of the sample prompts"):
            forge2.apply_loras(engine, [(random_patches(host), 0.5)])
            prepare_generation(engine)
    assert engine.forge_objects is objects and engine.forge_objects_after_applying_lora is after
    assert engine.current_lora_hash == lora_hash
    assert {k: id(v) for k, v in _weights(host).items()} == originals  # Forge restores the Parameter objects
    prepare_generation(engine)  # the next generation merges the LoRA again
    assert _same(merged, _values(_weights(host)))
    assert_same_state(before, snapshot_host(host))


def test_cpu_swap_is_refused_naming_the_setting(forge: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forge2, "SWAP", True)
    host = ForgeHost.from_webui()
    with pytest.raises(HostError, match="“GPU Weights”"), host.training_mode():
        pass
    assert host.sd_model.current_lora_hash == "[]"


def test_a_training_run_leaves_forge2_bit_identical(tmp_path: Any, forge: SimpleNamespace) -> None:
    data = tmp_path / "data"
    generate_dataset(data, count=2, repeats=1, sizes=((64, 64),))
    host = ForgeHost.from_webui()
    merged = _merge_a_lora(host)
    before = snapshot_host(host)
    config = tiny_config(data, tmp_path / "out", max_train_steps=2, train_batch_size=1, gradient_checkpointing=True)
    result = TrainRun(config, host).run()
    assert result.output is not None and result.output.is_file()
    prepare_generation(host.sd_model)
    assert_same_state(before, snapshot_host(host))
    assert _same(merged, _values(_weights(host)))
