"""The Train tab's form as data: which options it shows, where (basic or an advanced section), how each is typed.

Every field is one sd-scripts option, labelled with its name and helped by the one help table (`TRAIN_HELP`,
`NETWORK_ARGS_HELP`), so the tab, the command line and a TOML file say the same words. A few `network_args`
keys (algo, conv_dim, conv_alpha, train_blocks) get fields of their own; the rest stay in the `network_args` box.
Pure: form values (what gradio hands back: text, booleans, a choice) ⇄ a validated `TrainConfig`; a bad value is
a ConfigError naming the option.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from ...dataset.roots import AllowedRoots
from ...errors import LoraStudioError
from ...train.config import OPTION_PART, OPTION_SECTIONS, PARTS, TRAIN_HELP, TrainConfig, toml_value
from ...train.errors import ConfigError
from ...train.modes.config import DIFFERENCE_METHODS, MODE_NAMES
from ...train.network.config import ALGOS, NETWORK_ARGS_HELP, NETWORK_MODULES, format_network_args
from ...train.noise import HUBER_SCHEDULES, LOSS_TYPES
from ...train.optim import OPTIMIZERS, SCHEDULERS
from ...train.run_config import MIXED_PRECISIONS, SAVE_FORMATS, SAVE_PRECISIONS

Kind = Literal["bool", "int", "float", "text", "args"]

# Options the tab fills itself (the dataset picker, the output name and trigger word fields, the LoRA folder,
# the prompt box written to a prompt file, the loaded model).
OWN_FIELDS = ("train_data_dir", "output_name", "activation_text", "output_dir", "sample_prompts",
              "pretrained_model_name_or_path")
DATA_PATH_FIELDS = ("reg_data_dir", "validation_dir", "difference_original", "difference_target",
                    "slider_prompts_file")
"""Options naming a file or folder a run reads: the tab accepts them only inside the allowed dataset folders."""
LIST_FIELDS = ("rounds",)
"""Options that are lists of words without spaces (one per line in their box, like network_args)."""
NETWORK_ARG_FIELDS = ("algo", "conv_dim", "conv_alpha", "train_blocks")
"""`network_args` keys with a field of their own (in the basic group)."""

BASIC = ("training_mode", "network_module", "algo", "network_dim", "network_alpha", "conv_dim", "conv_alpha",
         "train_blocks", "optimizer_type", "learning_rate", "lr_scheduler", "max_train_steps", "max_train_epochs",
         "resolution", "train_batch_size", "caption_extension")
SAMPLES = ("sample_every_n_steps", "sample_every_n_epochs", "sample_at_first")
SECTION_TITLES = {
    "additional_network_arguments": "Network",
    "optimizer_arguments": "Optimizer and learning rate",
    "dataset_arguments": "Dataset and captions",
    "training_arguments": "Training",
    "saving_arguments": "Saving",
    "model_arguments": "Model",
    "sample_prompt_arguments": "Samples",
    "training_mode_arguments": "Training mode: slider, difference and rounds options",
}
_PART_SECTION = {"data": "dataset_arguments", "network": "additional_network_arguments",
                 "optimizer": "optimizer_arguments"}

# sd-scripts' spellings of the optimizer names (OPTIMIZERS matches them without case); any class path is accepted
_OPTIMIZER_SPELLINGS = ("AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
                        "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "Prodigy", "DAdaptation",
                        "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP",
                        "DAdaptLion", "DAdaptSGD", "AdaFactor")
OPTIMIZER_CHOICES = tuple(name for name in _OPTIMIZER_SPELLINGS if name.lower() in OPTIMIZERS)

CHOICES: dict[str, tuple[str, ...]] = {
    "network_module": NETWORK_MODULES,
    "algo": ALGOS,
    "optimizer_type": OPTIMIZER_CHOICES,
    "lr_scheduler": SCHEDULERS,
    "mixed_precision": MIXED_PRECISIONS,
    "save_precision": ("",) + SAVE_PRECISIONS,
    "save_model_as": SAVE_FORMATS,
    "loss_type": LOSS_TYPES,
    "huber_schedule": HUBER_SCHEDULES,
    "training_mode": MODE_NAMES,
    "difference_method": DIFFERENCE_METHODS,
}
CUSTOM_CHOICES = ("optimizer_type", "train_blocks")
"""Choice fields that also take a typed value (an optimizer class path; a block list such as IN04-IN07)."""


@dataclass(frozen=True)
class FormField:
    """One field: the option's name (also its label), how its value is typed, its default as the form shows it."""

    name: str
    kind: Kind
    optional: bool
    default: Any
    help: str
    group: str
    """"basic", "samples" or the sd-scripts config-file section the option belongs to."""
    choices: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name} (network_args)" if self.name in NETWORK_ARG_FIELDS else self.name


def _kind(annotation: str, name: str) -> tuple[Kind, bool]:
    optional = "None" in annotation
    if name == "resolution":
        return "text", False
    if annotation.startswith("dict") or name in LIST_FIELDS:
        return "args", False
    for kind in ("bool", "int", "float"):
        if annotation.split(" | ")[0] == kind:
            return kind, optional  # type: ignore[return-value]
    return "text", optional


def _group(name: str) -> str:
    if name in BASIC:
        return "basic"
    if name in SAMPLES:
        return "samples"
    return OPTION_SECTIONS.get(name) or _PART_SECTION[OPTION_PART[name]]


def _build_fields() -> tuple[FormField, ...]:
    defaults = TrainConfig().to_dict()
    built: list[FormField] = []
    for _, cls in PARTS:
        for item in fields(cls):
            if item.name in OWN_FIELDS:
                continue
            kind, optional = _kind(str(item.type), item.name)
            built.append(FormField(item.name, kind, optional, to_form(item.name, kind, defaults[item.name]),
                                   TRAIN_HELP[item.name], _group(item.name), CHOICES.get(item.name, ())))
    network_arg_kinds: dict[str, tuple[Kind, Any]] = {
        "algo": ("text", "lora"), "conv_dim": ("int", ""), "conv_alpha": ("float", ""), "train_blocks": ("text", ""),
    }
    for name, (kind, default) in network_arg_kinds.items():
        built.append(FormField(name, kind, name != "algo", default, NETWORK_ARGS_HELP[name], "basic",
                               CHOICES.get(name, ())))
    order = {name: index for index, name in enumerate(BASIC + SAMPLES)}
    return tuple(sorted(built, key=lambda f: (f.group != "basic", f.group != "samples", order.get(f.name, 0))))


def to_form(name: str, kind: Kind, value: Any) -> Any:
    """An option's Python value as its field shows it (text for numbers, 'k=v' lines for argument tables)."""
    if kind == "bool":
        return bool(value)
    if value is None:
        return ""
    if kind == "args":
        return "\n".join(toml_value(value)) if value else ""
    if name == "resolution":
        width, height = value
        return str(width) if width == height else f"{width},{height}"
    return repr(value) if isinstance(value, float) else str(value)


def from_form(field: FormField, value: Any) -> Any:
    """A field's value as the option's Python value; ConfigError (naming the option) when it cannot be one."""
    key = f"network_args.{field.name}" if field.name in NETWORK_ARG_FIELDS else field.name
    if field.kind == "bool":
        return bool(value)
    text = "" if value is None else str(value).strip()
    if field.kind == "args":
        return [item for item in text.split() if item]
    if not text:
        if field.optional or field.kind == "text":
            return None if field.optional or field.name in NETWORK_ARG_FIELDS else ""
        raise ConfigError(key, text, "must be set")
    if field.kind == "text":
        return text
    return parse_number(key, text, whole=field.kind == "int")


def parse_number(key: str, text: str, *, whole: bool) -> int | float:
    """A field's number: finite; an int when `whole` (else ConfigError) or when typed as one ("16", not "16.0" or
    "1e3"); a float otherwise. ConfigError naming `key` when the text is not such a number."""
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(key, text, "expected a whole number" if whole else "expected a number") from None
    if not math.isfinite(number):
        raise ConfigError(key, text, "must be a finite number")
    if whole and not number.is_integer():
        raise ConfigError(key, text, "expected a whole number")
    typed_whole = "." not in text and "e" not in text.lower()
    return int(number) if number.is_integer() and (whole or typed_whole) else number


FIELDS: tuple[FormField, ...] = _build_fields()
FIELD_BY_NAME: dict[str, FormField] = {f.name: f for f in FIELDS}
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)


def default_values() -> dict[str, Any]:
    """Every field's default as the form shows it."""
    return {f.name: f.default for f in FIELDS}


def values_of(config: TrainConfig) -> dict[str, Any]:
    """Every field's value for `config` (the own fields — dataset, name, trigger — are not included)."""
    options = config.to_dict()
    args = dict(options["network_args"])
    values: dict[str, Any] = {}
    for f in FIELDS:
        if f.name in NETWORK_ARG_FIELDS:
            values[f.name] = args.pop(f.name, f.default)
    for f in FIELDS:
        if f.name == "network_args":
            values[f.name] = "\n".join(format_network_args(args))
        elif f.name not in NETWORK_ARG_FIELDS:
            values[f.name] = to_form(f.name, f.kind, options[f.name])
    return values


def options_from(values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values (by field name; missing ones take their default) → flat sd-scripts options for TrainConfig."""
    options: dict[str, Any] = {}
    network_args: list[str] = []
    for f in FIELDS:
        value = from_form(f, values.get(f.name, f.default))
        if f.name in NETWORK_ARG_FIELDS:
            if value is not None and not (f.name == "algo" and value == "lora"):
                network_args.append(f"{f.name}={value}")
        elif f.name == "network_args":
            network_args = list(value) + network_args
        elif value is not None:
            options[f.name] = value
    options["network_args"] = network_args
    return options


def data_paths_checked(values: Mapping[str, Any], allowed: AllowedRoots) -> dict[str, str]:
    """The DATA_PATH_FIELDS of `values` that are filled, resolved inside `allowed`; ConfigError naming the option
    for one outside the allowed folders or not found there."""
    checked: dict[str, str] = {}
    for name in DATA_PATH_FIELDS:
        typed = str(values.get(name) or "").strip()
        if typed:
            try:
                checked[name] = str(allowed.locate(typed))
            except LoraStudioError as error:
                raise ConfigError(name, typed, str(error)) from error
    return checked


def config_from(values: Mapping[str, Any], **own: Any) -> TrainConfig:
    """A validated TrainConfig from form values plus the tab's own options (train_data_dir, output_name, ...)."""
    return TrainConfig.from_dict({**options_from(values), **{k: v for k, v in own.items() if v is not None}})


def grouped(names: Sequence[str] | None = None) -> dict[str, list[FormField]]:
    """Fields by group, basic first, then samples, then the advanced sections in sd-scripts' order."""
    groups: dict[str, list[FormField]] = {"basic": [], "samples": []}
    groups.update({section: [] for section in SECTION_TITLES})
    for f in FIELDS:
        if names is None or f.name in names:
            groups[f.group].append(f)
    return {group: items for group, items in groups.items() if items}
