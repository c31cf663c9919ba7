"""The loader check on what our trainer writes and on foreign files, with diffusers' `load_lora_weights` for real.

Every network type the trainer writes, SD1 and SDXL, with and without the text encoders, is applied whole by the
A1111, Forge Neo and ComfyUI tables; diffusers applies LoRA/LoCon whole and refuses LoHa/LoKr (it has no loader
for them). A diffusers/PEFT-named file and a Flux key set report exactly which keys fail where. A finished run
writes the check into its card, and `lora info --loaders` shows it.
"""

from __future__ import annotations

import functools
import io
import json

import pytest
import torch
from train_run_helpers import tiny_config

from lib_lora.cli.main import main
from lib_lora.networks.files import save_lora_file
from lib_lora.networks.keys import build_target_index
from lib_lora.networks.loaders import CARD_KEY, check_file, check_tensors
from lib_lora.networks.loaders.report import NOT_LOADED, UNKNOWN_MODULE, UNKNOWN_SUFFIX
from lib_lora.networks.random_files import kohya_default_targets, random_lora_state_dict

pytest.importorskip("diffusers")
pytest.importorskip("peft")

ALGOS: dict[str, tuple[str, dict[str, str]]] = {
    "lora": ("networks.lora", {}),
    "locon": ("networks.lora", {"conv_dim": "4", "conv_alpha": "2"}),
    "loha": ("lycoris.kohya", {"algo": "loha", "preset": "attn-mlp"}),
    "lokr": ("lycoris.kohya", {"algo": "lokr", "preset": "full", "factor": "4"}),
}
ARCHS = {"tiny": "sd1", "tiny-sdxl": "sdxl"}


@functools.cache
def tiny_host(spec: str):
    from lib_lora.hosts.diffusers import load_diffusers_host

    return load_diffusers_host(spec)


def trainer_tensors(spec: str, algo: str, text_encoder: bool) -> dict[str, torch.Tensor]:
    """What the trainer saves for this network (`kohya_state_dict`, as RunOutputs writes it), untrained."""
    from lib_lora.train.network.config import NetworkConfig
    from lib_lora.train.network.trainable import TrainableNetwork

    module, args = ALGOS[algo]
    config = NetworkConfig(network_module=module, network_args=args, network_dim=4, network_alpha=2.0,
                           network_train_unet_only=not text_encoder)
    network = TrainableNetwork.create(config, tiny_host(spec), seed=0)
    return network.kohya_state_dict(torch.float16)


@pytest.mark.parametrize("text_encoder", [True, False], ids=["with-te", "unet-only"])
@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("spec", list(ARCHS))
def test_every_file_the_trainer_writes_is_applied_whole(spec, algo, text_encoder):
    tensors = trainer_tensors(spec, algo, text_encoder)
    assert any(k.startswith("lora_te") for k in tensors) == text_encoder
    check = check_tensors(tensors, ARCHS[spec])
    assert [r.loader for r in check.reports] == ["diffusers", "a1111", "forge_neo", "comfyui"] and not check.skipped
    for report in check.reports[1:]:
        assert report.complete and report.total == len(tensors), report.to_text()
    diffusers = check.reports[0]
    if algo in ("lora", "locon"):
        assert diffusers.complete, diffusers.to_text()
    else:  # diffusers has no LoHa/LoKr loader: it raises, and says so
        assert {f.reason for f in diffusers.failures} == {NOT_LOADED} and diffusers.applied == 0
        assert diffusers.failures[0].detail.startswith("load_lora_weights raised ValueError")


def test_diffusers_checks_shapes_too():
    tensors = trainer_tensors("tiny", "lora", True)
    key = next(k for k in tensors if k.endswith("attn1_to_q.lora_down.weight"))
    tensors[key] = torch.zeros(4, 48)  # a width no layer of the model has
    report = check_tensors(tensors, "sd1").reports[0]
    assert report.applied == 0 and "size mismatch" in report.failures[0].detail


def peft_named(spec: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """A LoRA in diffusers/PEFT naming (`unet.<path>.lora_A.weight`, no alphas), and its UNet attention keys."""
    index = build_target_index(tiny_host(spec))
    kohya = random_lora_state_dict(index, kind="lora", roots=("unet", "te1"))
    tensors: dict[str, torch.Tensor] = {}
    for target in kohya_default_targets(index, roots=("unet", "te1")):
        prefix = "unet" if target.root == "unet" else "text_encoder"
        tensors[f"{prefix}.{target.module_path}.lora_A.weight"] = kohya[f"{target.key}.lora_down.weight"]
        tensors[f"{prefix}.{target.module_path}.lora_B.weight"] = kohya[f"{target.key}.lora_up.weight"]
    attention = {k for k in tensors if k.startswith("unet.") and (".attn1.to_" in k or ".attn2.to_" in k)}
    return tensors, attention


def test_a_peft_named_file_fails_exactly_where_each_loader_cannot_place_it():
    tensors, attention = peft_named("tiny")
    diffusers, a1111, neo, comfy = check_tensors(tensors, "sd1").reports
    assert diffusers.complete
    assert a1111.applied == 0 and {f.reason for f in a1111.failures} == {UNKNOWN_MODULE}  # split at the first "."
    # ComfyUI knows dotted diffusers names only with `processor.to_q`: every UNet attention projection fails
    assert {f.key for f in comfy.failures} == attention and {f.reason for f in comfy.failures} == {UNKNOWN_MODULE}
    assert comfy.applied == len(tensors) - len(attention) > 0
    # ... which is more than half of the keys, so Neo skips the file
    assert len(attention) > len(tensors) / 2 and neo.applied == 0
    assert {f.key for f in neo.failures if f.reason == UNKNOWN_MODULE} == attention


def test_diffusers_counts_a_layer_only_when_its_factors_loaded():
    tensors, _ = peft_named("tiny")
    lone = next(k for k in tensors if k.endswith("attn2.to_k.lora_A.weight"))
    del tensors[lone.replace("lora_A", "lora_B")]  # PEFT makes the layer; its up factor stays unloaded
    report = check_tensors(tensors, "sd1").reports[0]
    assert [f.key for f in report.failures] == [lone] and report.failures[0].reason == UNKNOWN_MODULE
    assert any("missing keys" in note for note in report.notes)


FLUX_UNET = ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1")
CLIP_L = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"


def flux_tensors() -> dict[str, torch.Tensor]:
    """A Flux LoRA's key set (kohya names): two transformer modules and a CLIP-L one of the tiny model's width."""
    tensors = {}
    for name, width in ((FLUX_UNET[0], 96), (FLUX_UNET[1], 96), (CLIP_L, 32)):
        tensors.update({f"{name}.lora_down.weight": torch.zeros(4, 32), f"{name}.lora_up.weight": torch.zeros(width, 4),
                        f"{name}.alpha": torch.tensor(4.0)})
    return tensors


def test_a_flux_lora_on_sdxl_fails_its_transformer_keys():
    tensors = flux_tensors()
    flux_keys = {k for k in tensors if k.startswith(FLUX_UNET)}
    diffusers, a1111, neo, comfy = check_tensors(tensors, "sdxl").reports
    for report in (a1111, comfy):
        assert {f.key: f.reason for f in report.failures} == dict.fromkeys(flux_keys, UNKNOWN_MODULE)
        assert report.applied == 3
    assert neo.applied == 0 and {f.key for f in neo.failures if f.reason == NOT_LOADED} == set(tensors) - flux_keys
    assert diffusers.applied == 0 and "double.blocks.0.img.attn.qkv" in diffusers.failures[0].detail
    assert any("not found in the base model" in note for note in diffusers.notes)


def test_a_dora_file_loses_its_scales_in_diffusers(tmp_path):
    index = build_target_index(tiny_host("tiny"))
    tensors = random_lora_state_dict(index, kind="dora", roots=("unet",))
    diffusers, *tables = check_tensors(tensors, "sd1").reports
    assert all(report.complete for report in tables)
    assert {f.key for f in diffusers.failures} == {k for k in tensors if k.endswith(".dora_scale")}
    assert {f.reason for f in diffusers.failures} == {UNKNOWN_SUFFIX}
    assert any("DoRA" in note for note in diffusers.notes)


def test_lora_info_shows_the_check_and_a_run_writes_it_into_the_card(tmp_path):
    from lib_lora.tiny.images import generate_dataset
    from lib_lora.train.loop import TrainRun

    data = tmp_path / "data"
    generate_dataset(data, count=2, repeats=1, sizes=((64, 64),))
    result = TrainRun(tiny_config(data, tmp_path / "out", max_train_steps=1, train_batch_size=1),
                      tiny_host("tiny")).run()
    card = json.loads(result.output.with_suffix(".json").read_text(encoding="utf-8"))
    assert card["activation text"] and card[CARD_KEY]["complete"] is True
    assert [(r["loader"], r["applied"] == r["total"]) for r in card[CARD_KEY]["reports"]] == [
        ("diffusers", True), ("a1111", True), ("forge_neo", True), ("comfyui", True)]

    out = io.StringIO()
    assert main(["lora", "info", str(result.output), "--loaders"], out=out) == 0
    assert "A1111 1.10 (SD1): " in out.getvalue() and "ComfyUI (SD1):" in out.getvalue()
    foreign = tmp_path / "flux.safetensors"
    save_lora_file(foreign, flux_tensors(), {})
    check = check_file(foreign, "sdxl")
    assert not check.complete and check.reports[1].applied == 3
    out = io.StringIO()
    assert main(["lora", "info", str(result.output), "--loaders", "--json"], out=out) == 0
    assert json.loads(out.getvalue())["loaders"]["reports"][3]["failures"] == []
