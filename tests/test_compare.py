"""Choosing an epoch, the pure parts: the combined score and its recommendation, the similarity statistic, the files'
epochs, the options, and keeping one file while the others move into epochs/ (nothing lost, undone on failure)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lib_lora.train.compare import (
    Candidate,
    CompareError,
    CompareSpec,
    FeatureStatistic,
    apply_keep,
    describe_file,
    describe_files,
    image_embedder,
    parse_strengths,
    plan_keep,
    recommend,
    score_candidates,
)
from lib_lora.train.compare import keep as keep_module
from lib_lora.train.compare.files import common_run_name
from lib_lora.train.compare.similarity import CLIP_NAME, STATISTIC_NAME, similarity, statistic_vector
from lib_lora.train.errors import ConfigError

hostcompat = pytest.mark.hostcompat


# --- the combined score ---------------------------------------------------------------------------------------

LOSSES = {1: 0.30, 2: 0.20, 3: 0.22, 4: 0.40}  # epoch → validation loss: epoch 2 lowest, epoch 4 overfit
SIMILARITY = {(1, 0.5): 0.10, (1, 1.0): 0.20, (2, 0.5): 0.30, (2, 1.0): 0.50,
              (3, 0.5): 0.40, (3, 1.0): 0.60, (4, 0.5): 0.55, (4, 1.0): 0.70}


def four_epochs() -> list[Candidate]:
    return [Candidate(epoch - 1, f"epoch {epoch}", strength, LOSSES[epoch], SIMILARITY[(epoch, strength)])
            for epoch in LOSSES for strength in (0.5, 1.0)]


@hostcompat
def test_the_recommendation_is_the_best_combined_score_and_states_it():
    # L = (0.40 - loss) / 0.20; S = (sim - 0.10) / 0.60; score = (L + S) / 2
    # epoch 2 at 1.0: L = 1.0, S = 0.40/0.60 → 0.8333; epoch 3 at 1.0: L = 0.9, S = 0.50/0.60 → 0.8667
    recommendation = recommend(four_epochs())
    best = recommendation.best
    assert (best.candidate.label, best.candidate.strength) == ("epoch 3", 1.0)
    assert best.score == pytest.approx(0.8666667)
    assert best.loss_term == pytest.approx(0.9) and best.similarity_term == pytest.approx(5 / 6)
    scores = {(s.candidate.label, s.candidate.strength): s.score for s in recommendation.scored}
    assert scores[("epoch 2", 1.0)] == pytest.approx(0.8333333)
    assert scores[("epoch 4", 1.0)] == pytest.approx(0.5)  # the most alike, but the worst loss
    assert max(scores.values()) == best.score
    assert recommendation.reason == ("epoch 3 at strength 1: validation loss (0.22000) and samples at similarity "
                                     "(0.600); combined score 0.867 of 1, the best of 8.")


@hostcompat
def test_without_comparable_losses_the_similarity_alone_decides_and_says_so():
    candidates = [Candidate(c.file, c.label, c.strength, None, c.similarity) for c in four_epochs()]
    recommendation = recommend(candidates)
    assert (recommendation.best.candidate.label, recommendation.best.score) == ("epoch 4", 1.0)
    assert all(s.loss_term is None for s in recommendation.scored)
    assert "not scored: validation loss" in recommendation.reason


@hostcompat
def test_equal_scores_prefer_the_strength_nearest_one_then_the_earlier_file():
    candidates = [Candidate(0, "a", 0.5, 0.1, 0.3), Candidate(0, "a", 1.0, 0.1, 0.3),
                  Candidate(1, "b", 1.0, 0.1, 0.3), Candidate(1, "b", 1.5, 0.1, 0.3)]
    best = recommend(candidates).best
    assert (best.candidate.label, best.candidate.strength, best.score) == ("a", 1.0, 1.0)


finite = st.floats(-10, 10, allow_nan=False)


@hostcompat
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), finite), finite), min_size=1, max_size=6),
       st.lists(st.sampled_from([0.5, 0.8, 1.0, 1.2]), min_size=1, max_size=3, unique=True))
def test_scores_lie_in_0_1_and_the_recommendation_has_the_highest(files, strengths):
    candidates = [Candidate(i, f"f{i}", s, loss, sim + s) for i, (loss, sim) in enumerate(files) for s in strengths]
    recommendation = recommend(candidates)
    scores = [scored.score for scored in recommendation.scored]
    assert all(0.0 <= score <= 1.0 + 1e-12 for score in scores)
    assert recommendation.best.score == max(scores)
    with_loss = all(loss is not None for loss, _ in files)
    assert all((scored.loss_term is not None) == with_loss for scored in recommendation.scored)


@hostcompat
def test_nothing_to_score_is_an_error():
    with pytest.raises(ValueError, match="nothing to score"):
        score_candidates([Candidate(0, "a", 1.0, None, None)])


# --- the similarity ------------------------------------------------------------------------------------------

images = st.builds(lambda seed, size: Image.fromarray(np.random.default_rng(seed).integers(
    0, 256, (size, size, 3), dtype=np.uint8)), st.integers(0, 2**16), st.sampled_from([8, 16, 24]))


@hostcompat
@settings(max_examples=40, deadline=None)
@given(images, images)
def test_the_statistic_is_a_unit_vector_whose_dot_is_half_colour_overlap_half_layout_correlation(a, b):
    va, vb = statistic_vector(a), statistic_vector(b)
    assert np.linalg.norm(va) == pytest.approx(1.0) and np.dot(va, va) == pytest.approx(1.0)
    assert -0.5 - 1e-9 <= float(np.dot(va, vb)) <= 1 + 1e-9
    assert np.dot(va, vb) == pytest.approx(np.dot(vb, va))


@hostcompat
def test_the_statistic_ranks_a_recoloured_copy_below_the_image_and_above_its_opposite():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
    reference = FeatureStatistic().embed([Image.fromarray(base)])
    same, tinted, inverted = (FeatureStatistic().embed([Image.fromarray(pixels)])
                              for pixels in (base, (base + 40).astype(np.uint8), 255 - base))
    assert similarity(reference, same) == pytest.approx(1.0)
    assert 1.0 > similarity(reference, tinted) > similarity(reference, inverted)
    # the mean over samples of each one's nearest reference
    two = np.concatenate([same, inverted])
    assert similarity(np.concatenate([reference, inverted]), two) == pytest.approx(1.0)


@hostcompat
def test_a_host_without_a_clip_vision_model_gets_the_statistic():
    class Host:
        pipeline = type("Pipeline", (), {"image_encoder": None})()

    assert image_embedder(Host()).name == STATISTIC_NAME
    assert image_embedder(object()).name == STATISTIC_NAME


@hostcompat
def test_a_host_with_a_clip_vision_model_gets_clip_embeddings():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=16, projection_dim=8)
    model = transformers.CLIPVisionModelWithProjection(config).eval()

    class Host:
        pipeline = type("Pipeline", (), {"image_encoder": model, "feature_extractor": None})()

    embedder = image_embedder(Host())
    assert embedder.name == CLIP_NAME
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    vectors = embedder.embed([picture, picture, Image.new("RGB", (40, 40), (0, 0, 255))])
    assert vectors.shape == (3, 8) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert similarity(vectors[:1], vectors[1:2]) == pytest.approx(1.0, abs=1e-5)


# --- the files ---------------------------------------------------------------------------------------------------


def lora_file(path: Path, **metadata: str) -> Path:
    """A minimal safetensors file (one tensor) with `metadata`."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(path), metadata=metadata)
    return path


def run_files(folder: Path, name: str = "run") -> list[Path]:
    """A run's saves: epochs 1-3 by name, the end (epoch 4) as `<name>`, with a card and preview for the end."""
    paths = [lora_file(folder / f"{name}-{e:06d}.safetensors", ss_epoch=str(e), ss_validation_loss=str(0.1 * e),
                       ss_validation_seed="0", ss_validation_timesteps="4") for e in (1, 2, 3)]
    paths.append(lora_file(folder / f"{name}.safetensors", ss_epoch="4", ss_validation_loss="0.5",
                           ss_validation_seed="0", ss_validation_timesteps="4"))
    (folder / f"{name}.json").write_text(json.dumps({"activation text": "zq"}), encoding="utf-8")
    (folder / f"{name}.preview.png").write_bytes(b"preview")
    (folder / f"{name}-000003.json").write_text("{}", encoding="utf-8")
    return paths


@hostcompat
def test_files_are_read_in_training_order_with_their_epochs_and_losses(tmp_path):
    paths = run_files(tmp_path)
    files = describe_files(list(reversed(paths)))
    assert [(f.label, f.validation_loss) for f in files] == [
        ("epoch 1", pytest.approx(0.1)), ("epoch 2", pytest.approx(0.2)), ("epoch 3", pytest.approx(0.3)),
        ("epoch 4", 0.5)]
    assert common_run_name(files) == "run"
    step = describe_file(lora_file(tmp_path / "x-step00000120.safetensors"))
    assert (step.epoch, step.step, step.label) == (None, 120, "step 120")


@hostcompat
@pytest.mark.parametrize("make, message", [
    (lambda d: [], "choose the LoRA files"),
    (lambda d: [lora_file(d / f"f{i}.safetensors") for i in range(17)], "at most 16"),
    (lambda d: [lora_file(d / "a" / "x.safetensors"), lora_file(d / "b" / "x.safetensors")], "both named 'x'"),
    (lambda d: [lora_file(d / "x.safetensors")] * 2, "listed twice"),
    (lambda d: [d / "x.pt"], "only .safetensors"),
])
def test_bad_file_lists_are_refused_with_the_reason(tmp_path, make, message):
    with pytest.raises(CompareError, match=message):
        describe_files(make(tmp_path))


@hostcompat
@pytest.mark.parametrize("values, key", [
    ({"prompts": ""}, "prompts"), ({"prompts": "a\nb\nc\nd\ne"}, "prompts"), ({"prompts": "a --w 4096"}, "prompts"),
    ({"strengths": ()}, "strengths"), ({"strengths": (1.0, 1.0)}, "strengths"), ({"strengths": (9.0,)}, "strengths"),
    ({"seed": -1}, "seed"), ({"width": 100}, "width"), ({"analyze": "some"}, "analyze"),
])
def test_bad_options_name_the_option(values, key):
    with pytest.raises(ConfigError) as error:
        CompareSpec(**{"prompts": "zq", **values})
    assert error.value.key == key


@hostcompat
def test_strengths_are_read_from_text():
    assert parse_strengths("0.6, 0.8,1") == (0.6, 0.8, 1.0)
    for bad in ("", "a", ",".join(["1"] * 7)):
        with pytest.raises(ConfigError, match="strengths"):
            parse_strengths(bad)


# --- keep one, move the others -----------------------------------------------------------------------------------


def contents(folder: Path) -> dict[str, str]:
    """{file name: sha256} of every file under `folder` (the names may move, the bytes must all be there)."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}


@hostcompat
def test_keep_renames_the_chosen_epoch_and_moves_every_other_file_with_its_cards(tmp_path):
    files = describe_files(run_files(tmp_path))
    before = sorted(contents(tmp_path).values())
    plan = apply_keep(plan_keep(files[2], files))  # epoch 3
    assert plan.kept == tmp_path / "run.safetensors"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "epochs/run-000001.safetensors", "epochs/run-000002.safetensors", "epochs/run-000004.json",
        "epochs/run-000004.preview.png", "epochs/run-000004.safetensors", "run.json", "run.safetensors"]
    assert sorted(contents(tmp_path).values()) == before  # every byte kept
    assert describe_file(tmp_path / "run.safetensors").epoch == 3
    assert describe_file(tmp_path / "epochs" / "run-000004.safetensors").epoch == 4
    assert json.loads((tmp_path / "epochs" / "run-000004.json").read_text())["activation text"] == "zq"


@hostcompat
def test_keeping_the_end_moves_only_the_epochs(tmp_path):
    files = describe_files(run_files(tmp_path))
    plan = apply_keep(plan_keep(files[3], files))
    assert [move.target.name for move in plan.moves] == ["run-000001.safetensors", "run-000002.safetensors",
                                                         "run-000003.safetensors", "run-000003.json"]
    assert (tmp_path / "run.safetensors").is_file() and (tmp_path / "run.json").is_file()


@hostcompat
def test_a_name_clash_is_refused_before_anything_moves(tmp_path):
    files = describe_files(run_files(tmp_path))
    lora_file(tmp_path / "epochs" / "run-000002.safetensors")
    before = contents(tmp_path)
    with pytest.raises(CompareError, match="nothing moved: .*run-000002.safetensors already exists"):
        plan_keep(files[2], files)
    assert contents(tmp_path) == before


@hostcompat
def test_a_failing_move_is_undone(tmp_path, monkeypatch):
    files = describe_files(run_files(tmp_path))
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    plan = plan_keep(files[2], files)
    real, calls = keep_module._rename_new, []

    def failing(source: Path, target: Path) -> None:
        calls.append(source)
        if len(calls) == 4:
            raise PermissionError(13, "Permission denied", str(target))
        real(source, target)

    monkeypatch.setattr(keep_module, "_rename_new", failing)
    with pytest.raises(CompareError, match="nothing moved: .* could not be moved .*Permission denied"):
        apply_keep(plan)
    assert {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()} == before


@hostcompat
def test_files_from_two_folders_are_not_moved(tmp_path):
    files = describe_files([lora_file(tmp_path / "a" / "run-000001.safetensors"),
                            lora_file(tmp_path / "b" / "run.safetensors")])
    with pytest.raises(CompareError, match="must share one folder"):
        plan_keep(files[0], files)
