"""Optimizers by sd-scripts' names, with `optimizer_args` read as sd-scripts reads them.

`OptimizerConfig` holds the optimizer and learning-rate settings (schedule.py builds the scheduler from the
same config). Optional optimizers are imported only when chosen; a missing package is a ConfigError naming
the pip package, and bitsandbytes' 8-bit/paged optimizers are refused unless the parameters are on a CUDA GPU
(they run CUDA kernels). A dotted path (`bitsandbytes.optim.AdEMAMix8bit`) names any optimizer class; a bare
unknown name is looked up in `torch.optim`, as sd-scripts does. `check_optimizer` refuses, before a run does
any work, an optimizer that is not installed or arguments its class does not take; `split_args` is what the
Train tab keeps of optimizer_args when the optimizer changes.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError
from .values import check_number


@dataclass(frozen=True)
class OptimizerSpec:
    """Where an optimizer class lives, which pip package provides it, and what sd-scripts adds to its args."""

    module: str
    name: str
    package: str | None = None  # pip package, None for torch/transformers (always present)
    needs_cuda: bool = False
    defaults: tuple[tuple[str, Any], ...] = ()


_BNB = "bitsandbytes"
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec("torch.optim", "AdamW"),
    "adamw8bit": OptimizerSpec("bitsandbytes.optim", "AdamW8bit", _BNB, True),
    "pagedadamw": OptimizerSpec("bitsandbytes.optim", "PagedAdamW", _BNB, True),
    "pagedadamw8bit": OptimizerSpec("bitsandbytes.optim", "PagedAdamW8bit", _BNB, True),
    "pagedadamw32bit": OptimizerSpec("bitsandbytes.optim", "PagedAdamW32bit", _BNB, True),
    "lion": OptimizerSpec("lion_pytorch", "Lion", "lion-pytorch"),
    "lion8bit": OptimizerSpec("bitsandbytes.optim", "Lion8bit", _BNB, True),
    "pagedlion8bit": OptimizerSpec("bitsandbytes.optim", "PagedLion8bit", _BNB, True),
    "sgdnesterov": OptimizerSpec("torch.optim", "SGD", None, False, (("nesterov", True), ("momentum", 0.9))),
    "sgdnesterov8bit": OptimizerSpec("bitsandbytes.optim", "SGD8bit", _BNB, True,
                                     (("nesterov", True), ("momentum", 0.9))),
    "prodigy": OptimizerSpec("prodigyopt", "Prodigy", "prodigyopt"),
    "dadaptation": OptimizerSpec("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation"),
    "dadaptadampreprint": OptimizerSpec("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation"),
    "dadaptadagrad": OptimizerSpec("dadaptation", "DAdaptAdaGrad", "dadaptation"),
    "dadaptadam": OptimizerSpec("dadaptation", "DAdaptAdam", "dadaptation"),
    "dadaptadan": OptimizerSpec("dadaptation", "DAdaptAdan", "dadaptation"),
    "dadaptadanip": OptimizerSpec("dadaptation.experimental", "DAdaptAdanIP", "dadaptation"),
    "dadaptlion": OptimizerSpec("dadaptation", "DAdaptLion", "dadaptation"),
    "dadaptsgd": OptimizerSpec("dadaptation", "DAdaptSGD", "dadaptation"),
    "adafactor": OptimizerSpec("transformers.optimization", "Adafactor"),
}
"""sd-scripts' optimizer_type names (matched without case) -> class, pip package, CUDA need, added defaults."""

LARGE_STEP = 0.1
"""A learning rate from here up is a factor for an optimizer that adapts its step size, far too large otherwise."""
SCHEDULERS: tuple[str, ...] = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                               "polynomial", "adafactor")

OPTIMIZER_HELP: dict[str, str] = {
    "optimizer_type": "AdamW, AdamW8bit, Lion, Lion8bit, Prodigy, DAdaptAdam, DAdaptLion, DAdaptation, AdaFactor, "
                      "SGDNesterov, or a class path like torch.optim.RAdam",
    "optimizer_args": "extra optimizer settings as key=value, e.g. weight_decay=0.01 betas=0.9,0.99",
    "learning_rate": "learning rate (about 1e-4 for AdamW; 1.0 for Prodigy and the DAdapt optimizers)",
    "unet_lr": "learning rate of the UNet modules (learning_rate when unset)",
    "text_encoder_lr": "learning rate of the text-encoder modules (learning_rate when unset; 0 = not trained)",
    "max_grad_norm": "clip the gradient norm to this (0 = no clipping)",
    "lr_scheduler": "how the learning rate changes: " + ", ".join(SCHEDULERS),
    "lr_warmup_steps": "warm-up length in steps, or a fraction of the run below 1 (0.05 = the first 5%)",
    "lr_scheduler_num_cycles": "cosine_with_restarts: how many cosine cycles (hard restarts)",
    "lr_scheduler_power": "polynomial: the exponent of the decay",
}
"""One line per OptimizerConfig field: the words the command line and the Train tab both show."""


@dataclass
class OptimizerConfig:
    """sd-scripts' optimizer and LR-schedule options; validates itself (ConfigError names field and value)."""

    optimizer_type: str = "AdamW"
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: float = 0
    lr_scheduler_num_cycles: int = 1
    lr_scheduler_power: float = 1.0

    def __post_init__(self) -> None:
        self.optimizer_args = parse_optimizer_args(self.optimizer_args)
        if not isinstance(self.optimizer_type, str) or not self.optimizer_type.strip():
            raise ConfigError("optimizer_type", self.optimizer_type, "expected an optimizer name")
        check_number("learning_rate", self.learning_rate, minimum=0.0)
        for name in ("unet_lr", "text_encoder_lr"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), minimum=0.0)
        check_number("max_grad_norm", self.max_grad_norm, minimum=0.0)
        check_number("lr_warmup_steps", self.lr_warmup_steps, minimum=0.0)
        if self.lr_warmup_steps >= 1 and self.lr_warmup_steps != int(self.lr_warmup_steps):
            raise ConfigError("lr_warmup_steps", self.lr_warmup_steps,
                              "expected whole steps, or a fraction below 1 of the total steps")
        if isinstance(self.lr_scheduler_num_cycles, bool) or not isinstance(self.lr_scheduler_num_cycles, int) \
                or self.lr_scheduler_num_cycles < 1:
            raise ConfigError("lr_scheduler_num_cycles", self.lr_scheduler_num_cycles, "expected a whole number ≥ 1")
        check_number("lr_scheduler_power", self.lr_scheduler_power, minimum=0.0, exclusive=True)
        if self.lr_scheduler not in SCHEDULERS:
            close = difflib.get_close_matches(str(self.lr_scheduler), SCHEDULERS, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError("lr_scheduler", self.lr_scheduler, f"expected one of {', '.join(SCHEDULERS)}{hint}")
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            raise ConfigError("lr_warmup_steps", self.lr_warmup_steps,
                              "the constant scheduler has no warm-up; use lr_scheduler = constant_with_warmup")
        relative = self.adafactor_relative_step
        if self.lr_scheduler == "adafactor" and not relative:
            raise ConfigError("lr_scheduler", "adafactor", "the adafactor scheduler only follows Adafactor with "
                                                           "relative_step=True (its own automatic learning rate)")
        if relative and self.lr_scheduler not in ("adafactor", "constant"):
            raise ConfigError("lr_scheduler", self.lr_scheduler,
                              "Adafactor with relative_step=True sets its own learning rate; use lr_scheduler = "
                              "adafactor, or optimizer_args relative_step=False scale_parameter=False "
                              "warmup_init=False for a fixed one")

    @property
    def adafactor_relative_step(self) -> bool:
        """Whether this is Adafactor choosing its own LR (sd-scripts' default; warmup_init implies it)."""
        if self.optimizer_type.lower() != "adafactor":
            return False
        args = self.optimizer_args
        return bool(args.get("relative_step", True)) or bool(args.get("warmup_init", False))

    def describe(self) -> str:
        """sd-scripts' ss_optimizer text: the class path, and the args when there are any."""
        spec = OPTIMIZERS.get(self.optimizer_type.lower())
        path = f"{spec.module}.{spec.name}" if spec else self.optimizer_type
        args = ",".join(f"{k}={v!r}" for k, v in self.optimizer_args.items())
        return f"{path}({args})" if args else path


def parse_optimizer_args(value: Mapping[str, Any] | Iterable[str] | str | None) -> dict[str, Any]:
    """{key: value} from sd-scripts' ["k=v", ...] (each value through ast.literal_eval) or from a mapping.

    "betas=0.9,0.99" gives the tuple (0.9, 0.99), "decouple=True" True. A value that is not a Python literal,
    a missing "=" or a repeated key raises ConfigError.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k).strip(): (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
    items = value.split() if isinstance(value, str) else list(value)
    parsed: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError("optimizer_args", item, "each item must be key=value, e.g. weight_decay=0.01")
        key, text = (part.strip() for part in item.split("=", 1))
        if not key or key in parsed:
            raise ConfigError("optimizer_args", item, "empty key" if not key else f"{key} is given twice")
        try:
            parsed[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"optimizer_args.{key}", text, "expected a Python literal: a number, True/False, "
                                                             "None, a quoted string or numbers like 0.9,0.99") from None
    return parsed


def format_optimizer_args(args: Mapping[str, Any]) -> list[str]:
    """sd-scripts' ["k=v", ...] form of `args` (parse_optimizer_args reads it back equal)."""
    def text(value: Any) -> str:
        return ",".join(repr(v) for v in value) if isinstance(value, tuple) and value else repr(value)

    return [f"{key}={text(value)}" for key, value in args.items()]


def optimizer_class(config: OptimizerConfig) -> tuple[type[torch.optim.Optimizer], OptimizerSpec | None]:
    """The class `optimizer_type` names (importing its package now), and its table entry when it has one."""
    return class_for(config.optimizer_type)


def class_for(optimizer_type: str) -> tuple[type[torch.optim.Optimizer], OptimizerSpec | None]:
    """The class an optimizer_type names and its table entry; ConfigError (with the fix) when it cannot be had."""
    name = optimizer_type.strip()
    spec = OPTIMIZERS.get(name.lower())
    if spec is not None:
        return _import(spec.module, spec.name, spec.package, name), spec
    if "." in name:
        module, _, cls = name.rpartition(".")
        return _import(module, cls, module.split(".")[0], name), None
    if isinstance(getattr(torch.optim, name, None), type):
        return getattr(torch.optim, name), None
    close = difflib.get_close_matches(name.lower(), list(OPTIMIZERS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError("optimizer_type", name, "unknown optimizer: expected one of AdamW, AdamW8bit, Lion, Lion8bit, "
                      f"Prodigy, DAdapt…, AdaFactor, SGDNesterov, a torch.optim name or a class path{hint}")


def _import(module: str, name: str, package: str | None, shown: str) -> type:
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as error:
        missing = package or module.split(".")[0]
        # the package's own import failing on something else it needs is worth showing; its absence says itself
        detail = "" if error.name == module.split(".")[0] else f" ({error})"
        raise ConfigError("optimizer_type", shown, missing_package_reason(missing) + detail) from None
    except AttributeError:
        raise ConfigError("optimizer_type", shown, f"{module} has no {name}") from None
    if not isinstance(cls, type):
        raise ConfigError("optimizer_type", shown, f"{module}.{name} is not a class")
    return cls


def pip_command(package: str) -> str:
    """The command that installs `package` into this Python."""
    return f'"{sys.executable}" -m pip install {package}'


def missing_package_reason(package: str) -> str:
    """Why an optimizer cannot run without `package`, and the two ways on."""
    return (f"needs the Python package {package!r}, which is not installed in this Python: install it "
            f"({pip_command(package)}) or choose another optimizer (AdamW needs nothing more)")


def optimizer_package(optimizer_type: str) -> str | None:
    """The pip package `optimizer_type` needs beyond torch and transformers (None: nothing more, or a bare
    torch.optim name)."""
    name = (optimizer_type or "").strip()
    spec = OPTIMIZERS.get(name.lower())
    if spec is not None:
        return spec.package
    top = name.split(".")[0] if "." in name else ""
    return top if top and top not in ("torch", "transformers") else None


def missing_package(optimizer_type: str) -> str | None:
    """The pip package `optimizer_type` needs that this Python lacks, None when nothing is missing."""
    package = optimizer_package(optimizer_type)
    if package is None:
        return None
    spec = OPTIMIZERS.get(optimizer_type.strip().lower())
    module = spec.module.split(".")[0] if spec is not None else package
    importlib.invalidate_caches()  # a package installed since the last look is seen
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else package


def adapts_step_size(optimizer_type: str) -> bool:
    """Whether the optimizer finds its own step size (DAdapt…, Prodigy): learning_rate is a factor, usually 1.0."""
    name = (optimizer_type or "").strip().lower()
    return name.startswith("dadapt") or name == "prodigy"


def accepted_args(optimizer_type: str) -> frozenset[str] | None:
    """The keyword arguments the optimizer's class takes; None when it takes any, or cannot be imported to tell."""
    try:
        cls, _ = class_for(optimizer_type)
        parameters = inspect.signature(cls).parameters.values()
    except (ConfigError, TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters if p.kind in named) - {"params"}


def split_args(optimizer_type: str, args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kept, dropped): `args` by whether the optimizer takes them (all kept when that cannot be told)."""
    accepted = accepted_args(optimizer_type)
    if accepted is None:
        return dict(args), {}
    return ({k: v for k, v in args.items() if k in accepted}, {k: v for k, v in args.items() if k not in accepted})


def check_optimizer(config: OptimizerConfig) -> None:
    """Refuse, before any work, an optimizer that is unknown or not installed, or optimizer_args its class does
    not take (ConfigError naming the package or the arguments, and the fix)."""
    cls, _ = optimizer_class(config)
    _, dropped = split_args(config.optimizer_type, config.optimizer_args)
    if dropped:
        accepted = ", ".join(sorted(accepted_args(config.optimizer_type) or ()))
        raise ConfigError("optimizer_args", " ".join(format_optimizer_args(dropped)),
                          f"{cls.__name__} does not take {', '.join(dropped)}: remove "
                          f"{'it' if len(dropped) == 1 else 'them'} from optimizer_args ({cls.__name__} takes "
                          f"{accepted})")


def build_optimizer(config: OptimizerConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer for `param_groups` (from TrainableNetwork.param_groups), with optimizer_args as keywords.

    As sd-scripts: SGDNesterov adds nesterov=True and momentum 0.9 unless given; relative-step Adafactor gets no
    learning rate (its groups' lr are dropped). torch's Adam/AdamW run fused where this torch has the kernel for
    the parameters' device, unless optimizer_args choose (fused=False / foreach=...). ConfigError for a missing
    package, 8-bit optimizers without CUDA parameters, and arguments the optimizer does not take.
    """
    cls, spec = optimizer_class(config)
    kwargs = dict(spec.defaults if spec else ())
    kwargs.update(config.optimizer_args)
    groups = [dict(group) for group in param_groups]
    if not groups or not any(group["params"] for group in groups):
        raise ConfigError("learning_rate", config.learning_rate, "no parameter has a learning rate above 0")
    if spec is not None and spec.needs_cuda:
        devices = {p.device.type for group in groups for p in group["params"]}
        if devices != {"cuda"}:
            raise ConfigError("optimizer_type", config.optimizer_type,
                              "bitsandbytes' 8-bit and paged optimizers run on a CUDA GPU only; the parameters are "
                              f"on {', '.join(sorted(devices))}: use AdamW (or Lion, Adafactor) here")
    lr: float | None = config.learning_rate
    if config.adafactor_relative_step:
        kwargs.setdefault("relative_step", True)
        for group in groups:
            group.pop("lr", None)
        lr = None
    if cls in (torch.optim.AdamW, torch.optim.Adam) and not {"fused", "foreach"} & kwargs.keys():
        try:  # one kernel per parameter instead of a dozen ops (on the CPU the for-loop is torch's default)
            return cls(groups, lr=lr, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass  # no fused kernel in this torch for these parameters' device: its default implementation
    try:
        return cls(groups, lr=lr, **kwargs)
    except TypeError as error:
        raise ConfigError("optimizer_args", kwargs, f"{cls.__name__} does not take these: {error}") from None
    except ValueError as error:
        raise ConfigError("optimizer_args", kwargs, f"{cls.__name__} refused them: {error}") from None


def optimizer_notes(config: OptimizerConfig, param_groups: list[dict]) -> list[str]:
    """Advice sd-scripts prints for a setting that works but is probably not meant (the caller shows it)."""
    notes = []
    name = config.optimizer_type.lower()
    if adapts_step_size(name):
        if config.learning_rate <= 0.1:
            notes.append(f"{config.optimizer_type} picks its own step size: learning_rate is a factor, usually 1.0 "
                         f"(got {config.learning_rate:g})")
        if len({group.get("lr") for group in param_groups}) > 1:
            notes.append(f"{config.optimizer_type} adapts one step size from the first group's learning rate; the "
                         "others scale it (LoRA+, separate UNet/text-encoder rates, block weights)")
    elif not config.adafactor_relative_step and config.learning_rate >= LARGE_STEP:
        notes.append(f"{config.optimizer_type} takes learning_rate as its step size: {config.learning_rate:g} is far "
                     "above the usual 1e-4 (a learning rate of 1 is for the DAdapt optimizers and Prodigy)")
    if name == "adafactor" and not config.adafactor_relative_step and config.max_grad_norm:
        notes.append("Adafactor clips updates itself; max_grad_norm = 0 is usual with it")
    return notes
