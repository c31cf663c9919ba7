"""lib_lora.networks.formats: each type's ΔW against lycoris-lora, LoRA maths, the registry's errors, round trip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from lycoris.modules.full import FullModule as LycorisFull
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule
from torch import nn

from lib_lora.errors import LoraFormatError, LoraShapeError
from lib_lora.networks.formats import (
    MODULE_TYPES,
    NetworkModule,
    detect_format,
    group_by_module,
    parse_modules,
    to_state_dict,
)

pytestmark = pytest.mark.hostcompat

KEY = "lora_unet_block"


def _linear(i: int = 12, o: int = 10) -> nn.Module:
    return nn.Linear(i, o)


def _conv(i: int = 8, o: int = 6, k: int = 3) -> nn.Module:
    return nn.Conv2d(i, o, k, padding=k // 2)


# (id, LyCORIS class, host factory, constructor kwargs, expected kind)
LYCORIS_CASES = [
    ("lora-linear", LoConModule, _linear, {"lora_dim": 4, "alpha": 2}, "lora"),
    ("lora-conv1x1", LoConModule, lambda: _conv(k=1), {"lora_dim": 4, "alpha": 2}, "lora"),
    ("locon-conv3x3", LoConModule, _conv, {"lora_dim": 4, "alpha": 3}, "locon"),
    ("locon-tucker", LoConModule, _conv, {"lora_dim": 4, "alpha": 2, "use_tucker": True}, "locon"),
    ("dora-linear-out", LoConModule, _linear, {"lora_dim": 4, "alpha": 2, "weight_decompose": True}, "lora"),
    ("dora-linear-in", LoConModule, _linear,
     {"lora_dim": 4, "alpha": 2, "weight_decompose": True, "wd_on_out": False}, "lora"),
    ("dora-conv-out", LoConModule, _conv, {"lora_dim": 3, "alpha": 2, "weight_decompose": True}, "locon"),
    ("dora-conv-in", LoConModule, _conv,
     {"lora_dim": 3, "alpha": 2, "weight_decompose": True, "wd_on_out": False}, "locon"),
    ("dora-tucker-in", LoConModule, _conv,
     {"lora_dim": 3, "alpha": 2, "use_tucker": True, "weight_decompose": True, "wd_on_out": False}, "locon"),
    ("loha-linear", LohaModule, _linear, {"lora_dim": 3, "alpha": 2}, "loha"),
    ("loha-conv", LohaModule, _conv, {"lora_dim": 3, "alpha": 2}, "loha"),
    ("loha-tucker", LohaModule, _conv, {"lora_dim": 3, "alpha": 5, "use_tucker": True}, "loha"),
    ("loha-dora-out", LohaModule, _conv, {"lora_dim": 3, "alpha": 2, "weight_decompose": True}, "loha"),
    ("loha-dora-in", LohaModule, _linear,
     {"lora_dim": 3, "alpha": 2, "weight_decompose": True, "wd_on_out": False}, "loha"),
    ("lokr-linear", LokrModule, lambda: _linear(16, 24), {"lora_dim": 2, "alpha": 3, "factor": 4}, "lokr"),
    ("lokr-both-decomposed", LokrModule, lambda: _linear(64, 96),
     {"lora_dim": 2, "alpha": 3, "factor": 8, "decompose_both": True}, "lokr"),
    ("lokr-full-matrix", LokrModule, lambda: _linear(16, 24), {"lora_dim": 2, "alpha": 3, "full_matrix": True}, "lokr"),
    ("lokr-conv", LokrModule, lambda: _conv(16, 24), {"lora_dim": 2, "alpha": 3, "factor": 4}, "lokr"),
    ("lokr-conv1x1", LokrModule, lambda: _conv(16, 24, 1), {"lora_dim": 2, "alpha": 3, "factor": 4}, "lokr"),
    ("lokr-tucker", LokrModule, lambda: _conv(16, 24),
     {"lora_dim": 2, "alpha": 3, "factor": 4, "use_tucker": True}, "lokr"),
    ("lokr-conv-full-matrix", LokrModule, lambda: _conv(16, 24), {"lora_dim": 2, "full_matrix": True}, "lokr"),
    ("lokr-dora-out", LokrModule, lambda: _linear(16, 24),
     {"lora_dim": 2, "alpha": 3, "factor": 4, "weight_decompose": True}, "lokr"),
    ("lokr-dora-in", LokrModule, lambda: _conv(16, 24),
     {"lora_dim": 2, "alpha": 3, "factor": 4, "weight_decompose": True, "wd_on_out": False}, "lokr"),
]


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """LyCORIS zero-inits one factor; give every parameter random values (dora_scale kept positive)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=generator) * 0.3
            param.copy_(values.abs() + 0.5 if name == "dora_scale" else values)


def _lycoris_module(cls: type, host: nn.Module, multiplier: float, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    module = cls(KEY, host, multiplier=multiplier, **kwargs)
    _randomise(module, torch.Generator().manual_seed(1))
    return module


def _state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {f"{KEY}.{name}": tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _apply(host: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    if isinstance(host, nn.Conv2d):
        return F.conv2d(x, delta, None, host.stride, host.padding)
    return F.linear(x, delta)


@pytest.mark.parametrize("multiplier", [1.0, 0.5])
@pytest.mark.parametrize(("cls", "make_host", "kwargs", "kind"),
                         [case[1:] for case in LYCORIS_CASES], ids=[case[0] for case in LYCORIS_CASES])
def test_delta_matches_lycoris(cls, make_host, kwargs, kind, multiplier):
    host = make_host()
    lyco = _lycoris_module(cls, host, multiplier, kwargs)
    modules = parse_modules(_state_dict(lyco))
    module = modules[KEY]
    assert module.kind == kind
    assert detect_format(modules) == ("dora" if kwargs.get("weight_decompose") else kind)
    in_dim = host.weight.shape[1]
    x = torch.randn(3, in_dim, 5, 5) if isinstance(host, nn.Conv2d) else torch.randn(4, in_dim)
    with torch.no_grad():
        expected = lyco(x) - host(x)  # LyCORIS's rebuild forward: op(x, W' - W)
        delta = module.delta_weight(host.weight, multiplier)
        got = _apply(host, x, delta)
    assert delta.dtype == torch.float32 and delta.shape == host.weight.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("multiplier", [1.0, 0.5])
@pytest.mark.parametrize("make_host", [_linear, _conv], ids=["linear", "conv"])
def test_full_matches_lycoris(make_host, multiplier):
    host = make_host()
    base_weight, base_bias = host.weight.detach().clone(), host.bias.detach().clone()
    lyco = _lycoris_module(LycorisFull, host, multiplier, {})
    lyco.apply_to()  # its state dict (diff = weight - original) assumes the applied state
    module = parse_modules(_state_dict(lyco))[KEY]
    assert (module.kind, module.rank, module.scale) == ("full", None, 1.0)
    with torch.no_grad():
        weight, bias = lyco.get_merged_weight(multiplier)
        torch.testing.assert_close(base_weight + module.delta_weight(base_weight, multiplier), weight)
        torch.testing.assert_close(base_bias + module.bias_delta(multiplier), bias)


def test_lokr_with_two_full_factors_ignores_alpha():
    sd = {f"{KEY}.lokr_w1": torch.randn(2, 3), f"{KEY}.lokr_w2": torch.randn(4, 5), f"{KEY}.alpha": torch.tensor(7.0)}
    module = parse_modules(sd)[KEY]
    assert module.rank is None and module.scale == 1.0
    torch.testing.assert_close(module.raw_delta(), torch.kron(sd[f"{KEY}.lokr_w1"], sd[f"{KEY}.lokr_w2"]))


# -- plain LoRA maths ------------------------------------------------------------------------------------------


def _lora_sd(up: torch.Tensor, down: torch.Tensor, alpha: float | None = None, key: str = KEY, **extra):
    sd = {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down}
    if alpha is not None:
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    sd.update({f"{key}.{suffix}": tensor for suffix, tensor in extra.items()})
    return sd


def test_lora_linear_formula():
    up, down, base = torch.randn(10, 4), torch.randn(4, 12), torch.randn(10, 12)
    module = parse_modules(_lora_sd(up, down, 8.0))[KEY]
    assert (module.rank, module.scale, module.kind) == (4, 2.0, "lora")
    torch.testing.assert_close(module.delta_weight(base, 0.7), up @ down * 2.0 * 0.7)


def test_lora_without_alpha_has_scale_one():
    up, down = torch.randn(10, 4), torch.randn(4, 12)
    module = parse_modules(_lora_sd(up, down))[KEY]
    assert module.alpha is None and module.scale == 1.0
    torch.testing.assert_close(module.delta_weight(torch.zeros(10, 12)), up @ down)


def test_scale_tensor_wins_over_alpha():
    module = parse_modules(_lora_sd(torch.randn(3, 2), torch.randn(2, 3), 8.0, scale=torch.tensor(0.25)))[KEY]
    assert module.scale == 0.25


def test_lora_conv1x1_formula():
    up, down, base = torch.randn(6, 4, 1, 1), torch.randn(4, 8, 1, 1), torch.randn(6, 8, 1, 1)
    module = parse_modules(_lora_sd(up, down, 2.0))[KEY]
    expected = (up.flatten(1) @ down.flatten(1) * 0.5).reshape(6, 8, 1, 1)
    torch.testing.assert_close(module.delta_weight(base), expected)
    assert module.kind == "lora"


def test_conv1x1_lora_on_linear_target_and_back():
    up, down = torch.randn(6, 4), torch.randn(4, 8)
    linear = parse_modules(_lora_sd(up, down, 2.0))[KEY]
    conv = parse_modules(_lora_sd(up[..., None, None], down[..., None, None], 2.0))[KEY]
    on_linear = conv.delta_weight(torch.zeros(6, 8))
    on_conv = linear.delta_weight(torch.zeros(6, 8, 1, 1))
    assert on_linear.shape == (6, 8) and on_conv.shape == (6, 8, 1, 1)
    torch.testing.assert_close(on_linear, linear.delta_weight(torch.zeros(6, 8)))
    torch.testing.assert_close(on_conv.flatten(1), on_linear)


def test_dora_linear_scale_on_conv1x1_target():
    host = _linear(8, 6)
    lyco = _lycoris_module(LoConModule, host, 1.0, {"lora_dim": 3, "alpha": 2, "weight_decompose": True})
    module = parse_modules(_state_dict(lyco))[KEY]
    with torch.no_grad():
        flat = module.delta_weight(host.weight)
        conv = module.delta_weight(host.weight[..., None, None])
    torch.testing.assert_close(conv.flatten(1), flat)


def test_dora_multiplier_enters_as_lycoris_interpolation():
    """LyCORIS: W' = M·(m·(d/‖M‖−1)+1) with M = W+ΔW·scale, so at multiplier 0 the delta is ΔW·scale, not 0."""
    up, down, base = torch.randn(5, 2), torch.randn(2, 4), torch.randn(5, 4)
    module = parse_modules(_lora_sd(up, down, 1.0, dora_scale=torch.rand(5, 1) + 0.5))[KEY]
    torch.testing.assert_close(module.delta_weight(base, 0.0), up @ down * 0.5)


def test_peft_names_match_kohya():
    up, down, base = torch.randn(10, 4), torch.randn(4, 12), torch.randn(10, 12)
    peft = parse_modules({f"{KEY}.lora_B.weight": up, f"{KEY}.lora_A.weight": down, f"{KEY}.alpha": torch.tensor(2.0)})
    kohya = parse_modules(_lora_sd(up, down, 2.0))
    torch.testing.assert_close(peft[KEY].delta_weight(base), kohya[KEY].delta_weight(base))


def test_half_precision_tensors_give_float32_deltas():
    up, down = torch.randn(10, 4, dtype=torch.float16), torch.randn(4, 12, dtype=torch.bfloat16)
    module = parse_modules(_lora_sd(up, down, 4.0))[KEY]
    delta = module.delta_weight(torch.zeros(10, 12, dtype=torch.float16))
    assert delta.dtype == torch.float32
    torch.testing.assert_close(delta, up.float() @ down.float())


@settings(max_examples=40, deadline=None)
@given(out_dim=st.integers(1, 12), in_dim=st.integers(1, 12), rank=st.integers(1, 6),
       alpha=st.floats(0.01, 64.0), multiplier=st.floats(-2.0, 2.0), seed=st.integers(0, 2**16))
def test_lora_maths_properties(out_dim, in_dim, rank, alpha, multiplier, seed):
    gen = torch.Generator().manual_seed(seed)
    up, down = torch.randn(out_dim, rank, generator=gen), torch.randn(rank, in_dim, generator=gen)
    base = torch.randn(out_dim, in_dim, generator=gen)
    module = parse_modules(_lora_sd(up, down, alpha))[KEY]
    assert module.rank == rank and math.isclose(module.scale, alpha / rank, rel_tol=1e-6)
    one = module.delta_weight(base, 1.0)
    torch.testing.assert_close(module.delta_weight(base, multiplier), one * multiplier, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, up @ down * (alpha / rank), rtol=1e-5, atol=1e-5)
    assert int(torch.linalg.matrix_rank(one.double(), rtol=1e-4)) <= rank  # float32 rounding, not rank


# -- bias ------------------------------------------------------------------------------------------------------


def test_bias_conventions():
    up, down = torch.randn(4, 2), torch.randn(2, 3)
    plain = parse_modules(_lora_sd(up, down))[KEY]
    assert plain.bias_delta(1.0) is None
    layer_bias = parse_modules(_lora_sd(up, down, 1.0, diff_b=torch.ones(4)))[KEY]
    torch.testing.assert_close(layer_bias.bias_delta(0.5), torch.full((4,), 0.5))
    one_d = parse_modules(_lora_sd(up, down, bias=torch.ones(4)))[KEY]
    torch.testing.assert_close(one_d.bias_delta(2.0), torch.full((4,), 2.0))
    weight_shaped = torch.randn(4, 3)  # A1111: added to up·down before alpha/rank and the multiplier
    a1111 = parse_modules(_lora_sd(up, down, 1.0, bias=weight_shaped))[KEY]
    assert a1111.bias_delta(1.0) is None
    torch.testing.assert_close(a1111.delta_weight(torch.zeros(4, 3), 0.5), (up @ down + weight_shaped) * 0.5 * 0.5)


# -- registry: grouping, detection, round trip -----------------------------------------------------------------


def _mixed_state_dict() -> dict[str, torch.Tensor]:
    sd = _lora_sd(torch.randn(4, 2), torch.randn(2, 3), 1.0, key="lora_te_a")
    sd.update(_lora_sd(torch.randn(4, 2, 1, 1), torch.randn(2, 3, 3, 3), 2.0, key="lora_unet_conv"))
    sd.update({"lora_unet_h.hada_w1_a": torch.randn(4, 2), "lora_unet_h.hada_w1_b": torch.randn(2, 3),
               "lora_unet_h.hada_w2_a": torch.randn(4, 2), "lora_unet_h.hada_w2_b": torch.randn(2, 3)})
    sd.update({"lora_unet_k.lokr_w1": torch.randn(2, 2), "lora_unet_k.lokr_w2": torch.randn(3, 4).half()})
    sd.update({"lora_unet_f.diff": torch.randn(4, 3), "lora_unet_f.diff_b": torch.randn(4)})
    return sd


def test_group_by_module_splits_at_first_dot():
    groups = group_by_module({"lora_unet_x.lora_up.weight": torch.zeros(1), "lora_unet_x.alpha": torch.zeros(())})
    assert list(groups) == ["lora_unet_x"] and sorted(groups["lora_unet_x"]) == ["alpha", "lora_up.weight"]


def test_round_trip():
    sd = _mixed_state_dict()
    sd["lora_te_a.dora_scale"] = torch.rand(4, 1) + 0.5
    back = to_state_dict(parse_modules(sd))
    assert sorted(back) == sorted(sd)
    for name, tensor in sd.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)


def test_detect_format_prefers_the_most_specific_kind():
    sd = _mixed_state_dict()
    modules = parse_modules(sd)
    assert {key: m.kind for key, m in modules.items()} == {
        "lora_te_a": "lora", "lora_unet_conv": "locon", "lora_unet_h": "loha", "lora_unet_k": "lokr",
        "lora_unet_f": "full"}
    assert detect_format(modules) == "lokr"
    assert detect_format({k: modules[k] for k in ("lora_te_a", "lora_unet_conv")}) == "locon"
    assert detect_format({k: modules[k] for k in ("lora_te_a",)}) == "lora"
    assert detect_format({k: modules[k] for k in ("lora_te_a", "lora_unet_f")}) == "full"
    with pytest.raises(LoraFormatError):
        detect_format({})


def test_registry_shape():
    assert [t.name for t in MODULE_TYPES] == ["lora", "loha", "lokr", "full"]
    for module_type in MODULE_TYPES:
        assert issubclass(module_type.module, NetworkModule)
        assert module_type.create(KEY, {"unrelated": torch.zeros(1)}) is None
        assert module_type.module.own_suffixes <= module_type.suffixes


# -- errors ----------------------------------------------------------------------------------------------------


def _error(sd: dict[str, torch.Tensor], kind: type[Exception] = LoraFormatError) -> str:
    with pytest.raises(kind) as info:
        parse_modules(sd, path="x.safetensors")
    message = str(info.value)
    assert "x.safetensors" in message and KEY in message and info.value.key == KEY
    return message


def test_unknown_suffixes_name_every_type_tried():
    message = _error({f"{KEY}.foo.weight": torch.zeros(2, 2), f"{KEY}.alpha": torch.tensor(1.0)})
    assert "foo.weight" in message and all(t.name in message for t in MODULE_TYPES)


def test_leftover_suffixes_are_an_error():
    message = _error(_lora_sd(torch.randn(4, 2), torch.randn(2, 3), hada_w1_a=torch.randn(4, 2)))
    assert "hada_w1_a" in message


@pytest.mark.parametrize("present", ["lora_up.weight", "lora_down.weight", "lora_B.weight"])
def test_missing_half(present):
    message = _error({f"{KEY}.{present}": torch.randn(4, 2)})
    assert "lacks" in message


def test_mixed_kohya_and_peft_names():
    _error({**_lora_sd(torch.randn(4, 2), torch.randn(2, 3)), f"{KEY}.lora_A.weight": torch.randn(2, 3)})


@pytest.mark.parametrize("sd", [
    _lora_sd(torch.randn(8, 4), torch.randn(3, 16)),
    _lora_sd(torch.randn(8, 4, 3, 3), torch.randn(4, 16)),
    _lora_sd(torch.randn(8, 4, 1, 1), torch.randn(4, 16, 3, 3), **{"lora_mid.weight": torch.randn(4, 4, 3, 3)}),
    {f"{KEY}.hada_w1_a": torch.randn(4, 2), f"{KEY}.hada_w1_b": torch.randn(2, 3),
     f"{KEY}.hada_w2_a": torch.randn(4, 2), f"{KEY}.hada_w2_b": torch.randn(2, 5)},
    {f"{KEY}.lokr_w1": torch.randn(2, 2), f"{KEY}.lokr_w2_a": torch.randn(3, 2), f"{KEY}.lokr_w2_b": torch.randn(4, 5)},
    {f"{KEY}.diff": torch.randn(4, 3), f"{KEY}.diff_b": torch.randn(3)},
], ids=["lora-rank", "lora-up-kernel", "lora-mid", "loha", "lokr", "full-bias"])
def test_inconsistent_shapes(sd):
    _error(sd)


def test_two_layer_biases():
    _error(_lora_sd(torch.randn(4, 2), torch.randn(2, 3), bias=torch.ones(4), diff_b=torch.ones(4)))


def test_lokr_full_and_factored_at_once():
    _error({f"{KEY}.lokr_w1": torch.randn(2, 2), f"{KEY}.lokr_w1_a": torch.randn(2, 1),
            f"{KEY}.lokr_w1_b": torch.randn(1, 2), f"{KEY}.lokr_w2": torch.randn(3, 3)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensors(bad):
    down = torch.randn(2, 3)
    down[1, 1] = bad
    assert "lora_down.weight" in _error(_lora_sd(torch.randn(4, 2), down))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_bad_alpha(alpha):
    assert "alpha" in _error(_lora_sd(torch.randn(4, 2), torch.randn(2, 3), alpha))


def test_alpha_must_be_one_number():
    _error({**_lora_sd(torch.randn(4, 2), torch.randn(2, 3)), f"{KEY}.alpha": torch.ones(2)})


def test_zero_rank():
    assert "rank" in _error(_lora_sd(torch.randn(4, 0), torch.randn(0, 3)))


def test_integer_weights():
    _error(_lora_sd(torch.ones(4, 2, dtype=torch.int64), torch.randn(2, 3)))


@pytest.mark.parametrize("target", [(5, 3), (4, 3, 3, 3), (3, 4)])
def test_wrong_target_shape(target):
    module = parse_modules(_lora_sd(torch.randn(4, 2), torch.randn(2, 3)))[KEY]
    with pytest.raises(LoraShapeError) as info:
        module.delta_weight(torch.zeros(target))
    assert KEY in str(info.value) and str(list(target)) in str(info.value) and "[4, 3]" in str(info.value)


def test_dora_scale_that_fits_neither_axis():
    module = parse_modules(_lora_sd(torch.randn(4, 2), torch.randn(2, 3), dora_scale=torch.ones(5, 1)))[KEY]
    with pytest.raises(LoraShapeError, match=KEY):
        module.delta_weight(torch.zeros(4, 3))


def test_key_without_module_part():
    with pytest.raises(LoraFormatError, match="lora_up"):
        parse_modules({"lora_up": torch.zeros(1)}, path="x.safetensors")


def test_integer_alpha_is_accepted():
    sd = {**_lora_sd(torch.randn(3, 2), torch.randn(2, 3)), f"{KEY}.alpha": torch.tensor(4)}
    module = parse_modules(sd)[KEY]
    assert module.alpha == 4.0 and module.scale == 2.0


@pytest.mark.parametrize("down_shape, up_shape, target_shape", [
    ((3, 8), (5, 3), (5, 8)),
    ((3, 8, 1, 1), (5, 3, 1, 1), (5, 8, 1, 1)),
    ((3, 8, 3, 3), (5, 3, 1, 1), (5, 8, 3, 3)),
])
def test_low_rank_factors_reproduce_the_delta(down_shape, up_shape, target_shape):
    tensors = {"lora_down.weight": torch.randn(down_shape), "lora_up.weight": torch.randn(up_shape),
               "alpha": torch.tensor(1.5)}
    module = parse_modules({f"lora_unet_x.{k}": v for k, v in tensors.items()})["lora_unet_x"]
    up, down = module.low_rank_factors()
    base = torch.randn(target_shape)
    assert torch.allclose((up @ down).reshape(target_shape), module.delta_weight(base), atol=1e-5)
    tensors["dora_scale"] = torch.rand(target_shape[0], *[1] * (len(target_shape) - 1))
    with_dora = parse_modules({f"lora_unet_x.{k}": v for k, v in tensors.items()})["lora_unet_x"]
    assert with_dora.low_rank_factors() is None
