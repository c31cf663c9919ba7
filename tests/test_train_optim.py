"""Optimizers and LR schedules: sd-scripts' names and args, each available optimizer lowering a toy loss,
clear errors for missing packages and CPU-only 8-bit optimizers, and every schedule's curve against its formula."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import pytest
import torch

from lib_lora.train.errors import ConfigError
from lib_lora.train.optim import (
    OPTIMIZER_HELP,
    OPTIMIZERS,
    OptimizerConfig,
    build_optimizer,
    format_optimizer_args,
    optimizer_notes,
    parse_optimizer_args,
)
from lib_lora.train.schedule import build_scheduler, warmup_steps

pytestmark = pytest.mark.hostcompat


def test_help_covers_every_field():
    assert set(OPTIMIZER_HELP) == {f.name for f in dataclasses.fields(OptimizerConfig)}


@pytest.mark.parametrize(("given_args", "expected"), [
    (["weight_decay=0.01", "betas=0.9,0.99"], {"weight_decay": 0.01, "betas": (0.9, 0.99)}),
    (["decouple=True", "d_coef=2", "eps=1e-8"], {"decouple": True, "d_coef": 2, "eps": 1e-8}),
    ("relative_step=False scale_parameter=False", {"relative_step": False, "scale_parameter": False}),
    (["name='x'", "growth_rate=None"], {"name": "x", "growth_rate": None}),
    ({"betas": [0.9, 0.999], "weight_decay": 0}, {"betas": (0.9, 0.999), "weight_decay": 0}),
])
def test_optimizer_args_as_sd_scripts_reads_them(given_args, expected):
    parsed = parse_optimizer_args(given_args)
    assert parsed == expected
    assert parse_optimizer_args(format_optimizer_args(parsed)) == parsed


@pytest.mark.parametrize(("fields", "key", "fragment"), [
    ({"optimizer_args": ["weight_decay"]}, "optimizer_args", "key=value"),
    ({"optimizer_args": ["betas=(0.9"]}, "optimizer_args.betas", "Python literal"),
    ({"optimizer_args": ["mode=fast"]}, "optimizer_args.mode", "quoted string"),
    ({"learning_rate": -1e-4}, "learning_rate", "at least 0"),
    ({"lr_scheduler": "cosine_restarts"}, "lr_scheduler", "did you mean cosine_with_restarts"),
    ({"lr_warmup_steps": 1.5}, "lr_warmup_steps", "whole steps"),
    ({"lr_warmup_steps": 100}, "lr_warmup_steps", "constant_with_warmup"),
    ({"lr_scheduler_num_cycles": 0}, "lr_scheduler_num_cycles", "≥ 1"),
    ({"lr_scheduler": "adafactor"}, "lr_scheduler", "relative_step=True"),
    ({"optimizer_type": "AdaFactor", "lr_scheduler": "cosine"}, "lr_scheduler", "relative_step=False"),
])
def test_bad_settings_name_the_setting(fields, key, fragment):
    with pytest.raises(ConfigError) as caught:
        OptimizerConfig(**fields)
    assert caught.value.key == key and fragment in str(caught.value)


def _toy_problem(seed: int = 0):
    """Two parameter groups (as a network gives them) and a quadratic loss with its minimum away from 0."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.nn.Parameter(torch.randn(8, 4, generator=generator))
    b = torch.nn.Parameter(torch.randn(4, generator=generator))
    goal_a, goal_b = torch.randn(8, 4, generator=generator), torch.randn(4, generator=generator)

    def loss() -> torch.Tensor:
        return ((a - goal_a) ** 2).mean() + ((b - goal_b) ** 2).mean()

    return [{"params": [a], "lr": 1.0, "name": "unet"}, {"params": [b], "lr": 1.0, "name": "unet plus"}], loss


OPTIMIZER_CASES = [
    ("AdamW", 1e-1, []),
    ("SGDNesterov", 1e-1, []),
    ("torch.optim.RAdam", 1e-1, []),
    ("Adagrad", 1e-1, []),
    ("AdaFactor", 1e-1, []),
    ("AdaFactor", 1e-1, ["relative_step=False", "scale_parameter=False", "warmup_init=False"]),
    ("Lion", 1e-2, ["weight_decay=0.0"]),
    ("Prodigy", 1.0, ["d0=1e-3"]),
    ("DAdaptAdam", 1.0, ["d0=1e-3"]),
    ("DAdaptLion", 1.0, ["d0=1e-3"]),
    ("DAdaptation", 1.0, ["d0=1e-6"]),
]


@pytest.mark.parametrize(("name", "lr", "args"), OPTIMIZER_CASES)
def test_each_available_optimizer_lowers_a_toy_loss(name, lr, args):
    spec = OPTIMIZERS.get(name.lower())
    if spec is not None and spec.package and importlib.util.find_spec(spec.module.split(".")[0]) is None:
        pytest.skip(f"{spec.package} is not installed here")
    config = OptimizerConfig(optimizer_type=name, learning_rate=lr, optimizer_args=args)
    groups, loss = _toy_problem()
    for group in groups:
        group["lr"] = lr
    optimizer = build_optimizer(config, groups)
    scheduler = build_scheduler(config, optimizer, total_steps=60)
    start = loss().item()
    for _ in range(60):
        value = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        scheduler.step()
    assert loss().item() < start * 0.9, (name, start, loss().item())


def test_sgd_nesterov_and_relative_adafactor_get_sd_scripts_defaults():
    groups, _ = _toy_problem()
    sgd = build_optimizer(OptimizerConfig(optimizer_type="SGDNesterov"), groups)
    assert (sgd.defaults["nesterov"], sgd.defaults["momentum"]) == (True, 0.9)
    ada = build_optimizer(OptimizerConfig(optimizer_type="AdaFactor"), _toy_problem()[0])
    assert ada.defaults["relative_step"] is True and all("lr" not in g or g["lr"] is None for g in ada.param_groups)
    assert type(build_scheduler(OptimizerConfig(optimizer_type="AdaFactor"), ada, total_steps=10)).__name__ \
        == "AdafactorSchedule"


def test_adamw_runs_fused_where_torch_can_and_steps_as_the_default():
    def trained(config: OptimizerConfig) -> tuple[torch.optim.Optimizer, torch.Tensor]:
        groups, loss = _toy_problem()
        optimizer = build_optimizer(config, groups)
        for _ in range(5):
            optimizer.zero_grad()
            loss().backward()
            optimizer.step()
        return optimizer, torch.cat([p.detach().flatten() for g in groups for p in g["params"]])

    fused, fused_weights = trained(OptimizerConfig(optimizer_args=["weight_decay=0.1"]))
    plain, plain_weights = trained(OptimizerConfig(optimizer_args=["weight_decay=0.1", "fused=False"]))
    assert fused.defaults["fused"] is True  # torch >= 2.4 has the CPU kernel
    assert not plain.defaults["fused"] and fused.defaults["weight_decay"] == 0.1
    torch.testing.assert_close(fused_weights, plain_weights, rtol=1e-5, atol=1e-6)
    assert not torch.equal(plain_weights, trained(OptimizerConfig(optimizer_args=["fused=False"]))[1])


def test_adamw_falls_back_where_torch_has_no_fused_kernel(monkeypatch):
    original = torch.optim.AdamW.__init__

    def no_fused_kernel(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported "
                               "devices: ['cuda']")  # torch 2.1 on the CPU
        original(self, params, *args, fused=fused, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", no_fused_kernel)
    optimizer = build_optimizer(OptimizerConfig(), _toy_problem()[0])
    assert not optimizer.defaults["fused"]


@pytest.mark.parametrize(("name", "fragment"), [
    ("AdamW8bit", "CUDA GPU only|'bitsandbytes'"),
    ("PagedLion8bit", "CUDA GPU only|'bitsandbytes'"),
    ("nonexistent_pkg.optim.Fancy", "pip install nonexistent_pkg"),
    ("torch.optim.NoSuchThing", "has no NoSuchThing"),
    ("Adamw9bit", "did you mean"),
])
def test_unavailable_optimizers_say_why(name, fragment):
    groups, _ = _toy_problem()
    with pytest.raises(ConfigError, match=fragment) as caught:
        build_optimizer(OptimizerConfig(optimizer_type=name), groups)
    assert caught.value.key == "optimizer_type"


def test_missing_optional_package_names_its_pip_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # what Python does for a package that is not there
    with pytest.raises(ConfigError, match="pip install prodigyopt"):
        build_optimizer(OptimizerConfig(optimizer_type="Prodigy", learning_rate=1.0), _toy_problem()[0])


def test_optimizer_args_the_class_does_not_take():
    with pytest.raises(ConfigError, match="AdamW does not take"):
        build_optimizer(OptimizerConfig(optimizer_args=["d0=1e-6"]), _toy_problem()[0])


def test_notes_for_adaptive_optimizers():
    groups, _ = _toy_problem()
    groups[1]["lr"] = 16.0
    notes = optimizer_notes(OptimizerConfig(optimizer_type="DAdaptLion", learning_rate=1e-4), groups)
    assert len(notes) == 2 and "usually 1.0" in notes[0]
    assert optimizer_notes(OptimizerConfig(), groups) == []
    assert OptimizerConfig(optimizer_args=["weight_decay=0.1"]).describe() == "torch.optim.AdamW(weight_decay=0.1)"


# --- schedules ---------------------------------------------------------------------------------------------------

TOTAL, BASE_LR = 100, 0.01


def _curve(config: OptimizerConfig) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=config.learning_rate)
    scheduler = build_scheduler(config, optimizer, total_steps=TOTAL)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _cosine(progress: float, cycles: float = 0.5) -> float:
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * cycles * progress)))


def _hard_restarts(progress: float, cycles: int) -> float:
    return 0.0 if progress >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))


def _polynomial(progress: float, power: float) -> float:
    end = 1e-7 / BASE_LR
    return (1 - end) * (1 - progress) ** power + end


@pytest.mark.parametrize(("fields", "factor"), [
    ({"lr_scheduler": "constant"}, lambda s, w: 1.0),
    ({"lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 10}, lambda s, w: min(1.0, s / w)),
    ({"lr_scheduler": "linear", "lr_warmup_steps": 10},
     lambda s, w: s / w if s < w else (TOTAL - s) / (TOTAL - w)),
    ({"lr_scheduler": "cosine", "lr_warmup_steps": 0.1},
     lambda s, w: s / w if s < w else _cosine((s - w) / (TOTAL - w))),
    ({"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 3, "lr_warmup_steps": 5},
     lambda s, w: s / w if s < w else _hard_restarts((s - w) / (TOTAL - w), 3)),
    ({"lr_scheduler": "polynomial", "lr_scheduler_power": 2.0, "lr_warmup_steps": 10},
     lambda s, w: s / w if s < w else _polynomial((s - w) / (TOTAL - w), 2.0)),
])
def test_schedule_curves_follow_their_formulas(fields, factor):
    config = OptimizerConfig(learning_rate=BASE_LR, **fields)
    warmup = warmup_steps(config, TOTAL)
    lrs = _curve(config)
    for step in (0, 1, 5, 9, 10, 11, 30, 50, 70, 99):
        assert lrs[step] == pytest.approx(BASE_LR * factor(step, warmup), abs=1e-9), (fields, step)


@pytest.mark.parametrize(("value", "steps"), [(0, 0), (0.1, 10), (0.05, 5), (10, 10), (10.0, 10)])
def test_warmup_steps_or_ratio(value, steps):
    assert warmup_steps(OptimizerConfig(lr_scheduler="cosine", lr_warmup_steps=value), TOTAL) == steps


def test_warmup_longer_than_the_run_is_refused():
    config = OptimizerConfig(lr_scheduler="cosine", lr_warmup_steps=200)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="shorter than the run"):
        build_scheduler(config, optimizer, total_steps=TOTAL)
    with pytest.raises(ConfigError, match="at least one step"):
        build_scheduler(OptimizerConfig(), optimizer, total_steps=0)
