"""The rounds mode on the tiny model: the note's first three rounds, the one LoRA of their total change, the host.

The note trains, merges at 0.7, trains again at half the learning rate, merges at 0.9, and so on. With every round's
own LoRA saved (`rounds_save_each`), the merged model is rebuilt here (base + Σ strength · round LoRA) and compared
with base + the saved LoRA on the UNet's output: at a rank that holds the whole change (3 rounds × rank 4) they
must agree to float32 rounding; at rank 4 the reported error is what the cut lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from train_run_helpers import make_pattern_dataset

from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import load_lora_file
from lib_lora.networks.keys import build_target_index
from lib_lora.networks.loaded import as_applied, load_network
from lib_lora.train.config import TrainConfig
from lib_lora.train.errors import ConfigError
from lib_lora.train.loop import TrainRun
from lib_lora.train.modes.config import ModeConfig, Round

pytest.importorskip("diffusers")

NOTE_ROUNDS = ["learning_rate=1e-4,epochs=6,merge=0.7", "learning_rate=5e-5,epochs=4,merge=0.9",
               "learning_rate=2.5e-5,epochs=4,merge=0.9"]
"""The first three rounds of the practitioner's note (the later ones halve the learning rate again)."""
TOLERANCE = 5e-5
"""Largest difference allowed between the merged model's UNet output and base + the saved LoRA, at full rank: float32
round-off of three merges, seen from 9e-7 to 1.1e-5 with each run's own data; the rounds change the output by ~1e-2."""
FULL_RANK_ERROR = 5e-5
"""Largest relative error reported for a cut that keeps every rank of the total change: float32 round-off of the SVD,
seen from below 1e-6 to 1.35e-5 from run to run; a cut one rank short (11 of 12) loses 4.8e-2."""


@pytest.fixture(scope="module")
def host():
    return load_diffusers_host("tiny")


def _config(tmp: Path, **values) -> TrainConfig:
    base = {"pretrained_model_name_or_path": "tiny", "train_data_dir": str(make_pattern_dataset(tmp / "data")),
            "output_dir": str(tmp / "out"), "output_name": "relora", "resolution": "64", "train_batch_size": 2,
            "network_dim": 4, "network_alpha": 4, "seed": 1, "caption_extension": ".txt",
            "optimizer_args": ["foreach=True"], "training_mode": "rounds", "rounds": NOTE_ROUNDS,
            "rounds_save_each": True}
    return TrainConfig.from_dict({**base, **values})


def unet_output(host) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn((2, 4, 8, 8), generator=generator)
    with torch.no_grad():
        return host.apply_unet(latents, torch.tensor([999, 300]), host.encode_prompts(["zqpattern", ""]))


def merged_output(host, loras: list[tuple[Path, float]]) -> torch.Tensor:
    applied = [as_applied(load_network(path), te_multiplier=weight, unet_multiplier=weight) for path, weight in loras]
    with WeightMerger(build_target_index(host)).applied(applied):
        return unet_output(host)


def test_three_rounds_of_the_note_give_one_lora_of_their_total_change(tmp_path, host):
    before, reference = snapshot_host(host), unet_output(host)
    result = TrainRun(_config(tmp_path, rounds_rank=12), host).run()
    assert_same_state(before, snapshot_host(host))
    assert torch.equal(unet_output(host), reference)

    out = tmp_path / "out"
    rounds = [(out / f"relora-round{n}.safetensors", merge) for n, merge in ((1, 0.7), (2, 0.9), (3, 0.9))]
    assert result.output == out / "relora.safetensors" and all(path.is_file() for path, _ in rounds)
    assert result.steps == (6 + 4 + 4) * 2  # 4 images in batches of 2: two steps an epoch
    notes = "\n".join(result.notes)
    assert "round 1: 12 steps at learning rate 0.0001, merged at 0.7" in notes
    assert "round 3: 8 steps at learning rate 2.5e-05, merged at 0.9" in notes

    merged = merged_output(host, rounds)
    extracted = merged_output(host, [(result.output, 1.0)])
    assert float((merged - reference).abs().max()) > 100 * TOLERANCE  # the rounds did change the model
    assert float((extracted - merged).abs().max()) <= TOLERANCE
    metadata = load_lora_file(result.output).metadata
    assert metadata["ss_network_dim"] == "12" and metadata["lora_studio_training_mode"] == "rounds"
    assert metadata["lora_studio_rounds"] == ";".join(ModeConfig(rounds=NOTE_ROUNDS).rounds)
    assert float(metadata["lora_studio_rounds_error"]) < FULL_RANK_ERROR


def test_a_lower_rank_reports_what_the_cut_lost(tmp_path, host):
    before = snapshot_host(host)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("zqpattern --s 2 --w 64 --h 64\n", encoding="utf-8")
    config = _config(tmp_path, rounds=NOTE_ROUNDS[:2], rounds_save_each=False, sample_prompts=str(prompts))
    result = TrainRun(config, host).run()
    assert_same_state(before, snapshot_host(host))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == ["relora.safetensors"]
    assert result.preview == tmp_path / "out" / "relora.preview.png"  # rendered with the saved LoRA merged
    error = float(load_lora_file(result.output).metadata["lora_studio_rounds_error"])
    assert 0 < error < 1
    assert any("saved one LoRA of rank 4" in note and f"relative error {error:.2e}" in note for note in result.notes)


@pytest.mark.parametrize("ending", ["stopped", "crashed"])
def test_the_host_is_restored_exactly_when_a_round_ends_early(tmp_path, host, ending):
    before = snapshot_host(host)
    runs: list[TrainRun] = []

    def on_step(progress) -> None:
        if progress.step == 3 and progress.total_steps == 8:  # in round 2
            if ending == "crashed":
                raise RuntimeError("injected failure in round 2")
            runs[0].request_stop()

    runs.append(TrainRun(_config(tmp_path, rounds_save_each=False), host, on_step=on_step))
    if ending == "crashed":
        with pytest.raises(RuntimeError, match="injected failure"):
            runs[0].run()
    else:
        result = runs[0].run()
        assert result.cancelled and result.steps == 12 + 3
        assert result.output == tmp_path / "out" / "relora-step00000015.safetensors"
    assert_same_state(before, snapshot_host(host))


@pytest.mark.parametrize(("value", "words"), [
    (["learning_rate=1e-4"], "needs epochs"),
    (["learning_rate=1e-4,epochs=0"], "at least 1"),
    (["learning_rate=1e-4,epochs=2,merge=11"], "at most 10"),
    (["learning_rate=1e-4,epochs=2,speed=3"], "unknown round setting"),
    (["epochs"], "expected key=value"),
    ([], "at least one round"),
])
def test_bad_rounds_are_refused_with_the_option_named(value, words):
    with pytest.raises(ConfigError, match=words) as caught:
        TrainConfig.from_dict({"training_mode": "rounds", "rounds": value})
    assert caught.value.key.startswith("rounds")


def test_rounds_read_from_toml_tables_and_text_alike():
    toml = ('training_mode = "rounds"\nrounds = [{learning_rate = 1e-4, epochs = 6, merge = 0.7}, '
            '"lr=5e-5, epochs=4, merge=0.9"]\n')
    config = TrainConfig.from_toml_text(toml)
    assert config.mode.round_schedule == [Round(1e-4, 6, 0.7), Round(5e-5, 4, 0.9)]
    assert TrainConfig.from_toml_text(config.to_toml()) == config
    with pytest.raises(ConfigError, match="DoRA"):
        TrainConfig.from_dict({"training_mode": "rounds", "rounds": NOTE_ROUNDS[:1],
                               "network_module": "lycoris.kohya", "network_args": ["dora_wd=True"]})


def test_with_fp8_base_each_round_trains_on_float8_and_merges_into_the_full_precision_weights(
        tmp_path, host, monkeypatch):
    """The base is float8 while a round trains, and back in full precision when the round is merged: a LoRA's small
    change merged into float8 weights (3 mantissa bits) would mostly round away."""
    from lib_lora.train.modes import working

    def matrix_dtypes() -> set[torch.dtype]:
        return {p.dtype for p in host.unet.parameters() if p.dim() >= 2}

    at_merge: list[set[torch.dtype]] = []
    in_training: list[set[torch.dtype]] = []
    real_merge = working.WorkingWeights.merge

    def merge(self, network, strength, name) -> None:
        at_merge.append(matrix_dtypes())
        real_merge(self, network, strength, name)

    monkeypatch.setattr(working.WorkingWeights, "merge", merge)
    before = snapshot_host(host)
    rounds = ["learning_rate=1e-4,epochs=1,merge=0.7", "learning_rate=5e-5,epochs=1,merge=0.9"]
    config = _config(tmp_path, rounds=rounds, rounds_save_each=False, fp8_base=True)
    result = TrainRun(config, host, on_step=lambda progress: in_training.append(matrix_dtypes())).run()
    assert result.output is not None and len(at_merge) == 2 and len(in_training) == 4
    assert all(torch.float8_e4m3fn in dtypes for dtypes in in_training)
    assert all(torch.float8_e4m3fn not in dtypes for dtypes in at_merge)
    assert sum(note.startswith("fp8_base:") for note in result.notes) == 1  # said once, not once a round
    assert_same_state(before, snapshot_host(host))
