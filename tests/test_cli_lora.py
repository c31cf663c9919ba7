"""`python -m lib_lora lora …`: each subcommand end to end on tiny files, the info JSON schema, and bad inputs
reported as one line with exit code 2 (never a traceback, never an overwritten input)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_lora.cli.main import main
from lib_lora.networks.files import read_header, save_lora_file, save_safetensors_file
from lib_lora.networks.loaded import load_network
from lib_lora.networks.metadata import LoraMetadata
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.networks.tools import checkpoint_index
from lib_lora.tiny.checkpoint import tiny_sd1_checkpoint_state_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny SD1 checkpoint and two LoRAs for it (a LoCon with tags in its metadata, a LoHa)."""
    folder = tmp_path_factory.mktemp("cli_lora")
    tensors = tiny_sd1_checkpoint_state_dict(0)
    index = checkpoint_index(tensors, "sd1")
    checkpoint = folder / "base.safetensors"
    save_safetensors_file(checkpoint, tensors, {})
    metadata = LoraMetadata(arch="sd1", network_dim=4, network_alpha=2.0,
                            tag_frequency={"10_x": {"1girl": 3, "smile": 1}}).to_metadata()
    locon = folder / "locon.safetensors"
    save_lora_file(locon, random_lora_state_dict(index, kind="locon", rank=4, alpha=2.0, seed=1,
                                                 roots=("unet", "te1")), metadata)
    loha = folder / "loha.safetensors"
    save_lora_file(loha, random_lora_state_dict(index, kind="loha", rank=2, seed=2, roots=("unet", "te1")), {})
    return {"folder": folder, "checkpoint": checkpoint, "locon": locon, "loha": loha}


def run(*argv: object) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["lora", *map(str, argv)], out=out)
    return code, out.getvalue()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-studio: error: "), lines
    return lines[0]


# --- info --------------------------------------------------------------------------------------------------------


def test_info_json_has_exactly_the_documented_schema(tiny):
    code, text = run("info", tiny["locon"], "--json")
    assert code == 0
    data = json.loads(text)
    assert list(data) == ["format", "arch", "modules", "unmatched", "metadata"]
    assert (data["format"], data["arch"], data["unmatched"]) == ("locon", "sd1", [])
    assert data["modules"] and all(set(m) == {"key", "block", "rank", "alpha"} for m in data["modules"])
    assert {m["rank"] for m in data["modules"]} == {4} and {m["alpha"] for m in data["modules"]} == {2.0}
    assert data["metadata"]["ss_tag_frequency"] == {"10_x": {"1girl": 3, "smile": 1}}


def test_info_text_summarises(tiny):
    code, text = run("info", tiny["locon"])
    assert code == 0
    assert "format: locon" in text and "arch: sd1 (from metadata)" in text
    assert "BASE" in text and "IN01" in text and "rank: 4" in text and "top tags: 1girl (3), smile (1)" in text


# --- resize, merge -----------------------------------------------------------------------------------------------


def test_resize_writes_a_smaller_lora(tiny, tmp_path):
    out = tmp_path / "small.safetensors"
    code, text = run("resize", tiny["loha"], "--rank", 1, "-o", out)
    assert code == 0 and "rank 1" in text and str(out) in text
    network = load_network(out)
    assert network.format in ("lora", "locon") and {m.rank for m in network.modules.values()} == {1}
    code, text = run("resize", tiny["locon"], "--sv-fro", 0.9, "-o", tmp_path / "fro.safetensors")
    assert code == 0 and read_header(tmp_path / "fro.safetensors").metadata["ss_network_dim"] in ("Dynamic", "1",
                                                                                                "2", "3", "4")


def test_resize_default_output_name_is_beside_the_input(tiny, tmp_path):
    source = tmp_path / "mine.safetensors"
    shutil.copy(tiny["locon"], source)
    assert run("resize", source, "--rank", 2)[0] == 0
    assert (tmp_path / "mine-rank2.safetensors").is_file()


@pytest.mark.parametrize("rules", [[], ["--rank", "2", "--sv-fro", "0.5"]])
def test_resize_takes_exactly_one_rule(tiny, rules, capsys):
    with pytest.raises(SystemExit) as exit_:
        run("resize", tiny["locon"], *rules)
    assert exit_.value.code == 2


def test_merge_concat_and_svd(tiny, tmp_path):
    out = tmp_path / "both.safetensors"
    code, text = run("merge", tiny["locon"], tiny["locon"], "--ratios", 1, 0.5, "-o", out)
    assert code == 0 and "concat" in text
    assert {m.rank for m in load_network(out).modules.values()} == {8}
    assert read_header(out).metadata["modelspec.merged_from"] == "locon, locon"
    code, text = run("merge", tiny["locon"], tiny["loha"], "--rank", 3, "-o", tmp_path / "svd.safetensors")
    assert code == 0 and "svd" in text


def test_merge_reports_what_it_cannot_do(tiny, tmp_path, capsys):
    assert run("merge", tiny["locon"], tiny["loha"], "-o", tmp_path / "x.safetensors")[0] == 2
    assert "--rank" in one_line_error(capsys)
    assert run("merge", tiny["locon"], tiny["loha"], "--ratios", 1, "-o", tmp_path / "x.safetensors")[0] == 2
    assert "ratio" in one_line_error(capsys)
    assert not (tmp_path / "x.safetensors").exists()


# --- bake, extract -----------------------------------------------------------------------------------------------


def test_bake_gives_the_output_of_merging_at_load_time(tmp_path):
    """A checkpoint with a LoRA baked in, loaded by diffusers, renders as the original with the LoRA merged."""
    pytest.importorskip("diffusers")
    from lib_lora.hosts.base import Conditioning
    from lib_lora.hosts.diffusers import load_diffusers_host
    from lib_lora.networks.attach import WeightMerger
    from lib_lora.networks.keys import build_target_index
    from lib_lora.networks.loaded import as_applied
    from lib_lora.tiny.checkpoint import write_tiny_sd1_single_file

    checkpoint = write_tiny_sd1_single_file(tmp_path, name="tiny_sd1")
    original = load_diffusers_host(str(checkpoint))
    index = build_target_index(original)
    lora = tmp_path / "style.safetensors"
    save_lora_file(lora, random_lora_state_dict(index, kind="locon", rank=4, seed=5, roots=("unet", "te1")), {})
    baked_path = tmp_path / "baked.safetensors"
    code, text = run("bake", checkpoint, lora, "--ratios", 0.7, "-o", baked_path)
    assert code == 0 and "bake: style.safetensors × 0.7" in text
    shutil.copytree(tmp_path / "tiny_sd1", tmp_path / "baked")  # the config folder diffusers needs beside it
    baked = load_diffusers_host(str(baked_path))

    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    with torch.no_grad(), WeightMerger(index).applied([as_applied(load_network(lora), te_multiplier=0.7,
                                                                  unet_multiplier=0.7)]):
        expected_context = original.encode_prompts(["a photo of a cat", "a dog"]).context
        expected = original.apply_unet(x, t, Conditioning(expected_context))
    with torch.no_grad():
        context = baked.encode_prompts(["a photo of a cat", "a dog"]).context
        actual = baked.apply_unet(x, t, Conditioning(context))
        untouched = original.apply_unet(x, t, Conditioning(context))
    assert torch.allclose(context, expected_context, atol=1e-5)
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()
    assert not torch.allclose(untouched, expected, atol=1e-3)  # the LoRA did change the output


def test_extract_from_a_baked_checkpoint(tiny, tmp_path):
    tuned = tmp_path / "tuned.safetensors"
    assert run("bake", tiny["checkpoint"], tiny["locon"], "-o", tuned)[0] == 0
    out = tmp_path / "extracted.safetensors"
    code, text = run("extract", tiny["checkpoint"], tuned, "--rank", 4, "-o", out)
    assert code == 0 and "extract:" in text and "(sd1)" in text
    extracted, known = load_network(out), load_network(tiny["locon"])
    assert set(extracted.modules) == set(known.modules)
    metadata = read_header(out).metadata
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert "extracted by LoRA Studio" in metadata["ss_training_comment"]


# --- bad inputs --------------------------------------------------------------------------------------------------


def test_a_bad_file_is_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\xff" * 64)
    result = subprocess.run([sys.executable, "-m", "lib_lora", "lora", "info", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-studio: error: ") and "broken.safetensors" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [
    ["info", "{missing}"],
    ["resize", "{missing}", "--rank", "2", "-o", "{out}"],
    ["bake", "{locon}", "{locon}", "-o", "{out}"],  # a LoRA is no checkpoint
    ["extract", "{checkpoint}", "{checkpoint}", "--rank", "2", "-o", "{out}"],
])
def test_bad_inputs_are_one_line(tiny, tmp_path, capsys, command):
    values = {"missing": tmp_path / "nope.safetensors", "out": tmp_path / "out.safetensors", **tiny}
    assert run(*[part.format(**values) for part in command])[0] == 2
    one_line_error(capsys)
    assert not (tmp_path / "out.safetensors").exists()


def test_outputs_never_overwrite(tiny, tmp_path, capsys):
    source = tmp_path / "in.safetensors"
    shutil.copy(tiny["locon"], source)
    before = source.read_bytes()
    assert run("resize", source, "--rank", 2, "-o", source, "--force")[0] == 2
    assert "input" in one_line_error(capsys) and source.read_bytes() == before
    existing = tmp_path / "taken.safetensors"
    existing.write_bytes(b"keep")
    assert run("resize", source, "--rank", 2, "-o", existing)[0] == 2
    assert "--force" in one_line_error(capsys) and existing.read_bytes() == b"keep"
    assert run("resize", source, "--rank", 2, "-o", existing, "--force")[0] == 0
    assert load_network(existing).format == "locon"
