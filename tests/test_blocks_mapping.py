"""Block ids from LDM paths and from kohya keys alone, checked against LBW's table (research/lbw.md §2.4)
and against every module of the tiny SD1/SDXL UNets in both layouts."""

from __future__ import annotations

import pytest
from torch import nn

from lib_lora.arch import SD1, SDXL
from lib_lora.networks.keys import TargetIndex, build_target_index_for
from lib_lora.tiny.clip import build_tiny_text_encoder
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet
from lib_lora.unet_blocks import BASE, UNBLOCKED_PARTS, block_of_key, block_of_ldm_path, is_weighted_block

pytestmark = pytest.mark.hostcompat

# LBW §2.2 block orders of the short vectors (BASE first)
LBW_17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
          "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11")
LBW_12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05")

# research/lbw.md §2.4, SD1.x/SD2.x (diffusers-style kohya names)
SD1_TABLE = [
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "BASE"),
    ("lora_te_text_model_encoder_layers_11_mlp_fc2.lora_up.weight", "BASE"),
    ("lora_unet_conv_in", "IN00"),
    ("lora_unet_down_blocks_0_attentions_0_proj_in", "IN01"),
    ("lora_unet_down_blocks_0_resnets_1_conv1", "IN02"),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
    ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", "IN04"),
    ("lora_unet_down_blocks_1_resnets_1_time_emb_proj", "IN05"),
    ("lora_unet_down_blocks_1_downsamplers_0_conv", "IN06"),
    ("lora_unet_down_blocks_2_attentions_0_proj_out", "IN07"),
    ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_ff_net_2", "IN08"),
    ("lora_unet_down_blocks_2_downsamplers_0_conv", "IN09"),
    ("lora_unet_down_blocks_3_resnets_0_conv2", "IN10"),
    ("lora_unet_down_blocks_3_resnets_1_conv1", "IN11"),
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q", "M00"),
    ("lora_unet_mid_block_resnets_0_conv1", "M00"),
    ("lora_unet_mid_block_resnets_1_conv2", "M00"),
    ("lora_unet_up_blocks_0_resnets_0_conv1", "OUT00"),
    ("lora_unet_up_blocks_0_resnets_1_conv_shortcut", "OUT01"),
    ("lora_unet_up_blocks_0_resnets_2_conv2", "OUT02"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
    ("lora_unet_up_blocks_1_attentions_0_proj_in", "OUT03"),
    ("lora_unet_up_blocks_1_attentions_2_proj_in", "OUT05"),
    ("lora_unet_up_blocks_1_upsamplers_0_conv", "OUT05"),
    ("lora_unet_up_blocks_2_attentions_1_transformer_blocks_0_attn1_to_out_0", "OUT07"),
    ("lora_unet_up_blocks_2_upsamplers_0_conv", "OUT08"),
    ("lora_unet_up_blocks_3_attentions_0_proj_out", "OUT09"),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", "OUT11"),
    ("lora_unet_time_embedding_linear_1", "time_embed"),
    ("lora_unet_time_embedding_linear_2", "time_embed"),
    ("lora_unet_conv_out", "out"),
    ("lora_unet_conv_norm_out", "out"),
    # SD1 files already in LDM naming
    ("lora_unet_input_blocks_1_1_proj_in", "IN01"),
    ("lora_unet_input_blocks_11_0_in_layers_2", "IN11"),
    ("lora_unet_output_blocks_11_1_proj_out", "OUT11"),
]

# research/lbw.md §2.4, SDXL (sgm-style kohya names)
SDXL_TABLE = [
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "BASE"),
    ("lora_te2_text_model_encoder_layers_31_mlp_fc1", "BASE"),
    ("lora_unet_input_blocks_0_0", "IN00"),
    ("lora_unet_input_blocks_1_0_in_layers_2", "IN01"),
    ("lora_unet_input_blocks_3_0_op", "IN03"),
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "IN04"),
    ("lora_unet_input_blocks_5_1_proj_out", "IN05"),
    ("lora_unet_input_blocks_6_0_op", "IN06"),
    ("lora_unet_input_blocks_7_1_transformer_blocks_9_ff_net_2", "IN07"),
    ("lora_unet_input_blocks_8_0_skip_connection", "IN08"),
    ("lora_unet_middle_block_1_transformer_blocks_9_attn2_to_v", "M00"),
    ("lora_unet_middle_block_2_out_layers_3", "M00"),
    ("lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_k", "OUT00"),
    ("lora_unet_output_blocks_2_2_conv", "OUT02"),
    ("lora_unet_output_blocks_5_1_proj_in", "OUT05"),
    ("lora_unet_output_blocks_5_2_conv", "OUT05"),
    ("lora_unet_output_blocks_8_0_emb_layers_1", "OUT08"),
    ("lora_unet_time_embed_0", "time_embed"),
    ("lora_unet_label_emb_0_2", "label_emb"),
    ("lora_unet_out_2", "out"),
    ("lora_unet_out_0", "out"),
    # diffusers-style SDXL names: the SD1 formulas, three levels
    ("lora_unet_down_blocks_1_attentions_0_proj_in", "IN04"),
    ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn1_to_q", "IN08"),
    ("lora_unet_up_blocks_0_attentions_2_proj_out", "OUT02"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
    ("lora_unet_add_embedding_linear_1", "label_emb"),
]


@pytest.mark.parametrize(("key", "block"), SD1_TABLE)
def test_sd1_keys_follow_the_lbw_table(key: str, block: str) -> None:
    assert block_of_key(key) == block
    assert block_of_key(key, SD1) == block


@pytest.mark.parametrize(("key", "block"), SDXL_TABLE)
def test_sdxl_keys_follow_the_lbw_table(key: str, block: str) -> None:
    assert block_of_key(key, SDXL) == block


@pytest.mark.parametrize(
    "key",
    ["lora_unet_nothing", "lora_unet_down_blocks_0_resnets_2_conv1", "lora_unet_up_blocks_0_resnets_3_conv1",
     "lora_unet_mid_block_attentions_1_proj_in", "lora_unet_input_blocks_12_0_op", "lora_unet_output_blocks_",
     "lora_unet_outx", "lora_unet_conv_in_x", "lora_tex_something", "text_encoder.text_model.x", "", "lora_unet"],
)
def test_unknown_keys_have_no_block(key: str) -> None:
    assert block_of_key(key) is None


def test_near_miss_indices_are_told_apart() -> None:
    assert [block_of_key(f"lora_unet_input_blocks_{n}_0_in_layers_2") for n in (1, 10, 11)] == ["IN01", "IN10", "IN11"]
    assert [block_of_key(f"lora_unet_output_blocks_{n}_1_proj_in") for n in (1, 10, 11)] == ["OUT01", "OUT10", "OUT11"]
    assert block_of_ldm_path("input_blocks.1.1.proj_in") == "IN01"
    assert block_of_ldm_path("input_blocks.11.0.in_layers.2") == "IN11"
    assert block_of_ldm_path("output_blocks.10") == "OUT10"


def test_blocks_the_arch_lacks_are_none() -> None:
    assert block_of_key("lora_unet_input_blocks_9_0_op", SDXL) is None
    assert block_of_key("lora_unet_output_blocks_11_1_proj_in", SDXL) is None
    assert block_of_key("lora_unet_down_blocks_3_resnets_0_conv1", SDXL) is None  # SDXL has three levels
    assert block_of_key("lora_unet_input_blocks_9_0_op") == "IN09"
    assert block_of_ldm_path("input_blocks.9.0.op", SDXL) is None


@pytest.mark.parametrize(
    ("path", "block"),
    [("time_embed.0", "time_embed"), ("label_emb.0.0", "label_emb"), ("out.2", "out"), ("middle_block.1.norm", "M00"),
     ("input_blocks.0.0", "IN00"), ("output_blocks.5.2.conv.weight", "OUT05"), ("outer.0", None),
     ("input_blocks.x", None), ("down_blocks.0.resnets.0", None)],
)
def test_ldm_path_blocks(path: str, block: str | None) -> None:
    assert block_of_ldm_path(path) == block


def test_unblocked_parts_keep_weight_one() -> None:
    assert UNBLOCKED_PARTS == ("time_embed", "label_emb", "out")
    assert not any(is_weighted_block(part) for part in UNBLOCKED_PARTS) and not is_weighted_block(None)
    assert is_weighted_block(BASE) and is_weighted_block("OUT11")


# --- against the tiny models ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoders() -> dict[str, list[nn.Module]]:
    l_model, g_model = build_tiny_text_encoder(2), build_tiny_text_encoder(3, with_projection=True)
    return {"sd1": [l_model], "sdxl": [l_model, g_model]}


def _indices(arch: str, encoders: dict[str, list[nn.Module]]) -> list[TargetIndex]:
    indices = [build_target_index_for(build_tiny_ldm_unet(arch), "ldm", encoders[arch], arch)]
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        return indices
    from lib_lora.tiny.diffusers_models import TINY_SD1_UNET, TINY_SDXL_UNET

    unet = UNet2DConditionModel(**(TINY_SD1_UNET if arch == "sd1" else TINY_SDXL_UNET))
    return indices + [build_target_index_for(unet, "diffusers", encoders[arch], arch)]


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_every_tiny_module_gets_the_same_block_from_its_keys_as_from_its_ldm_path(arch, encoders) -> None:
    family = SD1 if arch == "sd1" else SDXL
    for index in _indices(arch, encoders):
        covered = set()
        for target in index.targets():
            for name in index.spellings(target):
                assert block_of_key(name, family) == target.block, name
            if target.root == "unet":
                assert target.block is not None, target.key
                covered.add(target.block)
            else:
                assert target.block == BASE
        assert set(family.unet_block_ids) <= covered  # every block id holds at least one module
        parts = {"time_embed", "out"} if arch == "sd1" else set(UNBLOCKED_PARTS)  # label_emb: SDXL only
        assert covered - set(family.unet_block_ids) == parts


@pytest.mark.parametrize(("arch", "vector"), [("sd1", LBW_17), ("sdxl", LBW_12)])
def test_attention_modules_fill_exactly_the_short_lbw_vector(arch, vector, encoders) -> None:
    """An attention-only (LierLa) LoRA touches BASE plus exactly the blocks of LBW's 17/12-value vector."""
    for index in _indices(arch, encoders):
        blocks = {
            t.block for t in index.targets()
            if t.root != "unet" or any("attentions" in name for name in index.spellings(t))
        }
        assert blocks == set(vector)
