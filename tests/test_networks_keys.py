"""kohya keys <-> host modules: path tables, the target index over both UNet layouts, HF CLIP and open_clip encoders.

Tiny models have the real block structure, so their key names are the real ones; the full-size SD1.5/SDXL UNets
are built on the meta device (no memory) to check counts and keys from real files.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lib_lora.arch import SD1, SD2, SDXL
from lib_lora.errors import HostError
from lib_lora.networks.keys import (
    Target,
    TargetIndex,
    build_target_index,
    build_target_index_for,
    diffusers_to_ldm_unet_path,
    kohya_name,
    ldm_to_diffusers_unet_path,
    resolve_ldm_unet_path,
    te_path_to_hf,
)
from lib_lora.tiny.clip import build_tiny_text_encoder
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet
from lib_lora.tiny.openclip import TinyOpenCLIPTextModel, build_tiny_openclip_text_model, openclip_from_hf

pytestmark = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.fixtures",)  # a1111_host, sd_model, standin_arch, webui, webui_opts


# --- fixtures: tiny models, built once ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ldm_unets() -> dict[str, nn.Module]:
    return {arch: build_tiny_ldm_unet(arch) for arch in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="module")
def hf_encoders() -> dict[str, nn.Module]:
    return {"l": build_tiny_text_encoder(2), "g": build_tiny_text_encoder(3, with_projection=True)}


@pytest.fixture(scope="module")
def openclip_g(hf_encoders: dict[str, nn.Module]) -> TinyOpenCLIPTextModel:
    return openclip_from_hf(hf_encoders["g"])


@pytest.fixture(scope="module")
def diffusers_unets() -> dict[str, nn.Module]:
    pytest.importorskip("diffusers")
    from diffusers import UNet2DConditionModel

    from lib_lora.tiny.diffusers_models import TINY_SD1_UNET, TINY_SDXL_UNET

    return {"sd1": UNet2DConditionModel(**TINY_SD1_UNET), "sdxl": UNet2DConditionModel(**TINY_SDXL_UNET)}


def _encoders(arch: str, hf: dict[str, nn.Module]) -> list[nn.Module]:
    return [hf["l"], hf["g"]] if arch == "sdxl" else [hf["l"]]


def _weighted(root: nn.Module) -> dict[str, nn.Module]:
    return {p: m for p, m in root.named_modules() if p and isinstance(getattr(m, "weight", None), torch.Tensor)}


# --- path tables -------------------------------------------------------------------------------------------------

PAIRS = [
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
    ("down_blocks.0.resnets.0.norm1", "input_blocks.1.0.in_layers.0"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.1.resnets.0.time_emb_proj", "input_blocks.4.0.emb_layers.1"),
    ("down_blocks.1.resnets.0.norm2", "input_blocks.4.0.out_layers.0"),
    ("down_blocks.2.resnets.0.conv2", "input_blocks.7.0.out_layers.3"),
    ("down_blocks.2.resnets.0.conv_shortcut", "input_blocks.7.0.skip_connection"),
    ("down_blocks.3.resnets.1.conv1", "input_blocks.11.0.in_layers.2"),
    ("down_blocks.0.attentions.0.proj_in", "input_blocks.1.1.proj_in"),
    ("down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_out.0",
     "input_blocks.8.1.transformer_blocks.0.attn1.to_out.0"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"),
    ("mid_block.resnets.0.conv1", "middle_block.0.in_layers.2"),
    ("mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj", "middle_block.1.transformer_blocks.9.ff.net.0.proj"),
    ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
    ("up_blocks.0.resnets.0.conv1", "output_blocks.0.0.in_layers.2"),
    ("up_blocks.1.resnets.2.conv_shortcut", "output_blocks.5.0.skip_connection"),
    ("up_blocks.3.attentions.2.proj_out", "output_blocks.11.1.proj_out"),
    ("up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight",
     "output_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"),
]


@pytest.mark.parametrize(("diffusers_path", "ldm_path"), PAIRS)
def test_paths_convert_both_ways(diffusers_path: str, ldm_path: str) -> None:
    assert diffusers_to_ldm_unet_path(diffusers_path) == (ldm_path,)
    assert ldm_to_diffusers_unet_path(ldm_path) == (diffusers_path,)


def test_an_upsampler_has_two_ldm_candidates_resolved_by_the_tree() -> None:
    candidates = diffusers_to_ldm_unet_path("up_blocks.1.upsamplers.0.conv")
    assert candidates == ("output_blocks.5.1.conv", "output_blocks.5.2.conv")
    with_attention = {"up_blocks.1.attentions.2"}
    assert resolve_ldm_unet_path(candidates, with_attention.__contains__) == "output_blocks.5.2.conv"
    assert resolve_ldm_unet_path(candidates, set().__contains__) == "output_blocks.5.1.conv"
    for candidate in candidates:
        assert ldm_to_diffusers_unet_path(candidate) == ("up_blocks.1.upsamplers.0.conv",)


@pytest.mark.parametrize(
    "path",
    ["down_blocks.0.resnets.2.conv1", "down_blocks.0.attentions.0.foo", "down_blocks.0.resnets.0.nonlinearity",
     "up_blocks.0.resnets.3.conv1", "mid_block.attentions.1.proj_in", "down_blocks.0.upsamplers.0.conv",
     "mid_block.0.resnets.0.conv1", "up_blocks.resnets.0.conv1", "down_blocks.0", "unknown.module"],
)
def test_unknown_diffusers_paths_have_no_ldm_spelling(path: str) -> None:
    assert diffusers_to_ldm_unet_path(path) == ()


@pytest.mark.parametrize(
    "path",
    ["input_blocks.3.1.proj_in", "input_blocks.0.1", "input_blocks.1.2.conv", "input_blocks.1.0.in_layers.1",
     "middle_block.3.in_layers.2", "output_blocks.1.2.conv", "output_blocks.1.1.conv", "output_blocks.4.3.conv",
     "input_blocks", "something.else"],
)
def test_unknown_ldm_paths_have_no_diffusers_spelling(path: str) -> None:
    assert ldm_to_diffusers_unet_path(path) == ()


_RESNET_CHILDREN = ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut")
_attention_children = st.one_of(
    st.sampled_from(["norm", "proj_in", "proj_out"]),
    st.builds(
        "transformer_blocks.{}.{}".format,
        st.integers(0, 9),
        st.sampled_from(["norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"]
                        + [f"attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")]),
    ),
)
_suffix = st.sampled_from(["", ".weight", ".bias"])
_diffusers_paths = st.one_of(
    st.builds("down_blocks.{}.resnets.{}.{}{}".format, st.integers(0, 3), st.integers(0, 1),
              st.sampled_from(_RESNET_CHILDREN), _suffix),
    st.builds("down_blocks.{}.attentions.{}.{}{}".format, st.integers(0, 3), st.integers(0, 1), _attention_children,
              _suffix),
    st.builds("down_blocks.{}.downsamplers.0.conv{}".format, st.integers(0, 3), _suffix),
    st.builds("mid_block.resnets.{}.{}{}".format, st.integers(0, 1), st.sampled_from(_RESNET_CHILDREN), _suffix),
    st.builds("mid_block.attentions.0.{}{}".format, _attention_children, _suffix),
    st.builds("up_blocks.{}.resnets.{}.{}{}".format, st.integers(0, 3), st.integers(0, 2),
              st.sampled_from(_RESNET_CHILDREN), _suffix),
    st.builds("up_blocks.{}.attentions.{}.{}{}".format, st.integers(0, 3), st.integers(0, 2), _attention_children,
              _suffix),
    st.builds("up_blocks.{}.upsamplers.0.conv{}".format, st.integers(0, 3), _suffix),
    st.builds("{}{}".format, st.sampled_from(["conv_in", "conv_norm_out", "conv_out", "time_embedding.linear_1",
                                              "time_embedding.linear_2", "add_embedding.linear_1",
                                              "add_embedding.linear_2"]), _suffix),
)


@given(_diffusers_paths)
def test_diffusers_to_ldm_to_diffusers_round_trips(path: str) -> None:
    candidates = diffusers_to_ldm_unet_path(path)
    assert 1 <= len(candidates) <= 2
    for candidate in candidates:
        assert ldm_to_diffusers_unet_path(candidate) == (path,)


def test_kohya_name_replaces_every_dot() -> None:
    assert kohya_name("lora_unet", "input_blocks.1.1.proj_in") == "lora_unet_input_blocks_1_1_proj_in"
    assert kohya_name("lora_te2", "text_model.final_layer_norm") == "lora_te2_text_model_final_layer_norm"


@pytest.mark.parametrize(
    ("path", "hf"),
    [
        ("transformer.resblocks.3.attn", "text_model.encoder.layers.3.self_attn"),
        ("transformer.resblocks.3.attn.out_proj", "text_model.encoder.layers.3.self_attn.out_proj"),
        ("transformer.resblocks.12.mlp.c_fc", "text_model.encoder.layers.12.mlp.fc1"),
        ("transformer.resblocks.0.mlp.c_proj", "text_model.encoder.layers.0.mlp.fc2"),
        ("transformer.resblocks.0.ln_2", "text_model.encoder.layers.0.layer_norm2"),
        ("token_embedding", "text_model.embeddings.token_embedding"),
        ("ln_final", "text_model.final_layer_norm"),
        ("text_model.encoder.layers.1.self_attn.q_proj", "text_model.encoder.layers.1.self_attn.q_proj"),
        ("encoder.layers.1.mlp.fc2", "text_model.encoder.layers.1.mlp.fc2"),
        ("transformer.text_model.final_layer_norm", "text_model.final_layer_norm"),
        ("text_projection", "text_projection"),
        ("transformer.resblocks.0.mlp", None),
        ("visual.conv1", None),
    ],
)
def test_text_encoder_paths_get_hf_names(path: str, hf: str | None) -> None:
    assert te_path_to_hf(path) == hf


# --- the index over tiny models ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_every_ldm_weight_is_one_target_with_a_unique_canonical_key(arch, ldm_unets, hf_encoders) -> None:
    unet = ldm_unets[arch]
    index = build_target_index_for(unet, "ldm", _encoders(arch, hf_encoders), arch)
    unet_targets = [t for t in index.targets() if t.root == "unet"]
    assert {t.module_path for t in unet_targets} == set(_weighted(unet))
    keys = [t.key for t in index.targets()]
    assert len(keys) == len(set(keys)) == len(index)
    for target in unet_targets:
        assert target.weight is target.module.weight and target.block is not None
        assert len(index.spellings(target)) == 2, target.module_path  # both spellings for every weight
        for spelling in index.spellings(target):
            assert index.lookup(spelling) is target


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_the_two_layouts_are_a_bijection_with_equal_shapes(arch, diffusers_unets, ldm_unets) -> None:
    diffusers_modules, ldm_modules = _weighted(diffusers_unets[arch]), _weighted(ldm_unets[arch])
    diffusers_names = {name for name, _ in diffusers_unets[arch].named_modules()}
    images = {}
    for path, module in diffusers_modules.items():
        ldm_path = resolve_ldm_unet_path(diffusers_to_ldm_unet_path(path), diffusers_names.__contains__)
        assert ldm_path in ldm_modules, path
        assert ldm_modules[ldm_path].weight.shape == module.weight.shape, path
        assert ldm_to_diffusers_unet_path(ldm_path) == (path,)
        images[ldm_path] = path
    assert set(images) == set(ldm_modules)  # onto, and one-to-one since the inverse is a function


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_both_spellings_find_the_same_target_in_both_layouts(arch, diffusers_unets, ldm_unets, hf_encoders) -> None:
    encoders = _encoders(arch, hf_encoders)
    by_layout = {
        "diffusers": build_target_index_for(diffusers_unets[arch], "diffusers", encoders, arch),
        "ldm": build_target_index_for(ldm_unets[arch], "ldm", encoders, arch),
    }
    canonical = {layout: {t.key: t for t in index.targets()} for layout, index in by_layout.items()}
    assert canonical["diffusers"].keys() == canonical["ldm"].keys()
    for key, target in canonical["diffusers"].items():
        other = canonical["ldm"][key]
        assert other.shape == target.shape and other.block == target.block, key
        names = by_layout["diffusers"].spellings(target)
        assert names == by_layout["ldm"].spellings(other)
        for layout, index in by_layout.items():
            assert all(index.lookup(name) is canonical[layout][key] for name in names)
    written, other = ("input_blocks_4_1", "down_blocks_1_attentions_0")
    if arch == "sd1":
        written, other = ("down_blocks_0_attentions_0", "input_blocks_1_1")
    assert f"lora_unet_{written}_proj_in" in canonical["diffusers"]
    assert f"lora_unet_{other}_proj_in" not in canonical["diffusers"]


@pytest.mark.parametrize(
    ("arch", "diffusers_key", "ldm_key", "wrong_ldm_key"),
    [
        ("sd1", "lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_output_blocks_2_1_conv",
         "lora_unet_output_blocks_2_2_conv"),
        ("sd1", "lora_unet_up_blocks_2_upsamplers_0_conv", "lora_unet_output_blocks_8_2_conv",
         "lora_unet_output_blocks_8_1_conv"),
        ("sdxl", "lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_output_blocks_2_2_conv",
         "lora_unet_output_blocks_2_1_conv"),
        ("sdxl", "lora_unet_up_blocks_1_upsamplers_0_conv", "lora_unet_output_blocks_5_2_conv",
         "lora_unet_output_blocks_5_1_conv"),
    ],
)
def test_upsamplers_sit_after_the_attention_when_there_is_one(
    arch, diffusers_key, ldm_key, wrong_ldm_key, ldm_unets, hf_encoders
) -> None:
    index = build_target_index_for(ldm_unets[arch], "ldm", _encoders(arch, hf_encoders), arch)
    target = index.lookup(ldm_key)
    assert target is not None and index.lookup(diffusers_key) is target
    assert index.lookup(wrong_ldm_key) is None


def test_near_miss_indices_never_collide(ldm_unets, hf_encoders) -> None:
    index = build_target_index_for(ldm_unets["sd1"], "ldm", _encoders("sd1", hf_encoders), "sd1")
    families = [
        ("lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_10_0_in_layers_2",
         "lora_unet_input_blocks_11_0_in_layers_2"),
        ("lora_unet_output_blocks_1_0_in_layers_2", "lora_unet_output_blocks_10_0_in_layers_2",
         "lora_unet_output_blocks_11_0_in_layers_2"),
    ]
    for keys in families:
        targets = [index.lookup(key) for key in keys]
        assert all(targets) and len({t.module_path for t in targets}) == 3
        assert [t.module_path.split(".")[1] for t in targets] == ["1", "10", "11"]
    assert index.lookup("lora_unet_input_blocks_1_1_proj_in").module_path == "input_blocks.1.1.proj_in"
    assert index.lookup("lora_unet_input_blocks_11_proj_in") is None


def test_unknown_keys_come_back_unmatched_in_order(ldm_unets, hf_encoders) -> None:
    index = build_target_index_for(ldm_unets["sd1"], "ldm", _encoders("sd1", hf_encoders), SD1)
    keys = ["lora_unet_nope", "lora_unet_down_blocks_0_attentions_0_proj_in",
            "lora_te1_text_model_encoder_layers_0_mlp_fc1",
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", "lora_unet_input_blocks_12_0_op", ""]
    matched, unmatched = index.match(keys)
    assert list(matched) == [keys[1], keys[3]]
    assert unmatched == [keys[0], keys[2], keys[4], keys[5]]
    assert matched[keys[3]].module is hf_encoders["l"].text_model.encoder.layers[0].mlp.fc1
    assert keys[1] in index and "lora_unet_nope" not in index


def test_text_encoder_keys_use_the_family_prefixes(ldm_unets, hf_encoders) -> None:
    sdxl = build_target_index_for(ldm_unets["sdxl"], "ldm", _encoders("sdxl", hf_encoders), SDXL)
    for prefix, root, encoder in (("lora_te1", "te1", hf_encoders["l"]), ("lora_te2", "te2", hf_encoders["g"])):
        target = sdxl.lookup(f"{prefix}_text_model_encoder_layers_2_self_attn_q_proj")
        assert target.root == root and target.block == "BASE" and target.rows is None
        assert target.module is encoder.text_model.encoder.layers[2].self_attn.q_proj
    assert sdxl.lookup("lora_te_text_model_encoder_layers_2_self_attn_q_proj") is None
    assert sdxl.lookup("lora_te2_text_projection").module is hf_encoders["g"].text_projection
    sd1 = build_target_index_for(ldm_unets["sd1"], "ldm", _encoders("sd1", hf_encoders), SD1)
    assert sd1.lookup("lora_te_text_model_encoder_layers_0_mlp_fc2").root == "te1"
    te_targets = [t for t in sd1.targets() if t.root == "te1"]
    assert len(te_targets) == 3 * 8 + 3  # per layer q k v out fc1 fc2 + 2 norms; embeddings ×2, final norm


def test_open_clip_attention_splits_into_q_k_v_views(hf_encoders) -> None:
    hf_index = build_target_index_for(None, "ldm", _encoders("sdxl", hf_encoders), SDXL)
    oc_model = openclip_from_hf(hf_encoders["g"])
    oc_index = build_target_index_for(None, "ldm", [hf_encoders["l"], oc_model], SDXL)
    shared = 0
    for target in oc_index.targets():
        hf_target = hf_index.lookup(target.key)
        assert hf_target is not None, target.key
        assert torch.equal(target.weight, hf_target.weight), target.key
        shared += 1
    # open_clip's positional_embedding and text_projection are bare parameters, not modules
    assert len(hf_index) - shared == 2

    attention = oc_model.transformer.resblocks[1].attn
    width = attention.embed_dim
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        target = oc_index.lookup(f"lora_te2_text_model_encoder_layers_1_self_attn_{name}")
        assert target.module is attention and target.param_name == "in_proj_weight"
        assert target.rows == slice(i * width, (i + 1) * width) and target.shape == (width, width)
        before = attention.in_proj_weight.detach().clone()
        with torch.no_grad():
            target.weight.fill_(float(i + 7))
        changed = (attention.in_proj_weight.detach() != before).any(dim=1)
        assert changed.nonzero().flatten().tolist() == list(range(i * width, (i + 1) * width))
        assert (attention.in_proj_weight[target.rows] == i + 7).all()
    out_proj = oc_index.lookup("lora_te2_text_model_encoder_layers_1_self_attn_out_proj")
    assert out_proj.module is attention.out_proj and out_proj.rows is None
    fc1 = oc_index.lookup("lora_te2_text_model_encoder_layers_0_mlp_fc1")
    assert fc1.module is oc_model.transformer.resblocks[0].mlp.c_fc


def test_open_clip_stand_in_computes_what_the_hf_encoder_does(hf_encoders, openclip_g) -> None:
    hf = hf_encoders["g"]
    tokens = torch.randint(0, 100, (2, 77), generator=torch.Generator().manual_seed(0))
    tokens[:, 0], tokens[:, 9:] = hf.config.bos_token_id, hf.config.eos_token_id
    with torch.no_grad():
        expected = hf(tokens)
        hidden, pooled = openclip_g(tokens)
    assert torch.allclose(hidden, expected.last_hidden_state, atol=1e-5)
    assert torch.allclose(pooled, expected.text_embeds, atol=1e-5)
    assert isinstance(openclip_g.transformer.resblocks[0].attn, nn.MultiheadAttention)


def test_sd2_ldm_unet_with_an_open_clip_encoder(ldm_unets) -> None:
    encoder = build_tiny_openclip_text_model(4)
    index = build_target_index_for(ldm_unets["sd2"], "ldm", [encoder], SD2)
    q = index.lookup("lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    assert q.root == "te1" and q.param_name == "in_proj_weight" and q.rows is not None
    proj_in = index.lookup("lora_unet_down_blocks_0_attentions_0_proj_in")
    assert isinstance(proj_in.module, nn.Linear) and proj_in.key == "lora_unet_down_blocks_0_attentions_0_proj_in"


def test_attention_with_separate_q_k_v_weights() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = nn.Module()
            self.transformer.resblocks = nn.ModuleList([nn.Module()])
            self.transformer.resblocks[0].attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)

    encoder = Encoder()
    index = build_target_index_for(None, "ldm", [encoder], SD1)
    k = index.lookup("lora_te_text_model_encoder_layers_0_self_attn_k_proj")
    assert k.param_name == "k_proj_weight" and k.rows is None and k.shape == (8, 4)


class ForgeLikeLinear(nn.Module):
    """A linear op that is no nn.Linear subclass but holds `weight` and `bias`, as Forge's ops may."""

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(source.weight.detach().clone())
        self.bias = nn.Parameter(source.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def test_modules_of_any_class_with_a_weight_are_targets(hf_encoders) -> None:
    unet = build_tiny_ldm_unet("sdxl", seed=1)
    transformer = unet.input_blocks[4][1]
    transformer.proj_in = ForgeLikeLinear(transformer.proj_in)
    index = build_target_index_for(unet, "ldm", _encoders("sdxl", hf_encoders), SDXL)
    target = index.lookup("lora_unet_down_blocks_1_attentions_0_proj_in")
    assert isinstance(target.module, ForgeLikeLinear) and target.key == "lora_unet_input_blocks_4_1_proj_in"
    assert target.block == "IN04"


def test_norm_weights_are_targets_too(ldm_unets, hf_encoders) -> None:
    index = build_target_index_for(ldm_unets["sd1"], "ldm", _encoders("sd1", hf_encoders), SD1)
    norm = index.lookup("lora_unet_down_blocks_0_resnets_0_norm1")
    assert norm.module_path == "input_blocks.1.0.in_layers.0" and norm.weight.ndim == 1


def test_targets_compare_and_hash_by_what_they_point_at(openclip_g) -> None:
    attention = openclip_g.transformer.resblocks[0].attn
    a = Target("k", "te2", "transformer.resblocks.0.attn", attention, "in_proj_weight", slice(0, 32), "BASE")
    b = Target("k", "te2", "transformer.resblocks.0.attn", attention, "in_proj_weight", slice(0, 32), "BASE")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1


def test_bad_hosts_raise_host_errors(ldm_unets, hf_encoders) -> None:
    with pytest.raises(HostError, match="text encoder"):
        build_target_index_for(ldm_unets["sdxl"], "ldm", [hf_encoders["l"]], SDXL)
    with pytest.raises(HostError, match="layout"):
        build_target_index_for(ldm_unets["sd1"], "comfy", [hf_encoders["l"]], SD1)
    first = Target("lora_unet_a_b", "unet", "a.b", nn.Linear(1, 1))
    second = Target("lora_unet_a_c", "unet", "a_b", nn.Linear(1, 1))
    with pytest.raises(HostError, match="share the kohya name 'lora_unet_a_b'"):
        TargetIndex(SD1, [(first, ("lora_unet_a_b",)), (second, ("lora_unet_a_c", "lora_unet_a_b"))])
    with pytest.raises(ValueError, match="must start with it"):
        TargetIndex(SD1, [(first, ("lora_unet_a",))])


def test_index_of_an_a1111_host(a1111_host, standin_arch) -> None:
    index = build_target_index(a1111_host)
    assert index.arch.name == standin_arch
    key = "lora_unet_" + ("input_blocks_4_1" if standin_arch == "sdxl" else "down_blocks_1_attentions_0") + "_proj_in"
    target = index.lookup(key)
    assert target.key == key and target.module_path == "input_blocks.4.1.proj_in" and target.block == "IN04"
    te = "lora_te1" if standin_arch == "sdxl" else "lora_te"
    assert index.lookup(f"{te}_text_model_encoder_layers_0_self_attn_q_proj").root == "te1"


def test_index_of_a_host_object(ldm_unets, hf_encoders) -> None:
    host = SimpleNamespace(unet=ldm_unets["sd1"], layout="ldm", text_encoders=[hf_encoders["l"]], arch=SD1)
    assert len(build_target_index(host)) == len(build_target_index_for(host.unet, "ldm", host.text_encoders, "sd1"))


# --- full-size models on the meta device ---------------------------------------------------------------------------

REAL_KEYS = {
    "sd1": {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320),
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k": (1280, 768),
        "lora_unet_up_blocks_3_attentions_2_proj_out": (320, 320, 1, 1),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj": (10240, 1280),
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut": (640, 320, 1, 1),
        "lora_unet_up_blocks_0_upsamplers_0_conv": (1280, 1280, 3, 3),
        "lora_te_text_model_encoder_layers_11_self_attn_out_proj": (768, 768),
        "lora_te_text_model_encoder_layers_0_mlp_fc1": (3072, 768),
    },
    "sdxl": {
        "lora_unet_input_blocks_7_1_transformer_blocks_9_ff_net_2": (1280, 5120),
        "lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_k": (1280, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_out_0": (640, 640),
        "lora_unet_middle_block_1_transformer_blocks_9_attn1_to_v": (1280, 1280),
        "lora_unet_output_blocks_5_2_conv": (640, 640, 3, 3),
        "lora_unet_label_emb_0_0": (1280, 2816),
        "lora_te1_text_model_encoder_layers_11_mlp_fc2": (768, 3072),
        "lora_te2_text_model_encoder_layers_31_self_attn_q_proj": (1280, 1280),
    },
}
# (UNet targets, ≥2-D UNet targets, attention-only "LierLa" modules as kohya counts them, te1 / te2 linear modules)
FULL_COUNTS = {"sd1": (391, 282, 192, (72,)), "sdxl": (1050, 794, 722, (72, 192))}


def _full_index(arch: str, layout: str = "diffusers") -> TargetIndex:
    from lib_lora.tiny.full_size import build_full_text_encoders, build_full_unet

    if layout == "diffusers":
        pytest.importorskip("diffusers")
    unet = build_full_unet(arch, layout=layout, device="meta")
    return build_target_index_for(unet, layout, build_full_text_encoders(arch, device="meta"), arch)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_full_size_unets_and_real_keys(arch: str) -> None:
    index = _full_index(arch)
    unet = [t for t in index.targets() if t.root == "unet"]
    lierla = [t for t in unet if t.weight.ndim >= 2 and any("attentions" in name for name in index.spellings(t))]
    te_linear = tuple(sum(1 for t in index.targets() if t.root == root and ("self_attn" in t.key or "_mlp_" in t.key))
                      for root in ("te1", "te2")[: len(FULL_COUNTS[arch][3])])
    assert (len(unet), sum(t.weight.ndim >= 2 for t in unet), len(lierla), te_linear) == FULL_COUNTS[arch]
    for key, shape in REAL_KEYS[arch].items():
        target = index.lookup(key)
        assert target is not None and target.key == key and tuple(target.shape) == shape, key


def test_full_size_sd1_ldm_unet_has_the_real_keys() -> None:
    ldm = _full_index("sd1", layout="ldm")
    assert sum(t.root == "unet" for t in ldm.targets()) == FULL_COUNTS["sd1"][0]
    for key, shape in REAL_KEYS["sd1"].items():
        assert tuple(ldm.lookup(key).shape) == shape, key
    assert ldm.lookup("lora_unet_down_blocks_0_attentions_0_proj_in").module_path == "input_blocks.1.1.proj_in"


def test_full_size_sd1_layouts_have_the_same_keys() -> None:
    assert {t.key for t in _full_index("sd1", layout="ldm").targets()} == {t.key for t in _full_index("sd1").targets()}
