"""Choosing an epoch on the tiny model: a run of 4 saved epochs is compared (grid, validation losses, similarity,
loader checks), the recommendation is the best combined score, keeping it moves every other file and loses none,
and the model is bit-identical afterwards; the same through `python -m lib_lora compare`. The analyzer's part is
checked with a stand-in renderer whose blocks change known shares of the image."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_run_helpers import TRIGGER, make_pattern_dataset, tiny_config

from lib_lora.blocks.syntax import parse_prompt
from lib_lora.jobs import Job
from lib_lora.train.compare import (
    CompareSpec,
    FeatureStatistic,
    apply_keep,
    compare_files,
    describe_files,
    plan_keep,
    recommend,
    run_comparison,
)
from lib_lora.train.compare.score import Candidate

pytest.importorskip("diffusers")

FAST = {"train_batch_size": 2, "network_train_unet_only": True, "cache_text_encoder_outputs": True,
        "optimizer_args": ["foreach=True"], "learning_rate": 3e-3}
PROMPT = f"{TRIGGER} --s 1"
STRENGTHS = (0.5, 1.0)


@pytest.fixture(scope="module")
def host():
    from lib_lora.hosts.diffusers import load_diffusers_host

    return load_diffusers_host("tiny")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, host) -> tuple[Path, Path]:
    """(the folder of a 4-epoch run's saves, its training images): 2 images, batch 2, validated on a third."""
    from lib_lora.train.loop import TrainRun

    root = tmp_path_factory.mktemp("epochs")
    data = make_pattern_dataset(root / "data", count=2)
    validation = make_pattern_dataset(root / "validation", count=1)
    config = tiny_config(data, root / "out", max_train_epochs=4, save_every_n_epochs=1,
                         validation_dir=str(validation), **FAST)
    TrainRun(config, host).run()
    return root / "out", data


@pytest.fixture
def saves(run_folder, tmp_path) -> tuple[Path, Path]:
    """A copy of the run's saves (the keep moves them) and the training images."""
    folder, data = run_folder
    copy = tmp_path / "Lora"
    shutil.copytree(folder, copy)
    return copy, data


def digests(folder: Path) -> list[str]:
    return sorted(hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file())


def test_four_epochs_are_compared_and_the_best_combined_score_is_kept(saves, host):
    from lib_lora.blocks.apply import LoraLibrary
    from lib_lora.blocks.presets import PresetBook
    from lib_lora.blocks.session import LoraSession

    folder, data = saves
    paths = sorted(folder.glob("*.safetensors"))
    assert [p.name for p in paths] == ["tinylora-000001.safetensors", "tinylora-000002.safetensors",
                                       "tinylora-000003.safetensors", "tinylora.safetensors"]
    before = {name: tensor.clone() for name, tensor in host.unet.state_dict().items()}
    session = LoraSession(host, LoraLibrary([folder]), PresetBook.builtin())
    spec = CompareSpec(prompts=PROMPT, strengths=STRENGTHS, width=64, height=64, analyze="none")
    try:
        result = Job("compare", lambda control: run_comparison(host, session, paths, spec, control,
                                                               data=data)).run_here()
    finally:
        session.unmerge()
    assert all(torch.equal(before[name], tensor) for name, tensor in host.unet.state_dict().items())

    assert [row.file.label for row in result.rows] == ["epoch 1", "epoch 2", "epoch 3", "epoch 4"]
    assert result.grid.height > 4 * 64 and result.grid.width > 2 * 64  # 4 rows of 2 tiles, with labels
    assert [row.validation_loss for row in result.rows] == [row.file.validation_loss for row in result.rows]
    assert all(loss is not None for loss in (row.validation_loss for row in result.rows))
    assert result.embedder == "colour and layout statistic"
    assert all(row.loaders.complete for row in result.rows)  # every key applies in every loader
    # the combined score by hand: half the loss's place between the highest and lowest loss, half the
    # similarity's place between the lowest and highest; the recommendation is the best of them
    losses = [row.validation_loss for row in result.rows]
    sims = [value for row in result.rows for value in row.similarities]

    def place(value: float, low: float, high: float) -> float:
        return 1.0 if high == low else (value - low) / (high - low)

    by_hand = {(row.file.label, s): 0.5 * place(-row.validation_loss, -max(losses), -min(losses))
               + 0.5 * place(row.similarities[j], min(sims), max(sims))
               for row in result.rows for j, s in enumerate(STRENGTHS)}
    best = max(by_hand.values())
    assert result.recommendation.best.score == pytest.approx(best)
    assert by_hand[(result.best.file.label, result.best_strength)] == pytest.approx(best)
    assert f"combined score {best:.3f} of 1" in result.recommendation.reason
    candidates = [Candidate(i, row.file.label, s, row.validation_loss, row.similarities[j])
                  for i, row in enumerate(result.rows) for j, s in enumerate(STRENGTHS)]
    assert recommend(candidates).best.candidate.label == result.best.file.label

    kept_bytes = hashlib.sha256(result.best.file.path.read_bytes()).hexdigest()
    everything = digests(folder)
    plan = apply_keep(plan_keep(result.best.file, [row.file for row in result.rows]))
    assert plan.kept == folder / "tinylora.safetensors"
    assert hashlib.sha256(plan.kept.read_bytes()).hexdigest() == kept_bytes
    assert len(list((folder / "epochs").glob("*.safetensors"))) == 3
    assert digests(folder) == everything  # every file kept, none changed


def test_the_command_line_compares_recommends_and_keeps(saves):
    from lib_lora.cli.main import main

    folder, data = saves
    paths = [str(p) for p in sorted(folder.glob("*.safetensors"))]
    out = io.StringIO()
    code = main(["compare", *paths, "--data", str(data), "--prompt", PROMPT, "--width", "64", "--height", "64",
                 "--strengths", "1", "--analyze", "none", "--json", "--keep", "--out", str(folder / "grid.png")],
                out=out)
    assert code == 0
    text = out.getvalue()
    result = json.loads(text[:text.rindex("}") + 1])
    assert len(result["files"]) == 4 and result["recommended"]["strength"] == 1.0
    assert result["recommended"]["score"] == max(f["score"]["1.0"] for f in result["files"])
    assert "other LoRA files (with their cards) moved into" in text
    assert (folder / "tinylora.safetensors").is_file() and len(list((folder / "epochs").iterdir())) >= 3
    assert Image.open(folder / "grid.png").size[1] > 4 * 64


def test_a_bad_command_line_is_one_line_and_moves_nothing(saves, capsys):
    from lib_lora.cli.main import main

    folder, data = saves
    before = digests(folder)
    assert main(["compare", str(folder / "tinylora.safetensors"), "--data", str(data), "--strengths", "x"]) == 2
    assert "strengths" in capsys.readouterr().err
    assert main(["compare", str(folder / "nothing.safetensors"), "--data", str(data)]) == 2
    other = shutil.copy(folder / "tinylora.safetensors", folder / "other.safetensors")
    before = digests(folder)
    assert main(["compare", str(folder / "tinylora.safetensors"), str(other), "--data", str(data), "--prompt", "zq",
                 "--keep"]) == 2  # two runs' files: no name to keep one under
    assert "--name" in capsys.readouterr().err
    assert digests(folder) == before


# --- the analyzer's part, with a stand-in renderer -------------------------------------------------------------


class BlockPainter:
    """Draws block i of the 17-value format as a stripe i + 1 pixels wide, bright when the block is on: switching
    block i off changes (i + 1) / 153 of the pixels, so the analyzer ranks OUT11, OUT10, OUT09 first."""

    def check(self, prompt: str) -> list:
        return parse_prompt(prompt)[1]

    def generate(self, request):
        calls = parse_prompt(request.prompt)[1]
        weights = [1.0] * 17
        if calls and calls[0].blocks:
            weights = [float(v) for v in calls[0].blocks.split(",")]
        strength = calls[0].unet if calls else 0.0
        row = np.concatenate([np.full(i + 1, 200 * strength * w) for i, w in enumerate(weights)])
        pixels = np.repeat(np.clip(row, 0, 255).astype(np.uint8)[None, :, None], 8, axis=0).repeat(3, axis=2)
        return type("Generated", (), {"image": Image.fromarray(pixels)})()


def test_the_recommended_file_gets_the_analyzers_top_blocks(tmp_path):
    from test_compare import run_files

    files = describe_files(run_files(tmp_path))
    spec = CompareSpec(prompts="zq --s 1", strengths=(1.0,), width=64, height=64, analyze="best")
    reference = FeatureStatistic().embed([Image.new("RGB", (8, 8), (200, 200, 200))])
    result = Job("compare", lambda control: compare_files(
        files, spec, BlockPainter(), control, embedder=FeatureStatistic(), reference=reference,
        losses=[0.4, 0.3, 0.2, 0.1], source="test", arch="sd1", model_name="test")).run_here()
    best = result.best
    assert best.file.label == "epoch 4"  # the lowest loss; every file paints alike here
    assert best.top_blocks == ("OUT11 (11.11%)", "OUT10 (10.46%)", "OUT09 (9.80%)")
    assert [row.top_blocks for row in result.rows if row is not best] == [None, None, None]
    assert "most effective block: OUT11" in best.analysis


def test_losses_measured_on_a_validation_folder_are_the_files_own_even_after_a_render(saves, host):
    """The validation folder's losses are those of `validate` (fixed draws: equal twice), measured on the base
    weights although the session still holds a LoRA merged from an earlier render."""
    from lib_lora.blocks.apply import LoraLibrary
    from lib_lora.blocks.presets import PresetBook
    from lib_lora.blocks.session import LoraSession
    from lib_lora.hosts.base import GenerationRequest
    from lib_lora.train.compare import measure_losses
    from lib_lora.train.config import TrainConfig
    from lib_lora.train.validation import ValidationSet, validation_loss

    folder, data = saves
    validation = Path(data).parent / "validation"
    files = describe_files(sorted(folder.glob("*.safetensors")))
    config = TrainConfig.from_dict({"train_data_dir": str(validation), "resolution": "64"})
    images = ValidationSet.prepare(config.data, host, seed=0)
    expected = [validation_loss(host, file.path, images, 0, timesteps=4).loss for file in files]
    assert measure_losses(host, files, validation, resolution="64") == expected

    session = LoraSession(host, LoraLibrary([folder]), PresetBook.builtin())
    spec = CompareSpec(prompts=PROMPT, strengths=(1.0,), width=64, height=64, analyze="none")
    try:
        session.generate(GenerationRequest(prompt=f"{TRIGGER} <lora:tinylora:4>", steps=1, width=64, height=64))
        assert session.merged
        result = Job("compare", lambda control: run_comparison(
            host, session, [f.path for f in files], spec, control, data=data, validation_dir=str(validation),
            resolution="64", check_loaders=False)).run_here()
    finally:
        session.unmerge()
    assert [row.validation_loss for row in result.rows] == expected
    assert result.loss_source == "measured now on the validation folder"
