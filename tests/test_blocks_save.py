"""Block-weighted LoRAs saved as files: at 1.0 the file merges into a tiny model exactly as the original does with
those block weights (≤ 1e-6 on every weight), for every module type, fp16 files, SDXL's two text encoders; the
refusals; the record of what it was made from; `lora blockweight` end to end."""

from __future__ import annotations

import io
import json

import pytest
import torch

from lib_lora.blocks.presets import PresetBook
from lib_lora.blocks.vectors import expand_vector
from lib_lora.cli.main import main
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import read_header, save_lora_file
from lib_lora.networks.loaded import as_applied, load_network, network_from_state_dict
from lib_lora.networks.metadata import LoraMetadata
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.networks.tools import MERGE_KEY, NetworkToolError, block_weight_lora_file, block_weighted_state
from lib_lora.networks.tools.checkpoint import checkpoint_index
from lib_lora.tiny.checkpoint import tiny_sd1_checkpoint_state_dict
from lib_lora.tiny.clip import build_tiny_text_encoder
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet
from lib_lora.tiny.openclip import build_tiny_openclip_text_model
from lib_lora.unet_blocks import BASE

pytestmark = pytest.mark.hostcompat

TOLERANCE = 1e-6
SD1_WEIGHTS = [0.5, 1, 0, -0.75, 1.25, 0.3, 2, 1, 0.1, -1, 0.6, 0, 1.5, 0.9, 1, 0.4, -0.2, 1, 0.8, 0.7, 0.25, 1.1,
               0.05, 0.95, 1.3, -0.5]  # 26 values: BASE, IN00–IN11, M00, OUT00–OUT11


@pytest.fixture(scope="module")
def sd1_tensors() -> dict[str, torch.Tensor]:
    return tiny_sd1_checkpoint_state_dict(0)


@pytest.fixture(scope="module")
def sd1_index(sd1_tensors):
    return checkpoint_index(sd1_tensors, "sd1")


@pytest.fixture(scope="module")
def sdxl_model():
    unet, te1, te2 = build_tiny_ldm_unet("sdxl", 0), build_tiny_text_encoder(1), build_tiny_openclip_text_model(2)
    tensors = {f"model.diffusion_model.{k}": v.detach().clone() for k, v in unet.state_dict().items()}
    tensors |= {f"conditioner.embedders.0.transformer.{k}": v.detach().clone() for k, v in te1.state_dict().items()}
    tensors |= {f"conditioner.embedders.1.model.{k}": v.detach().clone() for k, v in te2.state_dict().items()}
    return tensors, checkpoint_index(tensors, "sdxl")


def _merged(tensors, index, applied) -> dict[str, torch.Tensor]:
    """Every model weight with `applied` merged (the model is restored afterwards)."""
    merger = WeightMerger(index)
    with merger.applied(applied):
        return {name: tensor.detach().clone() for name, tensor in tensors.items()}


def _largest_difference(tensors, index, network, weights, strength) -> float:
    blocks = {block: w for block, w in weights.items() if block != BASE}
    original = as_applied(network, te_multiplier=strength * weights[BASE], unet_multiplier=strength,
                          block_weights=blocks)
    baked = block_weighted_state(network, weights, index.arch, strength=strength)
    saved = network_from_state_dict(baked, name="baked")
    want = _merged(tensors, index, [original])
    got = _merged(tensors, index, [as_applied(saved)])
    assert any(not torch.equal(want[n], tensors[n]) for n in tensors), "the LoRA changed nothing"
    return max(float((want[n] - got[n]).abs().max()) for n in tensors)


@pytest.mark.parametrize("kind", ["lora", "locon", "loha", "lokr", "full"])
@pytest.mark.parametrize("strength", [1.0, 0.8, -0.6])
def test_the_saved_file_at_1_equals_the_original_with_its_block_weights(sd1_tensors, sd1_index, kind, strength):
    network = network_from_state_dict(
        random_lora_state_dict(sd1_index, kind=kind, rank=3, alpha=1.5, seed=4, roots=("unet", "te1")), name=kind)
    weights = expand_vector(SD1_WEIGHTS, "sd1")
    assert _largest_difference(sd1_tensors, sd1_index, network, weights, strength) <= TOLERANCE


def test_fp16_files_keep_their_bytes_and_are_exact(sd1_tensors, sd1_index):
    state = random_lora_state_dict(sd1_index, kind="locon", rank=4, seed=6, roots=("unet", "te1"))
    state = {k: v.half() for k, v in state.items()}
    network = network_from_state_dict(state, name="half")
    weights = expand_vector(SD1_WEIGHTS, "sd1")
    assert _largest_difference(sd1_tensors, sd1_index, network, weights, 0.7) <= TOLERANCE
    baked = block_weighted_state(network, weights, "sd1", strength=0.7)
    factors = [k for k in baked if k.endswith(("lora_up.weight", "lora_down.weight"))]
    assert factors and all(baked[k].dtype == torch.float16 for k in factors)
    assert all(torch.equal(baked[k].abs(), state[k].abs()) for k in factors)  # sign flips only


def test_sdxl_text_encoders_take_base_and_the_unet_its_blocks(sdxl_model):
    tensors, index = sdxl_model
    network = network_from_state_dict(random_lora_state_dict(index, kind="locon", rank=2, seed=2), name="xl")
    assert {k.split("_")[1] for k in network.modules} >= {"te1", "te2", "unet"}
    weights = expand_vector([0.4, 1, 0.5, -1, 0.75, 2, 0.3, 1, 0, 0.6, 1.2, 0.8, 0.9, 1, 0.2, 1.4, 0.7, 0.1, 1,
                             -0.3], "sdxl")
    assert _largest_difference(tensors, index, network, weights, 0.9) <= TOLERANCE


def test_weight_zero_leaves_modules_out_and_dora_is_refused_unless_1(sd1_index):
    network = network_from_state_dict(random_lora_state_dict(sd1_index, rank=2, seed=1, roots=("unet", "te1")),
                                      name="x")
    no_te = {**expand_vector([1.0] * 17, "sd1"), BASE: 0.0}
    baked = block_weighted_state(network, no_te, "sd1")
    assert baked and not any(k.startswith("lora_te") for k in baked)
    assert all(torch.equal(baked[k], network.modules[k.split(".", 1)[0]].tensors[k.split(".", 1)[1]]) for k in baked)
    dora = network_from_state_dict(random_lora_state_dict(sd1_index, kind="dora", rank=2, seed=1, roots=("te1",)),
                                   name="d")
    ones = expand_vector([1.0] * 17, "sd1")
    assert block_weighted_state(dora, ones, "sd1").keys() == {f"{k}.{s}" for k, m in dora.modules.items()
                                                             for s in m.tensors}
    with pytest.raises(NetworkToolError, match="DoRA"):
        block_weighted_state(dora, {**ones, BASE: 0.5}, "sd1")


# --- files and the command line ----------------------------------------------------------------------------------


@pytest.fixture()
def lora_file(sd1_index, tmp_path):
    path = tmp_path / "style.safetensors"
    state = random_lora_state_dict(sd1_index, kind="lora", rank=2, seed=3, roots=("unet", "te1"))
    metadata = LoraMetadata(arch="sd1", network_dim=2, network_alpha=1.0,
                            tag_frequency={"5_style": {"red": 2}}).to_metadata()
    save_lora_file(path, state, metadata)
    return path


def test_the_file_records_its_source_and_weights_and_keeps_the_metadata(lora_file, tmp_path):
    weights = PresetBook.builtin().resolve("NCNF", "sd1")
    out = tmp_path / "style-ncnf.safetensors"
    report = block_weight_lora_file(lora_file, out, weights, strength=0.8, spec="NCNF")
    metadata = read_header(out).metadata
    record = json.loads(metadata[MERGE_KEY])
    assert (record["method"], record["blocks"], record["strength"]) == ("blocks", "NCNF", 0.8)
    assert record["weights"] == weights
    assert record["sources"] == [{"name": "style.safetensors", "sshs_model_hash": load_network(lora_file).identity,
                                  "weight": 0.8}]
    assert json.loads(metadata["ss_tag_frequency"]) == {"5_style": {"red": 2}}
    assert "NCNF at strength 0.8" in metadata["ss_training_comment"]
    assert report.arch == "sd1" and report.scaled + report.unchanged + report.dropped == len(
        load_network(lora_file).modules)


def test_refusals_name_the_problem(lora_file, tmp_path):
    weights = PresetBook.builtin().resolve("ALL", "sd1")
    with pytest.raises(NetworkToolError, match="refusing to overwrite an input"):
        block_weight_lora_file(lora_file, lora_file, weights)
    out = tmp_path / "o.safetensors"
    block_weight_lora_file(lora_file, out, weights)
    with pytest.raises(NetworkToolError, match="already exists"):
        block_weight_lora_file(lora_file, out, weights)
    with pytest.raises(NetworkToolError, match="for SD1, not SDXL"):
        block_weight_lora_file(lora_file, tmp_path / "x.safetensors", PresetBook.builtin().resolve("ALL", "sdxl"),
                               arch="sdxl")
    with pytest.raises(NetworkToolError, match="weight 0"):
        block_weight_lora_file(lora_file, tmp_path / "z.safetensors", dict.fromkeys(weights, 0.0))


def run(*argv: object) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["lora", *map(str, argv)], out=out)
    return code, out.getvalue()


def test_cli_blockweight_writes_and_replaces_only_with_force(lora_file, tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    code, text = run("blockweight", lora_file, "--blocks", "NCNF", "--strength", "0.5", "-o", out)
    assert code == 0 and "with NCNF (sd1)" in text and "rescaled" in text, text
    first = read_header(out).metadata["sshs_model_hash"]
    assert run("blockweight", lora_file, "--blocks", "ALL", "-o", out)[0] == 2
    assert "--force" in capsys.readouterr().err
    assert run("blockweight", lora_file, "--blocks", "ALL", "-o", out, "--force")[0] == 0
    assert read_header(out).metadata["sshs_model_hash"] != first
    backups = list((tmp_path / ".lora_studio_backup").iterdir())
    assert len(backups) == 1 and backups[0].name.endswith(".safetensors.bak")
    assert run("blockweight", lora_file, "--blocks", "1,2,3", "-o", tmp_path / "c.safetensors")[0] == 2
    assert "expected 17 or 26 values" in capsys.readouterr().err
