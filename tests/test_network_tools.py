"""lib_lora.networks.tools: info, resize (exact SVD maths, sd-scripts' rank rules), merge, bake, extract.

Random LoRAs sit on the targets of a tiny SD1 original-format checkpoint (indexed through the module tree
synthesised from its tensor names, which a test checks against the real tiny models). Everything but the
diffusers cross-check runs in the A1111 environment too.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lib_lora.errors import LoraFormatError
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import load_lora_file, read_header, save_lora_file, save_safetensors_file
from lib_lora.networks.formats import parse_modules
from lib_lora.networks.keys import build_target_index_for
from lib_lora.networks.loaded import as_applied, load_network, network_from_state_dict
from lib_lora.networks.metadata import LoraMetadata
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.networks.tools import (
    OPERATION_KEY,
    NetworkToolError,
    RankRule,
    bake_into_checkpoint,
    check_output_path,
    checkpoint_arch,
    checkpoint_index,
    extract_lora,
    flatten,
    infer_arch_from_keys,
    load_checkpoint,
    merge_networks,
    network_info,
    resize_lora_file,
    resize_network,
)
from lib_lora.networks.tools.deltas import module_delta
from lib_lora.tiny.checkpoint import tiny_sd1_checkpoint_state_dict
from lib_lora.tiny.clip import build_tiny_text_encoder
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet
from lib_lora.tiny.openclip import build_tiny_openclip_text_model

pytestmark = pytest.mark.hostcompat

RESIZABLE = ("lora", "locon", "loha", "lokr", "full")


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_tensors() -> dict[str, torch.Tensor]:
    return tiny_sd1_checkpoint_state_dict(0)


@pytest.fixture(scope="module")
def sd1_index(sd1_tensors):
    return checkpoint_index(sd1_tensors, "sd1")


@pytest.fixture(scope="module")
def sd1_checkpoint(sd1_tensors, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "base.safetensors"
    save_safetensors_file(path, sd1_tensors, {"format": "pt"})
    return path


def _lora(index, kind="lora", *, rank=4, alpha=None, seed=0, roots=("unet", "te1", "te2")):
    return parse_modules(random_lora_state_dict(index, kind=kind, rank=rank, alpha=alpha, seed=seed, roots=roots))


def _scaled(module) -> torch.Tensor:
    return module_delta(module).to(torch.float64) * module.scale


def _save_lora(path, index, kind="lora", *, rank=4, alpha=None, seed=0, metadata=None, roots=("unet", "te1")):
    state = random_lora_state_dict(index, kind=kind, rank=rank, alpha=alpha, seed=seed, roots=roots)
    save_lora_file(path, state, metadata or LoraMetadata(arch="sd1", network_dim=rank,
                                                         network_alpha=float(alpha or rank)).to_metadata())
    return path


# --- checkpoint key mapping --------------------------------------------------------------------------------------


def _describe(index):
    return sorted((t.key, t.root, t.module_path, t.param_name, (t.rows.start, t.rows.stop) if t.rows else None,
                   tuple(t.shape), t.block) for t in index.targets())


def test_checkpoint_tree_indexes_like_the_real_sdxl_models():
    unet, te1, te2 = build_tiny_ldm_unet("sdxl", 0), build_tiny_text_encoder(1), build_tiny_openclip_text_model(2)
    tensors = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    tensors |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in te1.state_dict().items()}
    tensors |= {f"conditioner.embedders.1.model.{k}": v for k, v in te2.state_dict().items()}
    assert checkpoint_arch(tensors) == "sdxl"
    synthesised = checkpoint_index(tensors, "sdxl")
    assert _describe(synthesised) == _describe(build_target_index_for(unet, "ldm", [te1, te2], "sdxl"))
    k = synthesised.lookup("lora_te2_text_model_encoder_layers_0_self_attn_k_proj")
    fused = tensors["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert k.rows == slice(32, 64) and torch.equal(k.weight, fused[k.rows])
    with torch.no_grad():
        k.weight.add_(1.0)
    assert torch.equal(k.weight, fused[k.rows])  # the checkpoint's own tensor, not a copy


def test_checkpoint_tree_indexes_like_the_real_sd1_models(sd1_tensors, sd1_index):
    unet, te = build_tiny_ldm_unet("sd1", 0), build_tiny_text_encoder(2)
    assert checkpoint_arch(sd1_tensors) == "sd1"
    assert _describe(sd1_index) == _describe(build_target_index_for(unet, "ldm", [te], "sd1"))


def test_a_file_without_a_unet_is_no_checkpoint():
    with pytest.raises(NetworkToolError, match="not an original-format"):
        checkpoint_arch({"unet.conv_in.weight": torch.zeros(1)})


# --- rank rules --------------------------------------------------------------------------------------------------

SINGULAR = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])


@pytest.mark.parametrize(("rule", "expected"), [
    (RankRule(rank=3), 3),
    (RankRule(rank=9), 5),
    (RankRule(sv_ratio=4), 3),  # s >= 8/4 = 2
    (RankRule(sv_ratio=1), 1),
    (RankRule(sv_fro=0.9), 2),  # sqrt(64+16)/sqrt(85.25) = 0.969 >= 0.9; sqrt(64/85.25) = 0.866 < 0.9
    (RankRule(sv_fro=0.97), 3),
    (RankRule(sv_fro=1.0), 5),
    (RankRule(sv_cumulative=0.5), 1),  # 8/15.5 = 0.516
    (RankRule(sv_cumulative=0.8), 3),  # 12/15.5 = 0.774, 14/15.5 = 0.903
])
def test_rank_rules_have_sd_scripts_meanings(rule, expected):
    assert rule.choose(SINGULAR, cap=99) == expected
    assert rule.choose(SINGULAR, cap=2) == min(expected, 2)
    assert rule.choose(torch.zeros(5), cap=99) == 1  # a zero ΔW keeps rank 1, as sd-scripts


@pytest.mark.parametrize("kwargs", [{}, {"rank": 2, "sv_fro": 0.5}, {"rank": 0}, {"sv_ratio": 0.5},
                                    {"sv_fro": 1.5}, {"sv_cumulative": 0.0}, {"rank": 2.5}, {"sv_fro": math.nan}])
def test_bad_rank_rules_are_named(kwargs):
    with pytest.raises(NetworkToolError):
        RankRule(**kwargs)


# --- resize ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RESIZABLE)
def test_resizing_to_full_rank_reproduces_the_delta(sd1_index, kind):
    modules = _lora(sd1_index, kind, rank=3, alpha=1.5, roots=("unet",))
    resized, report = resize_network(modules, rank=10_000)
    new = parse_modules(flatten(resized))
    assert set(new) == set(modules) and all(m.format == "lora" for m in new.values())
    for key, module in modules.items():
        before, after = _scaled(module), _scaled(new[key]).reshape(_scaled(module).shape)
        assert torch.allclose(after, before, rtol=1e-5, atol=1e-6 * before.abs().max()), key
    assert all(row.fro_retained == pytest.approx(1.0) for row in report.modules)


@pytest.mark.parametrize("kind", RESIZABLE)
def test_resizing_down_loses_exactly_the_tail_singular_values(sd1_index, kind):
    modules = _lora(sd1_index, kind, rank=4, alpha=2.0, seed=1, roots=("unet",))
    resized, report = resize_network(modules, rank=2)
    new = parse_modules(flatten(resized))
    for row in report.modules:
        before = _scaled(modules[row.key])
        matrix = before.reshape(before.shape[0], -1)
        s = torch.linalg.svdvals(matrix)
        after = _scaled(new[row.key]).reshape(matrix.shape)
        error = float(((after - matrix) ** 2).sum())
        assert error == pytest.approx(float((s[row.new_rank:] ** 2).sum()), rel=1e-4, abs=1e-9 * float(s[0] ** 2))
        assert row.fro_retained == pytest.approx(float(s[: row.new_rank].norm() / s.norm()), rel=1e-6)
        assert row.new_rank == min(2, *matrix.shape)


def test_resize_keeps_the_alpha_rank_ratio_and_conv_shapes(sd1_index):
    modules = _lora(sd1_index, "locon", rank=8, alpha=4.0, roots=("unet",))
    snapshot = {k: {s: t.clone() for s, t in m.tensors.items()} for k, m in modules.items()}
    resized, report = resize_network(modules, rank=2)
    conv = next(k for k, m in modules.items() if m.tensors["lora_down.weight"].dim() == 4
                and m.tensors["lora_down.weight"].shape[2] == 3)
    out, c_in = modules[conv].tensors["lora_up.weight"].shape[0], modules[conv].tensors["lora_down.weight"].shape[1]
    assert tuple(resized[conv]["lora_down.weight"].shape) == (2, c_in, 3, 3)
    assert tuple(resized[conv]["lora_up.weight"].shape) == (out, 2, 1, 1)
    assert all(float(t["alpha"]) == pytest.approx(1.0) for t in resized.values())  # 4/8 · 2
    assert {row.old_rank for row in report.modules} == {8}
    for key, module in modules.items():  # the input is untouched
        assert all(torch.equal(module.tensors[s], snapshot[key][s]) for s in snapshot[key])


def test_dynamic_resize_caps_at_the_modules_own_rank(sd1_index):
    modules = _lora(sd1_index, "lora", rank=3, roots=("te1",))
    _, report = resize_network(modules, sv_ratio=1e9)
    assert {row.new_rank for row in report.modules} == {3}
    _, report = resize_network(modules, sv_fro=0.5)
    assert all(1 <= row.new_rank <= 3 for row in report.modules)


def test_loha_convs_come_back_with_their_kernel(sd1_index):
    modules = _lora(sd1_index, "loha", rank=2, roots=("unet",))
    modules |= parse_modules({f"lora_unet_down_blocks_0_resnets_0_conv1.{k}": v for k, v in
                              _conv_loha(out=32, fan_in=32 * 9).items()})
    resized, _ = resize_network(modules, rank=3)
    assert resized["lora_unet_down_blocks_0_resnets_0_conv1"]["lora_down.weight"].shape == (3, 32, 3, 3)


def _conv_loha(out: int, fan_in: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"hada_w1_a": torch.randn(out, 2, generator=g), "hada_w1_b": torch.randn(2, fan_in, generator=g),
            "hada_w2_a": torch.randn(out, 2, generator=g), "hada_w2_b": torch.randn(2, fan_in, generator=g),
            "alpha": torch.tensor(2.0)}


def test_dora_is_not_resized(sd1_index):
    with pytest.raises(NetworkToolError, match="DoRA"):
        resize_network(_lora(sd1_index, "dora", roots=("te1",)), rank=2)


def test_resized_file_metadata_says_what_was_done(sd1_index, tmp_path):
    source = _save_lora(tmp_path / "a.safetensors", sd1_index, "loha", rank=4, alpha=2.0)
    report = resize_lora_file(source, tmp_path / "b.safetensors", rank=2)
    header = read_header(tmp_path / "b.safetensors").metadata
    assert header["ss_network_dim"] == "2" and header["ss_network_alpha"] == "1.0"
    assert header["ss_network_module"] == "networks.lora" and "ss_network_args" not in header
    assert header[OPERATION_KEY].startswith("resized by LoRA Studio with rank 2 from loha rank 4")
    assert header["ss_training_comment"].startswith(header[OPERATION_KEY])
    assert header["ss_base_model_version"] == "sd_v1"
    assert header["sshs_model_hash"] != read_header(source).metadata["sshs_model_hash"]
    assert load_network(tmp_path / "b.safetensors").format == "lora" and len(report.modules) > 0


# --- merge -------------------------------------------------------------------------------------------------------


def test_concat_merge_is_exact(sd1_index):
    a = _lora(sd1_index, "locon", rank=3, alpha=1.0, seed=1)
    b = _lora(sd1_index, "lora", rank=2, alpha=4.0, seed=2, roots=("unet",))
    state = merge_networks([(a, 0.7), (b, -0.3)])
    merged = parse_modules(state)
    assert set(merged) == set(a) | set(b)
    for key, module in merged.items():
        expected = sum(r * _scaled(m[key]) for m, r in ((a, 0.7), (b, -0.3)) if key in m)
        got = _scaled(module).reshape(expected.shape)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max())), key
        assert module.alpha == module.rank == a[key].rank + (b[key].rank if key in b else 0)


def test_svd_merge_is_the_best_rank_r_approximation(sd1_index):
    a = _lora(sd1_index, "lora", rank=3, seed=3, roots=("te1",))
    b = _lora(sd1_index, "loha", rank=2, seed=4, roots=("te1",))
    merged = parse_modules(merge_networks([(a, 1.0), (b, 0.5)], rank=2))
    for key, module in merged.items():
        total = _scaled(a[key]) + 0.5 * _scaled(b[key])
        s = torch.linalg.svdvals(total)
        error = float(((_scaled(module) - total) ** 2).sum())
        assert module.rank == 2 and module.scale == 1.0
        assert error == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-4)


def test_merge_refuses_what_it_cannot_do_exactly(sd1_index):
    with pytest.raises(NetworkToolError, match="--rank"):
        merge_networks([(_lora(sd1_index, "lokr", roots=("te1",)), 1.0)])
    with pytest.raises(NetworkToolError, match="DoRA"):
        merge_networks([(_lora(sd1_index, "dora", roots=("te1",)), 1.0)], rank=2)


# --- bake and extract --------------------------------------------------------------------------------------------


def test_bake_equals_merging_into_the_loaded_checkpoint(sd1_checkpoint, sd1_index, tmp_path):
    lora_a = _save_lora(tmp_path / "a.safetensors", sd1_index, "locon", rank=3, seed=7)
    lora_b = _save_lora(tmp_path / "b.safetensors", sd1_index, "loha", rank=2, seed=8)
    state = load_lora_file(lora_b).tensors | {"lora_unet_nowhere.lora_up.weight": torch.ones(2, 1),
                                               "lora_unet_nowhere.lora_down.weight": torch.ones(1, 2)}
    save_lora_file(lora_b, state, {})
    out = tmp_path / "baked.safetensors"
    report = bake_into_checkpoint(sd1_checkpoint, [(lora_a, 0.8), (lora_b, -0.5)], out)
    assert report.arch == "sd1" and report.loras[1].unmatched == ("lora_unet_nowhere",)

    expected = load_checkpoint(sd1_checkpoint)
    loras = [as_applied(load_network(path), te_multiplier=ratio, unet_multiplier=ratio)
             for path, ratio in ((lora_a, 0.8), (lora_b, -0.5))]
    WeightMerger(expected.index).apply(loras)
    baked = load_lora_file(out, max_bytes=2**40)
    assert set(baked.tensors) == set(expected.tensors)
    for name, tensor in expected.tensors.items():  # the same sums, up to float32 rounding order
        assert torch.allclose(baked.tensors[name], tensor, rtol=1e-6, atol=1e-7), name
    metadata = read_header(out).metadata
    assert metadata["format"] == "pt" and [e["name"] for e in json.loads(metadata["lora_studio_baked"])] == [
        "a.safetensors", "b.safetensors"]


def test_bake_reaches_open_clip_rows_in_an_sdxl_checkpoint(tmp_path):
    unet, te1, te2 = build_tiny_ldm_unet("sdxl", 0), build_tiny_text_encoder(1), build_tiny_openclip_text_model(2)
    tensors = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    tensors |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in te1.state_dict().items()}
    tensors |= {f"conditioner.embedders.1.model.{k}": v for k, v in te2.state_dict().items()}
    checkpoint = tmp_path / "xl.safetensors"
    save_safetensors_file(checkpoint, tensors, {})
    index = checkpoint_index(dict(tensors), "sdxl")
    lora = tmp_path / "xl_lora.safetensors"
    save_lora_file(lora, random_lora_state_dict(index, rank=2, seed=3, roots=("te2",)), {})
    bake_into_checkpoint(checkpoint, [(lora, 1.0)], tmp_path / "out.safetensors")
    baked = load_lora_file(tmp_path / "out.safetensors", max_bytes=2**40).tensors
    name = "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"
    modules = load_network(lora).modules
    width = tensors[name].shape[1]
    for i, part in enumerate("qkv"):  # each q/k/v module lands on its own third of the fused weight
        rows = slice(i * width, (i + 1) * width)
        module = modules[f"lora_te2_text_model_encoder_layers_1_self_attn_{part}_proj"]
        expected = tensors[name][rows] + module.delta_weight(tensors[name][rows])
        assert torch.allclose(baked[name][rows], expected, rtol=1e-6, atol=1e-7), part
    assert torch.equal(baked["model.diffusion_model.out.2.weight"], tensors["model.diffusion_model.out.2.weight"])


def test_bake_refuses_a_lora_of_another_family(sd1_checkpoint, tmp_path):
    lora = tmp_path / "xl.safetensors"
    save_lora_file(lora, {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(4, 1),
                          "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(1, 4)}, {})
    with pytest.raises(NetworkToolError, match="none of its 1 modules"):
        bake_into_checkpoint(sd1_checkpoint, [(lora, 1.0)], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_bake_names_the_lora_whose_module_does_not_fit(sd1_checkpoint, tmp_path):
    lora = tmp_path / "bad.safetensors"
    save_lora_file(lora, {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(5, 1),
                          "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(1, 3)}, {})
    with pytest.raises(LoraFormatError) as caught:
        bake_into_checkpoint(sd1_checkpoint, [(lora, 1.0)], tmp_path / "out.safetensors")
    assert caught.value.path == lora and caught.value.key == "lora_te_text_model_encoder_layers_0_mlp_fc1"


def test_extract_recovers_a_known_low_rank_delta(sd1_checkpoint, sd1_index, tmp_path):
    lora = _save_lora(tmp_path / "known.safetensors", sd1_index, "locon", rank=2, alpha=1.0, seed=11)
    tuned = tmp_path / "tuned.safetensors"
    bake_into_checkpoint(sd1_checkpoint, [(lora, 1.0)], tuned)
    known = load_network(lora).modules
    state, report = extract_lora(sd1_checkpoint, tuned, rank=3)
    extracted = parse_modules(state)
    assert set(extracted) == set(known) and report.unchanged > 0 and not report.missing
    for key, module in known.items():
        target = sd1_index.lookup(key)
        expected = module.delta_weight(target.weight)
        got = extracted[key].delta_weight(target.weight)
        assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()) + 1e-6), key
        assert extracted[key].rank <= 3 and extracted[key].scale == 1.0
    low, low_report = extract_lora(sd1_checkpoint, tuned, rank=1)
    assert low_report.mean_fro_retained < 1.0 - 1e-4


def test_extract_refuses_identical_checkpoints(sd1_checkpoint):
    with pytest.raises(NetworkToolError, match="no weight differs"):
        extract_lora(sd1_checkpoint, sd1_checkpoint, rank=2)


# --- info --------------------------------------------------------------------------------------------------------


def test_info_reads_the_file_alone(sd1_index, tmp_path):
    metadata = LoraMetadata(arch="sd1", network_dim=4, network_alpha=4.0, tag_frequency={
        "10_a": {"1girl": 5, "solo": 3}, "5_b": {"1girl": 2, "cat": 4}}).to_metadata()
    state = random_lora_state_dict(sd1_index, kind="locon", rank=4, seed=2, roots=("unet", "te1"))
    state |= {"lora_unet_input_blocks_12_0_in_layers_2.lora_up.weight": torch.ones(3, 1, 1, 1),
              "lora_unet_input_blocks_12_0_in_layers_2.lora_down.weight": torch.ones(1, 3, 3, 3),
              "lora_unet_time_embedding_linear_1.diff": torch.ones(2, 2), "lora_unet_mystery.diff": torch.ones(2, 2),
              "lora_te2_text_model_encoder_layers_0_mlp_fc1.diff": torch.ones(2, 2)}
    path = tmp_path / "x.safetensors"
    save_lora_file(path, state, metadata)
    info = network_info(path)
    data = info.to_json()
    assert list(data) == ["format", "arch", "modules", "unmatched", "metadata"]
    assert data["format"] == "full" and data["arch"] == "sd1"
    assert all(list(m) == ["key", "block", "rank", "alpha"] for m in data["modules"])
    blocks = {m["key"]: m["block"] for m in data["modules"]}
    assert blocks["lora_unet_down_blocks_0_resnets_0_conv1"] == "IN01"
    assert blocks["lora_te_text_model_encoder_layers_0_mlp_fc1"] == "BASE"
    assert blocks["lora_unet_time_embedding_linear_1"] == "time_embed" and blocks["lora_unet_mystery"] is None
    assert sorted(data["unmatched"]) == ["lora_te2_text_model_encoder_layers_0_mlp_fc1",
                                         "lora_unet_input_blocks_12_0_in_layers_2", "lora_unet_mystery"]
    assert data["metadata"]["ss_tag_frequency"]["10_a"]["1girl"] == 5
    assert info.top_tags() == [("1girl", 7), ("cat", 4), ("solo", 3)]
    json.dumps(data)
    text = info.to_text()
    assert "arch: sd1 (from metadata)" in text and "top tags: 1girl (7), cat (4), solo (3)" in text


@pytest.mark.parametrize(("keys", "arch"), [
    (["lora_te1_text_model_encoder_layers_0_mlp_fc1"], "sdxl"),
    (["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"], "sdxl"),
    (["lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q"], "sdxl"),
    (["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"], "sd1"),
    (["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"], "sd1"),
    (["lora_te_text_model_encoder_layers_20_mlp_fc1"], "sd2"),
    (["something_else"], None),
])
def test_family_from_keys(keys, arch):
    state = {}
    for key in keys:
        state |= {f"{key}.lora_up.weight": torch.ones(2, 1), f"{key}.lora_down.weight": torch.ones(1, 2)}
    assert infer_arch_from_keys(network_from_state_dict(state, name="x").modules) == arch


def test_outputs_never_replace_inputs_or_existing_files(tmp_path):
    source = tmp_path / "a.safetensors"
    source.write_bytes(b"x")
    with pytest.raises(NetworkToolError, match="input"):
        check_output_path(tmp_path / "." / "a.safetensors", [source], overwrite=True)
    with pytest.raises(NetworkToolError, match="--force"):
        check_output_path(source, [], overwrite=False)
    with pytest.raises(NetworkToolError, match=".safetensors"):
        check_output_path(tmp_path / "b.pt", [source])
    with pytest.raises(NetworkToolError, match="does not exist"):
        check_output_path(tmp_path / "no" / "b.safetensors", [source])
    assert check_output_path(source, [], overwrite=True) == source
