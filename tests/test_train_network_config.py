"""NetworkConfig and the block-wise settings: parsing, validation messages, per-block tables (pure, both envs)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.arch import SD1, SDXL
from lib_lora.train.errors import ConfigError
from lib_lora.train.network.blocks import (
    block_lr_weights,
    lr_weight_values,
    sdscripts_block_index,
    sdscripts_blocks,
    trained_blocks,
)
from lib_lora.train.network.config import (
    NETWORK_ARGS_HELP,
    NETWORK_HELP,
    NetworkConfig,
    format_network_args,
    parse_network_args,
)
from lib_lora.train.network.lokr import factorization

pytestmark = pytest.mark.hostcompat


def test_help_covers_every_field():
    import dataclasses

    assert set(NETWORK_HELP) == {f.name for f in dataclasses.fields(NetworkConfig)}
    assert all(text and "\n" not in text for text in [*NETWORK_HELP.values(), *NETWORK_ARGS_HELP.values()])


@pytest.mark.parametrize(("given_args", "expected"), [
    (["conv_dim=8", "conv_alpha=4"], {"conv_dim": "8", "conv_alpha": "4"}),
    ("algo=loha dora_wd=True", {"algo": "loha", "dora_wd": "True"}),
    ({"block_dims": [2, 4, 8], "dora_wd": True}, {"block_dims": "2,4,8", "dora_wd": "True"}),
    ([" train_blocks = IN04-IN07,OUT03-OUT06 "], {"train_blocks": "IN04-IN07,OUT03-OUT06"}),
    (None, {}),
])
def test_network_args_parse_and_format_round_trip(given_args, expected):
    parsed = parse_network_args(given_args)
    assert parsed == expected
    assert parse_network_args(format_network_args(parsed)) == parsed


@pytest.mark.parametrize(("fields", "key", "fragment"), [
    ({"network_module": "networks.lora_fa"}, "network_module", "did you mean networks.lora"),
    ({"network_dim": 0}, "network_dim", "at least 1"),
    ({"network_alpha": -1}, "network_alpha", "at least 0"),
    ({"network_dropout": 1.0}, "network_dropout", "probability"),
    ({"network_train_unet_only": True, "network_train_text_encoder_only": True},
     "network_train_text_encoder_only", "nothing would be trained"),
    ({"dim_from_weights": True}, "dim_from_weights", "needs network_weights"),
    ({"scale_weight_norms": 0.0}, "scale_weight_norms", "above 0"),
    ({"network_args": ["conv_dim"]}, "network_args", "key=value"),
    ({"network_args": ["conv_dim=1", "conv_dim=2"]}, "network_args", "given twice"),
    ({"network_args": {"conv_dims": "4"}}, "network_args.conv_dims", "did you mean conv_dim"),
    ({"network_args": {"conv_dim": "four"}}, "network_args.conv_dim", "whole number"),
    ({"network_args": {"algo": "loha"}}, "network_args.algo", "lycoris.kohya"),
    ({"network_module": "lycoris.kohya", "network_args": {"algo": "dora"}}, "network_args.algo", "dora_wd=True"),
    ({"network_module": "lycoris.kohya", "network_args": {"algo": "ia3"}}, "network_args.algo", "expected one of"),
    ({"network_module": "lycoris.kohya", "network_args": {"use_tucker": "True"}}, "network_args.use_tucker",
     "not supported"),
    ({"network_module": "lycoris.kohya", "network_args": {"preset": "attn"}}, "network_args.preset", "full"),
    ({"network_module": "lycoris.kohya", "network_args": {"algo": "loha"}, "network_dropout": 0.1},
     "network_dropout", "rank_dropout"),
    ({"network_args": {"rank_dropout": "1.5"}}, "network_args.rank_dropout", "probability"),
    ({"network_args": {"down_lr_weight": "cosine_wave"}}, "network_args.down_lr_weight", "sine"),
    ({"network_args": {"mid_lr_weight": "sine"}}, "network_args.mid_lr_weight", "numbers"),
    ({"network_args": {"up_lr_weight": "1,-1"}}, "network_args.up_lr_weight", "negative"),
    ({"network_args": {"train_blocks": "IN04-IN07,OUT3"}}, "network_args.train_blocks", "'OUT3'"),
    ({"network_args": {"loraplus_lr_ratio": "0"}}, "network_args.loraplus_lr_ratio", "above 0"),
    ({"network_args": {"dropout": "0.1"}}, "network_args.dropout", "network_dropout"),
])
def test_bad_settings_name_the_setting_and_the_reason(fields, key, fragment):
    with pytest.raises(ConfigError) as caught:
        NetworkConfig(**fields)
    assert caught.value.key == key
    assert fragment in str(caught.value)


@pytest.mark.parametrize(("fields", "algo"), [
    ({}, "lora"),
    ({"network_args": {"conv_dim": "8"}}, "locon"),
    ({"network_module": "lycoris.kohya", "network_args": {"algo": "LoKr"}}, "lokr"),
    ({"network_module": "lycoris.kohya", "network_args": {"algo": "locon", "dora_wd": "true",
                                                          "disable_conv_cp": "True"}}, "locon"),
])
def test_algo_and_typed_args(fields, algo):
    config = NetworkConfig(**fields)
    assert config.algo == algo


def test_typed_args_read_sd_scripts_forms():
    args = NetworkConfig(network_args={
        "conv_dim": "8", "conv_alpha": "2.5", "rank_dropout": "0.1", "block_dims": "1,2,3",
        "block_alphas": "0.5,1,2", "down_lr_weight": "sine+0.5", "loraplus_lr_ratio": "16",
        "block_lr_zero_threshold": "0.1"}).args
    assert (args.conv_dim, args.conv_alpha, args.rank_dropout) == (8, 2.5, 0.1)
    assert args.block_dims == (1, 2, 3) and args.block_alphas == (0.5, 1.0, 2.0)
    assert args.down_lr_weight == "sine+0.5" and args.has_block_lr
    assert (args.loraplus_lr_ratio, args.block_lr_zero_threshold) == (16.0, 0.1)


# --- sd-scripts' per-block positions ----------------------------------------------------------------------------


def test_sdscripts_block_lists():
    assert len(sdscripts_blocks(SD1)) == 25 and len(sdscripts_blocks(SDXL)) == 23
    cases = [
        (SD1, "IN00", None, 0), (SD1, "IN04", None, 4), (SD1, "M00", None, 12), (SD1, "OUT11", None, 24),
        (SD1, "BASE", None, None), (SD1, "time_embed", None, None),
        (SDXL, "time_embed", None, 0), (SDXL, "label_emb", None, 0), (SDXL, "IN08", None, 9),
        (SDXL, "M00", "lora_unet_middle_block_0_in_layers_2", 10),
        (SDXL, "M00", "lora_unet_middle_block_1_proj_in", 11),
        (SDXL, "M00", "lora_unet_middle_block_2_emb_layers_1", 12),
        (SDXL, "OUT00", None, 13), (SDXL, "out", None, 22),
    ]
    for arch, block, key, expected in cases:
        assert sdscripts_block_index(block, key, arch) == expected, (arch.name, block, key)


@pytest.mark.parametrize(("text", "expected"), [
    ("zeros", [0.0, 0.0, 0.0]),
    ("zeros+0.5", [0.5, 0.5, 0.5]),
    ("linear", [0.0, 0.5, 1.0]),
    ("reverse_linear", [1.0, 0.5, 0.0]),
    ("sine", [0.0, math.sin(math.pi / 4), 1.0]),
    ("cosine", [1.0, math.sin(math.pi / 4), 0.0]),
    ("1,,2", [1.0, 0.0, 2.0]),
])
def test_lr_weight_curves(text, expected):
    assert lr_weight_values(text, 3, "down_lr_weight") == pytest.approx(expected)


def test_lr_weight_list_must_have_the_arch_length():
    with pytest.raises(ConfigError, match="expected 12 values, got 3"):
        block_lr_weights(NetworkConfig(network_args={"down_lr_weight": "1,1,1"}).args, SD1)


def test_block_lr_weights_layout_and_threshold():
    args = NetworkConfig(network_args={"down_lr_weight": "linear", "up_lr_weight": ",".join(["0.1"] * 9),
                                       "block_lr_zero_threshold": "0.2"}).args
    sdxl = block_lr_weights(args, SDXL)
    assert len(sdxl) == 23 and sdxl[0] == sdxl[-1] == 1.0
    assert sdxl[1:10] == pytest.approx([i / 8 if i / 8 > 0.2 else 0.0 for i in range(9)])
    assert sdxl[10:13] == (1.0, 1.0, 1.0) and sdxl[13:22] == (0.0,) * 9
    assert block_lr_weights(NetworkConfig().args, SD1) is None


@pytest.mark.parametrize(("spec", "arch", "expected"), [
    ("IN04-IN07,OUT03-OUT06", SD1, {"BASE", "IN04", "IN05", "IN06", "IN07", "OUT03", "OUT04", "OUT05", "OUT06"}),
    ("IN08-OUT00", SDXL, {"BASE", "IN08", "M00", "OUT00"}),
    ("CHAR", SD1, {"BASE", "IN04", "IN05", "IN07", "OUT03", "OUT04", "OUT05", "OUT06"}),
    ("CHAR", SDXL, {"BASE", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02"}),
    ("0,0,0,0,0,0,0,0,0,1,0,0", SDXL, {"OUT03"}),
    (None, SD1, None),
])
def test_trained_blocks(spec, arch, expected):
    assert trained_blocks(spec, arch) == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize(("spec", "arch", "fragment"), [
    ("IN07-IN04", SD1, "runs backwards"),
    ("IN10-IN11", SDXL, "no block IN10"),
    ("NOPE", SD1, "NOPE"),
    ("CHAR", "sd2", None),
])
def test_trained_blocks_errors(spec, arch, fragment):
    from lib_lora.arch import get_arch

    arch = get_arch(arch) if isinstance(arch, str) else arch
    if fragment is None:
        assert "IN04" in trained_blocks(spec, arch)
        return
    with pytest.raises(ConfigError, match=fragment):
        trained_blocks(spec, arch)


# --- LoKr factorization ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dimension", "factor", "expected"), [
    (128, -1, (8, 16)), (128, 4, (4, 32)), (250, -1, (10, 25)), (360, 8, (8, 45)), (127, -1, (1, 127)),
    (1024, 16, (16, 64)), (320, -1, (16, 20)), (12, 5, (3, 4)),
])
def test_factorization_table(dimension, factor, expected):
    assert factorization(dimension, factor) == expected


def test_factorization_matches_lycoris():
    lycoris = pytest.importorskip("lycoris.functional.general")  # slow to import: once, outside the examples
    check_factorization_against(lycoris.factorization)


def check_factorization_against(reference) -> None:
    @settings(deadline=None, max_examples=300)
    @given(st.integers(1, 5000), st.sampled_from([-1, 1, 2, 3, 4, 8, 16, 7]))
    def same(dimension, factor):
        m, n = factorization(dimension, factor)
        assert m * n == dimension and m <= n
        assert (m, n) == tuple(reference(dimension, factor))

    same()

