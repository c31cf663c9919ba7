"""ForgeNeoHost.training_mode over the Forge Neo stand-in: the base unpatched and bit-identical, LoRA patches and
engine state restored, the model held against Neo's memory manager and model switches, fp8 / low-bit bases, and
whole training runs (finished, stopped, crashed) that leave the host exactly as it was."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from train_run_helpers import ENDINGS, run_with_ending, tiny_config
from webui_standin import forge_memory
from webui_standin.forge_neo import apply_loras, prepare_generation, random_patches, to_fp8

from lib_lora.errors import HostError
from lib_lora.hosts.forge_neo import ForgeNeoHost
from lib_lora.networks.loaded import load_network
from lib_lora.tiny.images import generate_dataset

pytestmark = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.forge_fixtures",)  # neo, neo_arch, neo_engine, neo_host, neo_opts

SD1_ONLY = pytest.mark.parametrize("neo_arch", ["sd1"])  # the mechanism does not depend on the family


def _weights(host: ForgeNeoHost) -> dict[str, torch.Tensor]:
    roots = {"unet": host.unet, **{f"te{i}": te for i, te in enumerate(host.text_encoders)}}
    return {f"{r}.{k}": v for r, root in roots.items() for k, v in root.state_dict(keep_vars=True).items()}


def _copies(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in weights.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _with_lora(host: ForgeNeoHost) -> dict[str, torch.Tensor]:
    """Apply a LoRA the way a generation does (patches merged into the weights); returns the merged weights."""
    apply_loras(host.sd_model, [(random_patches(host), 1.0)])
    prepare_generation(host.sd_model)
    return _copies(_weights(host))


def _step(host: ForgeNeoHost) -> torch.Tensor:
    """What a training step does: TE forward with grad, UNet forward, backward into hooked trainable deltas."""
    te = host.text_encoders[0].text_model.encoder.layers[0].self_attn.q_proj
    unet = next(m for n, m in host.unet.named_modules() if n.endswith("attn2.to_k"))
    deltas = [torch.nn.Parameter(torch.zeros(m.weight.shape)) for m in (te, unet)]
    handles = [m.register_forward_hook(lambda mod, args, out, d=d: out + torch.nn.functional.linear(args[0], d))
               for m, d in zip((te, unet), deltas)]
    try:
        cond = host.encode_prompts(["1girl, solo"], with_grad=True, size=(64, 64))
        noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        host.apply_unet(noisy, torch.tensor([400]), cond).pow(2).mean().backward()
    finally:
        for handle in handles:
            handle.remove()
    assert all(d.grad is not None and d.grad.abs().sum() > 0 for d in deltas)
    return deltas[1].grad


def test_training_mode_unpatches_the_lora_without_copying_and_puts_everything_back(neo_host: ForgeNeoHost) -> None:
    engine = neo_host.sd_model
    base_tensors = _weights(neo_host)
    base, pointers = _copies(base_tensors), {k: v.data_ptr() for k, v in base_tensors.items()}
    merged = _with_lora(neo_host)
    assert not _same(base, merged)
    objects, parts = engine.forge_objects, dict(vars(engine.forge_objects))
    after, lora_hash = engine.forge_objects_after_applying_lora, engine.current_lora_hash
    lora_unet_patches = dict(after.unet.patches)
    before = snapshot_host(neo_host)
    with neo_host.training_mode():
        inside = _weights(neo_host)
        assert _same(base, inside)  # the checkpoint's own weights, not the merged ones
        assert {k: v.data_ptr() for k, v in inside.items()} == pointers  # Neo's backups: the original storage
        assert engine.forge_objects.unet is engine.forge_objects_original.unet
        assert engine.forge_objects_after_applying_lora.unet is engine.forge_objects_original.unet
        assert engine.current_lora_hash == "[]"
        assert not any(p.is_inference() or p.requires_grad for p in neo_host.unet.parameters())
        _step(neo_host)
    assert engine.forge_objects is objects and dict(vars(objects)) == parts
    assert engine.forge_objects_after_applying_lora is after and engine.current_lora_hash == lora_hash
    assert after.unet.patches == lora_unet_patches
    assert _same(base, _copies(_weights(neo_host)))  # unmerged until Neo loads the LoRA's patchers again
    assert all(p.is_inference() for p in neo_host.unet.parameters())  # Neo's own tensors are back
    prepare_generation(engine)  # the next generation: Neo merges the same LoRA again
    assert _same(merged, _copies(_weights(neo_host)))
    assert_same_state(before, snapshot_host(neo_host))


@pytest.mark.parametrize("fail", [False, True], ids=["completes", "raises"])
def test_training_mode_restores_flags_hooks_and_weights(neo_host: ForgeNeoHost, fail: bool) -> None:
    neo_host.vae.decoder.train()
    marker = neo_host.unet.time_embed.register_forward_pre_hook(lambda module, args: None)
    before = snapshot_host(neo_host)
    try:
        with pytest.raises(RuntimeError, match="failed") if fail else _nothing(), neo_host.training_mode():
            assert not any(m.training for m in neo_host.unet.modules())
            _step(neo_host)
            neo_host.unet.train()
            if fail:
                raise RuntimeError("training failed")
        assert_same_state(before, snapshot_host(neo_host))
    finally:
        marker.remove()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def test_the_model_is_held_against_neos_memory_manager(neo_host: ForgeNeoHost, neo: SimpleNamespace) -> None:
    memory = neo.memory
    engine = neo_host.sd_model
    originals = (memory.free_memory, memory.load_models_gpu, memory.unload_all_models)
    with neo_host.training_mode():
        held = {id(engine.forge_objects_original.unet.model), id(engine.forge_objects_original.clip.patcher.model)}
        neo_host.encode_images(torch.zeros(1, 3, 64, 64))  # loads the VAE too
        memory.free_memory(1e30, torch.device("cpu"))  # a later load asks for all the room there is
        loaded = {id(m.model.model) for m in memory.current_loaded_models}
        assert held <= loaded and id(neo_host.vae) not in loaded  # the VAE made room, the held models stayed
        with pytest.raises(HostError, match="cannot be unloaded while training"):
            memory.unload_all_models()
        apply_loras(engine, [(random_patches(neo_host), 1.0)])  # a sample prompt with a <lora:…> tag
        weights = _copies(_weights(neo_host))
        with pytest.raises(HostError, match="take the tag out of the sample prompts"):
            prepare_generation(engine)
        assert _same(weights, _copies(_weights(neo_host)))  # nothing was merged
    assert (memory.free_memory, memory.load_models_gpu, memory.unload_all_models) == originals
    memory.unload_all_models()  # allowed again


@SD1_ONLY
def test_model_switches_are_refused_and_the_choice_put_back(neo_host: ForgeNeoHost, neo: SimpleNamespace,
                                                            neo_opts: Any) -> None:
    main_entry = neo.main_entry
    with neo_host.training_mode():
        with pytest.raises(HostError, match="cannot change while training holds Forge Neo's model"):
            main_entry.checkpoint_change("other.safetensors", "sd")
        assert neo_opts.sd_model_checkpoint == "tiny.safetensors" and "forge_checkpoint_sd" not in neo_opts.data
        assert neo_opts.saved[-1][1]["sd_model_checkpoint"] == "tiny.safetensors"  # the saved config agrees
        assert main_entry.refreshes == []
    assert main_entry.checkpoint_change("other.safetensors", "sd")
    assert main_entry.refreshes == ["other.safetensors"]


@SD1_ONLY
def test_a_pending_unload_happens_before_the_run(neo_host: ForgeNeoHost, neo: SimpleNamespace) -> None:
    prepare_generation(neo_host.sd_model)  # a generation loaded the model
    neo.processing.need_global_unload = True  # then a model setting changed
    start = len(neo.memory.calls)
    with neo_host.training_mode():
        assert neo.processing.need_global_unload is False
        assert ("unload", "KModel") in neo.memory.calls[start:]  # what Neo's next generation would have done
        assert any(m.model is neo_host.sd_model.forge_objects_original.unet for m in neo.memory.current_loaded_models)


@SD1_ONLY
@pytest.mark.parametrize(("storage", "message"), [("nf4", "stored as nf4"), ("gguf", "stored as gguf")])
def test_low_bit_bases_are_refused_naming_the_setting(neo_host: ForgeNeoHost, storage: str, message: str) -> None:
    neo_host.unet.storage_dtype = storage
    with pytest.raises(HostError, match=f"{message}.*“Diffusion in Low Bits”"), neo_host.training_mode():
        pass
    assert neo_host.sd_model.current_lora_hash == "[]" and not forge_memory.current_loaded_models


@SD1_ONLY
@pytest.mark.parametrize("stored", [torch.float8_e4m3fn, torch.bfloat16])  # bf16: `--bf16-unet` on a CPU (fp32)
def test_a_low_precision_base_trains_as_stored_and_recasts_in_backward(neo_host: ForgeNeoHost,
                                                                       stored: torch.dtype) -> None:
    assert neo_host.dtype == torch.float32
    layers = to_fp8(neo_host.unet, stored)
    pointers = {k: v.data_ptr() for k, v in neo_host.unet.state_dict(keep_vars=True).items()}
    fp8 = _copies(neo_host.unet.state_dict(keep_vars=True))
    with neo_host.training_mode():
        recast = sum("forward" in m.__dict__ for m in neo_host.unet.modules())
        assert recast == layers
        grad = _step(neo_host)
        assert {p.dtype for n, p in neo_host.unet.named_parameters() if n.endswith("weight") and p.dim() > 1} \
            == {stored}
    assert not any("forward" in m.__dict__ for m in neo_host.unet.modules())
    assert {k: v.data_ptr() for k, v in neo_host.unet.state_dict(keep_vars=True).items()} == pointers
    assert _same(fp8, _copies(neo_host.unet.state_dict(keep_vars=True)))
    with neo_host.training_mode():  # the same step through Neo's plain cast (autograd keeps each cast copy)
        for module in neo_host.unet.modules():
            module.__dict__.pop("forward", None)
        assert torch.allclose(_step(neo_host), grad, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, count=2, repeats=1, sizes=((64, 64),))
    return root


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_training_run_leaves_the_host_bit_identical(tmp_path, dataset, neo_host: ForgeNeoHost, neo_arch: str,
                                                      ending: str) -> None:
    engine = neo_host.sd_model
    merged = _with_lora(neo_host)
    before, lora_hash = snapshot_host(neo_host), engine.current_lora_hash
    config = tiny_config(dataset, tmp_path, max_train_steps=3, train_batch_size=1, gradient_checkpointing=True,
                         network_args=["conv_dim=2"])
    result = run_with_ending(config, neo_host, ending)
    if result is not None:
        network = load_network(result.output)
        assert network.arch == neo_arch and network.format == "locon"
        assert any(key.startswith("lora_te") for key in network.modules)  # the text encoders trained too
    assert engine.current_lora_hash == lora_hash
    prepare_generation(engine)
    assert_same_state(before, snapshot_host(neo_host))
    assert _same(merged, _copies(_weights(neo_host)))
