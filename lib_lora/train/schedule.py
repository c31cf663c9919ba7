"""Learning-rate schedules by sd-scripts' names, built with transformers' schedule functions.

transformers.optimization is in both environments (diffusers, whose get_scheduler sd-scripts also uses, is
not in A1111's), and its functions are the ones sd-scripts' names stand for: warm-up from 0, then constant,
linear to 0, half a cosine to 0, `lr_scheduler_num_cycles` cosines with hard restarts, or a polynomial of
power `lr_scheduler_power` to 1e-7. `adafactor` reports the LR relative-step Adafactor chooses itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import optimization as hf

from .errors import ConfigError
from .optim import OptimizerConfig


def warmup_steps(config: OptimizerConfig, total_steps: int) -> int:
    """lr_warmup_steps as steps: a value below 1 is a fraction of `total_steps` (rounded down), else steps."""
    value = config.lr_warmup_steps
    return int(value * total_steps) if 0 < value < 1 else int(value)


def _schedules(config: OptimizerConfig, warmup: int, total: int) -> dict[str, Callable]:
    return {
        "constant": lambda opt: hf.get_constant_schedule(opt),
        "constant_with_warmup": lambda opt: hf.get_constant_schedule_with_warmup(opt, warmup),
        "linear": lambda opt: hf.get_linear_schedule_with_warmup(opt, warmup, total),
        "cosine": lambda opt: hf.get_cosine_schedule_with_warmup(opt, warmup, total),
        "cosine_with_restarts": lambda opt: hf.get_cosine_with_hard_restarts_schedule_with_warmup(
            opt, warmup, total, num_cycles=config.lr_scheduler_num_cycles),
        "polynomial": lambda opt: hf.get_polynomial_decay_schedule_with_warmup(
            opt, warmup, total, power=config.lr_scheduler_power),
        "adafactor": lambda opt: hf.AdafactorSchedule(opt, initial_lr=config.learning_rate),
    }


def build_scheduler(config: OptimizerConfig, optimizer: torch.optim.Optimizer, *,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler `config.lr_scheduler` names over `total_steps` optimizer steps.

    Relative-step Adafactor always gets the adafactor schedule (OptimizerConfig refuses any other than
    constant for it). ConfigError when the warm-up is not shorter than the run or total_steps < 1.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError("max_train_steps", total_steps, "the run needs at least one step")
    warmup = warmup_steps(config, total_steps)
    if warmup >= total_steps and config.lr_scheduler != "constant_with_warmup":
        raise ConfigError("lr_warmup_steps", config.lr_warmup_steps,
                          f"the warm-up ({warmup} steps) must be shorter than the run ({total_steps} steps)")
    name = "adafactor" if config.adafactor_relative_step else config.lr_scheduler
    return _schedules(config, warmup, total_steps)[name](optimizer)
