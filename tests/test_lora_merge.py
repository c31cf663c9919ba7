"""LoRA merging by method (concat, svd, dare, ties): the rules' maths as properties on tiny tensors, the merged
networks against their ΔWs, the file's record of its sources, and `lora merge --method` end to end."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.cli.main import main
from lib_lora.networks.files import read_header, save_lora_file
from lib_lora.networks.formats import parse_modules
from lib_lora.networks.loaded import load_network
from lib_lora.networks.metadata import LoraMetadata
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.networks.tools import (
    MERGE_KEY,
    MergeOptions,
    NetworkToolError,
    checkpoint_index,
    merge_lora_files,
    merge_modules,
)
from lib_lora.networks.tools.deltas import module_delta
from lib_lora.networks.tools.merge_methods import (
    combine,
    dare,
    elect_signs,
    module_generator,
    ties,
    trim,
    weighted_sum,
)
from lib_lora.tiny.checkpoint import tiny_sd1_checkpoint_state_dict

pytestmark = pytest.mark.hostcompat


@pytest.fixture(scope="module")
def sd1_index():
    return checkpoint_index(tiny_sd1_checkpoint_state_dict(0), "sd1")


def _lora(index, kind="lora", *, rank=4, alpha=None, seed=0, roots=("unet", "te1")):
    return parse_modules(random_lora_state_dict(index, kind=kind, rank=rank, alpha=alpha, seed=seed, roots=roots))


def _scaled(module) -> torch.Tensor:
    return module_delta(module).to(torch.float64) * module.scale


def _expected(parts, key) -> torch.Tensor:
    return sum(r * _scaled(m[key]) for m, r in parts if key in m)


# --- the rules on tensors ----------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 5), st.integers(1, 6))
SOURCES = st.integers(1, 4)
finite = st.floats(-4, 4, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def delta_stacks(draw, count=SOURCES):
    """1–4 tensors of one small shape with entries in [-4, 4]."""
    rows, cols = draw(shapes)
    n = draw(count)
    values = draw(st.lists(st.lists(finite, min_size=rows * cols, max_size=rows * cols), min_size=n, max_size=n))
    return [torch.tensor(v, dtype=torch.float64).reshape(rows, cols) for v in values]


@settings(max_examples=40, deadline=None)
@given(deltas=delta_stacks(), seed=st.integers(0, 2**32))
def test_dare_at_density_1_is_the_plain_weighted_sum(deltas, seed):
    assert torch.equal(dare(deltas, 1.0, module_generator(seed, "k")), weighted_sum(deltas))


@settings(max_examples=25, deadline=None)
@given(deltas=delta_stacks(), density=st.floats(0.2, 1.0), seed=st.integers(0, 2**20))
def test_dare_rescaling_keeps_the_expected_delta(deltas, density, seed):
    """Over N seeds the mean of DARE's result is Σ τᵢ within 6 standard errors: per entry the variance of one
    draw is Σ τᵢ²·(1 − p)/p, so the mean's is that over N."""
    draws = 3000
    total = torch.zeros_like(deltas[0])
    for offset in range(draws):
        total += dare(deltas, density, module_generator(seed + offset, "lora_unet_x"))
    mean = total / draws
    expected = weighted_sum(deltas)
    spread = torch.sqrt(sum(d**2 for d in deltas) * (1 - density) / density / draws)
    assert bool(((mean - expected).abs() <= 6 * spread + 1e-9).all())


def test_dare_drops_about_the_density_and_is_reproducible():
    delta = torch.ones(200, 200, dtype=torch.float64)
    kept = dare([delta], 0.3, module_generator(7, "key"))
    assert set(kept.unique().tolist()) <= {0.0, 1 / 0.3}
    assert (kept != 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(kept, dare([delta], 0.3, module_generator(7, "key")))
    assert not torch.equal(kept, dare([delta], 0.3, module_generator(8, "key")))
    assert not torch.equal(kept, dare([delta], 0.3, module_generator(7, "other")))


@settings(max_examples=60, deadline=None)
@given(deltas=delta_stacks(), density=st.floats(0.05, 1.0))
def test_ties_elects_the_sign_of_the_sum_and_averages_the_agreeing_entries(deltas, density):
    trimmed = [trim(d, density) for d in deltas]
    signs = elect_signs(trimmed)
    assert torch.equal(signs, torch.sign(sum(trimmed)))
    merged = ties(deltas, density)
    for index in range(merged.numel()):
        values = [float(t.reshape(-1)[index]) for t in trimmed]
        elected = float(signs.reshape(-1)[index])
        agreeing = [v for v in values if v != 0 and math.copysign(1, v) == elected]
        expected = sum(agreeing) / len(agreeing) if agreeing and elected != 0 else 0.0
        got = float(merged.reshape(-1)[index])
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert elected == 0 or got == 0 or math.copysign(1, got) == elected  # the other sign is dropped


@settings(max_examples=60, deadline=None)
@given(deltas=delta_stacks(count=st.just(1)), density=st.floats(0.05, 1.0))
def test_trim_keeps_the_largest_entries(deltas, density):
    delta = deltas[0]
    kept = trim(delta, density)
    count = min(delta.numel(), max(1, math.ceil(density * delta.numel())))
    kept_mask = kept != 0
    assert int(kept_mask.sum()) <= count
    assert torch.equal(kept[kept_mask], delta[kept_mask])
    if count < delta.numel():
        dropped = delta[~kept_mask].abs()
        smallest_kept = kept.abs()[kept_mask].min() if kept_mask.any() else torch.tensor(0.0, dtype=delta.dtype)
        assert bool((dropped <= smallest_kept).all())


def test_ties_of_one_agreeing_pair_is_their_mean_and_conflicts_keep_the_heavier_side():
    a = torch.tensor([[1.0, -2.0, 3.0]])
    b = torch.tensor([[3.0, 1.0, -4.0]])
    assert torch.equal(ties([a, b], 1.0), torch.tensor([[2.0, -2.0, -4.0]]))
    assert torch.equal(combine("svd", [a, b]), a + b)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "mean"}, "unknown merge method"),
    ({"method": "dare", "density": 0.0}, "density"),
    ({"method": "ties", "density": 1.5}, "density"),
    ({"method": "svd", "density": 0.5}, "--density is for dare and ties"),
    ({"method": "concat", "rank": 4}, "--rank is for svd"),
    ({"method": "svd", "rank": 0}, "rank"),
    ({"method": "dare", "seed": -1}, "seed"),
])
def test_bad_merge_options_are_named(kwargs, message):
    with pytest.raises(NetworkToolError, match=message):
        MergeOptions(**kwargs)


# --- networks ----------------------------------------------------------------------------------------------------


def test_dare_at_density_1_merges_like_svd(sd1_index):
    parts = [(_lora(sd1_index, seed=1), 0.7), (_lora(sd1_index, "loha", rank=2, seed=2), -0.4)]
    plain = merge_modules(parts, MergeOptions("svd", rank=3)).state
    dared = merge_modules(parts, MergeOptions("dare", density=1.0, seed=5, rank=3)).state
    assert plain.keys() == dared.keys()
    assert all(torch.equal(plain[k], dared[k]) for k in plain)


def test_concat_is_exact_and_svd_at_full_rank_is_exact(sd1_index):
    parts = [(_lora(sd1_index, "locon", rank=3, alpha=1.0, seed=1), 0.7), (_lora(sd1_index, rank=2, seed=2), -0.3)]
    for method in ("concat", "svd"):
        result = merge_modules(parts, MergeOptions(method))
        merged = parse_modules(result.state)
        assert set(merged) == set(parts[0][0])
        for key, module in merged.items():
            expected = _expected(parts, key)
            got = _scaled(module).reshape(expected.shape)
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max())), (method, key)
        assert all(error < 1e-5 for error in result.errors.values())
        assert (method == "concat") == (not result.errors)


@pytest.mark.parametrize("method", ["svd", "dare", "ties"])
def test_loha_and_lokr_merge_through_their_full_delta(sd1_index, method):
    parts = [(_lora(sd1_index, "loha", rank=2, seed=3), 1.0), (_lora(sd1_index, "lokr", rank=2, seed=4), 0.5)]
    options = MergeOptions(method, density=1.0 if method == "svd" else 0.6, seed=1, rank=2)
    result = merge_modules(parts, options)
    merged = parse_modules(result.state)
    assert merged and all(m.format == "lora" and m.rank <= 2 for m in merged.values())
    assert set(result.errors) == set(merged) and all(0 <= e <= 1 for e in result.errors.values())
    if method == "svd":
        for key, module in merged.items():
            expected = _expected(parts, key).reshape(module.up.shape[0], -1)
            s = torch.linalg.svdvals(expected)
            tail = math.sqrt(float((s[2:] ** 2).sum()) / float((s**2).sum()))
            assert result.errors[key] == pytest.approx(tail, rel=1e-4, abs=1e-7)


def test_concat_refuses_loha_and_lokr_with_a_way_out(sd1_index):
    for kind in ("loha", "lokr"):
        with pytest.raises(NetworkToolError, match=r"cannot be concatenated.*--method svd, dare or ties"):
            merge_modules([(_lora(sd1_index, kind, rank=2), 1.0)], MergeOptions("concat"))


# --- files and the command line ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_files(sd1_index, tmp_path_factory):
    folder = tmp_path_factory.mktemp("merge")
    paths = []
    for name, kind, seed in (("a", "lora", 1), ("b", "loha", 2)):
        path = folder / f"{name}.safetensors"
        state = random_lora_state_dict(sd1_index, kind=kind, rank=2, seed=seed, roots=("unet", "te1"))
        save_lora_file(path, state, LoraMetadata(arch="sd1", network_dim=2, network_alpha=2.0).to_metadata())
        paths.append(path)
    return paths


def test_merged_file_records_its_sources_and_method(lora_files, tmp_path):
    out = tmp_path / "m.safetensors"
    summary = merge_lora_files(lora_files, [1.0, 0.5], out, options=MergeOptions("dare", density=0.5, seed=9, rank=3))
    metadata = read_header(out).metadata
    record = json.loads(metadata[MERGE_KEY])
    assert (record["method"], record["density"], record["seed"], record["rank"]) == ("dare", 0.5, 9, 3)
    assert record["sources"] == [{"name": p.name, "sshs_model_hash": load_network(p).identity, "weight": w}
                                 for p, w in zip(lora_files, (1.0, 0.5))]
    assert metadata["ss_network_dim"] == "3" and metadata["ss_base_model_version"].startswith("sd_v1")
    assert "dare (density 0.5, seed 9)" in metadata["ss_training_comment"]
    assert summary.method == "dare" and len(summary.errors) == summary.modules and summary.max_error > 0
    again = tmp_path / "again.safetensors"
    merge_lora_files(lora_files, [1.0, 0.5], again, options=MergeOptions("dare", density=0.5, seed=9, rank=3))
    first, second = load_network(out), load_network(again)
    assert first.identity == second.identity  # the same seed gives the same bytes


def run(*argv: object) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["lora", *map(str, argv)], out=out)
    return code, out.getvalue()


def test_cli_merge_methods(lora_files, tmp_path, capsys):
    code, text = run("merge", *lora_files, "--method", "ties", "--density", "0.5", "--rank", "2", "-o",
                     tmp_path / "t.safetensors")
    assert code == 0 and "by ties (density 0.5)" in text and "relative error" in text, text
    code, text = run("merge", *lora_files, "--method", "svd", "-o", tmp_path / "s.safetensors")
    assert code == 0 and "by svd" in text, text
    assert run("merge", *lora_files, "--method", "concat", "-o", tmp_path / "c.safetensors")[0] == 2
    assert "--method svd, dare or ties" in capsys.readouterr().err
    assert run("merge", *lora_files, "--density", "0.5", "-o", tmp_path / "d.safetensors")[0] == 2
    assert "--density is for dare and ties" in capsys.readouterr().err
