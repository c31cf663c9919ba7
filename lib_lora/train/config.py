"""TrainConfig: every training option in one flat table of sd-scripts names, read from and written to TOML.

A TrainConfig is six self-validating parts — DataConfig (data_config.py), NetworkConfig (network_config.py),
OptimizerConfig (optim.py), RunConfig (run_config.py), ValidationConfig (validation_config.py) and ModeConfig
(modes/config.py: which kind of training, and each mode's options) — addressed
by flat option names, so an sd-scripts config file (flat, or in its `[model_arguments]`, `[training_arguments]`,
... sections) carries over. sd-scripts options that do not apply to training on a loaded model are accepted and
listed in `notes` (IGNORED) or refused with the reason when switched on (REFUSED); any other unknown key is a
ConfigError that suggests the closest names.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .bounds import OPTION_BOUNDS, check_option, help_suffix, read_bounded
from .data_config import DATA_HELP, DataConfig
from .errors import ConfigError
from .modes.config import MODE_HELP, MODE_SECTIONS, ModeConfig, check_mode_across_parts
from .network.config import NETWORK_HELP, NetworkConfig, format_network_args
from .optim import OPTIMIZER_HELP, OptimizerConfig, format_optimizer_args
from .run_config import RUN_HELP, RUN_SECTIONS, RunConfig
from .validation_config import VALIDATION_HELP, VALIDATION_SECTIONS, ValidationConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (A1111's): the same parser from PyPI
    import tomli as tomllib

PARTS: tuple[tuple[str, type], ...] = (
    ("run", RunConfig), ("data", DataConfig), ("network", NetworkConfig), ("optimizer", OptimizerConfig),
    ("validation", ValidationConfig), ("mode", ModeConfig),
)
_PART_SECTIONS = {"data": "dataset_arguments", "network": "additional_network_arguments",
                  "optimizer": "optimizer_arguments"}
SECTION_ORDER = ("model_arguments", "additional_network_arguments", "optimizer_arguments", "dataset_arguments",
                 "training_arguments", "saving_arguments", "sample_prompt_arguments", "training_mode_arguments")

TRAIN_HELP: dict[str, str] = {
    name: help_suffix(name, text)
    for name, text in {**RUN_HELP, **DATA_HELP, **NETWORK_HELP, **OPTIMIZER_HELP, **VALIDATION_HELP,
                       **MODE_HELP}.items()
}
"""Every option → its one-line help with, for numbers, its range (the words the command line and the Train tab
show)."""
MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""The largest config file read (a full sd-scripts config is a few kilobytes)."""

# sd-scripts options that do not change what is trained here: accepted, and listed in TrainConfig.notes when set.
IGNORED: dict[str, str] = {
    "xformers": "attention is computed the host's own way",
    "sdpa": "attention is computed the host's own way",
    "mem_eff_attn": "attention is computed the host's own way",
    "v2": "the loaded model says which family it is",
    "sdxl": "the loaded model says which family it is",
    "max_token_length": "captions are encoded the host's own way (the WebUI handles long prompts itself)",
    "no_half_vae": "the host's VAE is used as loaded",
    "lowram": "nothing is loaded: the model is already in memory",
    "highvram": "nothing is loaded: the model is already in memory",
    "max_data_loader_n_workers": "cached data is read in the training thread",
    "persistent_data_loader_workers": "cached data is read in the training thread",
    "logging_dir": "progress goes to the Train tab or the console",
    "log_with": "progress goes to the Train tab or the console",
    "log_prefix": "progress goes to the Train tab or the console",
    "log_tracker_name": "progress goes to the Train tab or the console",
    "sample_sampler": "samples use the host's own sampler",
    "no_metadata": "metadata is always written (the WebUI's LoRA card reads it)",
    "output_config": "use TrainConfig.to_toml / the Train tab's save",
    "config_file": "the file being read is the config",
    "huggingface_repo_id": "nothing is uploaded",
    "save_n_epoch_ratio": "use save_every_n_epochs",
    "wandb_api_key": "progress goes to the Train tab or the console",
}
# sd-scripts options that cannot be honoured: a ConfigError with the reason when switched on.
REFUSED: dict[str, str] = {
    "vae": "the host's own VAE is used (choose the VAE in the WebUI)",
    "dataset_config": "use train_data_dir / reg_data_dir with <repeats>_<name> folders",
    "base_weights": "merge the LoRA in the WebUI first; the host's weights are never changed by training",
    "lr_scheduler_type": "choose one of the lr_scheduler names",
    "lr_scheduler_args": "choose one of the lr_scheduler names",
    "network_weights_dtype": "network weights are trained in fp32 (or as full_fp16/full_bf16 say)",
    "cpu_offload_checkpointing": "use gradient_checkpointing",
    "fused_backward_pass": "not supported; use gradient_checkpointing to save memory",
}
ALIASES: dict[str, str] = {"caption_extention": "caption_extension"}  # sd-scripts' old spelling
# key=value list options, written as sd-scripts' ["k=v", ...] by their owners' formatters (read back equal)
_ARG_LIST_WRITERS = {"network_args": format_network_args, "optimizer_args": format_optimizer_args}


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(item.name for item in fields(cls))


OPTION_PART: dict[str, str] = {name: part for part, cls in PARTS for name in _field_names(cls)}
"""Every option → the part that owns it (run, data, network, optimizer, validation)."""
OPTION_SECTIONS: dict[str, str] = {**RUN_SECTIONS, **VALIDATION_SECTIONS, **MODE_SECTIONS}
"""Options of the parts that spread over several config-file sections → their section (the others: by part)."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings; read any option as an attribute (`config.learning_rate`)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    mode: ModeConfig = field(default_factory=ModeConfig)
    notes: tuple[str, ...] = ()  # sd-scripts options that were given and do not apply here, with the reason

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_across_parts(self)

    def __getattr__(self, name: str) -> Any:
        part = OPTION_PART.get(name)
        if part is None:
            raise AttributeError(f"TrainConfig has no option {name!r}")
        return getattr(object.__getattribute__(self, part), name)

    # --- building ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from flat sd-scripts options (section tables are flattened); ConfigError names a bad option."""
        flat = flatten_sections(values)
        by_part: dict[str, dict[str, Any]] = {part: {} for part, _ in PARTS}
        notes: list[str] = []
        for key, value in flat.items():
            key = ALIASES.get(key, key)
            part = OPTION_PART.get(key)
            if part is not None:
                by_part[part][key] = value
            elif key in IGNORED:
                if value not in (None, False, "", 0, [], {}):
                    notes.append(f"{key} = {value!r} is not used: {IGNORED[key]}")
            elif key in REFUSED:
                if value not in (None, False, "", [], {}):
                    raise ConfigError(key, value, f"not supported here: {REFUSED[key]}")
            else:
                raise ConfigError(key, value, _unknown_reason(key))
        parts = {part: cls_(**by_part[part]) for part, cls_ in PARTS}
        return cls(**parts, notes=tuple(notes))

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a TOML config file (ours or sd-scripts'); ConfigError for unreadable files and bad options."""
        path = Path(path)
        data = read_bounded(path, option="config file", limit=MAX_CONFIG_BYTES,
                            hint="a training config is a few kilobytes of TOML")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError("config file", str(path), f"not UTF-8 text: {error}") from None
        return cls.from_toml_text(text, source=str(path))

    @classmethod
    def from_toml_text(cls, text: str, *, source: str = "config") -> TrainConfig:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError("config file", source, f"not valid TOML: {error}") from None
        return cls.from_dict(values)

    def with_values(self, **changes: Any) -> TrainConfig:
        """A copy with some options changed (validated like the rest)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def with_notes(self, *notes: str) -> TrainConfig:
        return replace(self, notes=self.notes + tuple(notes))

    # --- writing ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every option → its value (Python values, None for unset)."""
        return {name: getattr(getattr(self, part), name) for name, part in OPTION_PART.items()}

    def to_toml_dict(self) -> dict[str, dict[str, Any]]:
        """Set options as TOML values, grouped in sd-scripts' config-file sections (None left out)."""
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTION_ORDER}
        for name, value in self.to_dict().items():
            if value is None:
                continue
            part = OPTION_PART[name]
            section = OPTION_SECTIONS.get(name) or _PART_SECTIONS[part]
            writer = _ARG_LIST_WRITERS.get(name)
            sections[section][name] = writer(value) if writer is not None else toml_value(value)
        return {name: values for name, values in sections.items() if values}

    def to_toml(self) -> str:
        """The config as TOML text; `TrainConfig.from_toml_text(c.to_toml()) == c`."""
        import tomli_w

        return tomli_w.dumps(self.to_toml_dict())

    def save_toml(self, path: str | Path) -> None:
        """Write `to_toml()` to `path` atomically."""
        from ..atomic import write_atomically

        write_atomically(Path(path), [self.to_toml().encode("utf-8")])


def flatten_sections(values: Mapping[str, Any]) -> dict[str, Any]:
    """Lift the options out of sd-scripts' section tables; an option given twice is a ConfigError."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and key not in OPTION_PART:
            items = value.items()
        else:
            items = [(key, value)]
        for name, item in items:
            if isinstance(item, Mapping) and name not in OPTION_PART:
                raise ConfigError(f"{key}.{name}", dict(item), "nested tables are not options; options are flat "
                                                              "keys, optionally inside one [section]")
            if name in flat:
                raise ConfigError(name, item, f"given twice (also {flat[name]!r})")
            flat[name] = item
    return flat


def toml_value(value: Any) -> Any:
    """A Python option value as TOML writes it: tuples as 'a,b' text (resolution), dicts as ['k=v', ...]."""
    if isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return [f"{k}={_arg_text(v)}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [toml_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _arg_text(value: Any) -> str:
    """A `key=value` argument's value as sd-scripts writes it on a command line (read back by literal_eval)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(_arg_text(v) for v in value)
    return repr(value)


def _unknown_reason(key: str) -> str:
    known = list(OPTION_PART) + list(IGNORED) + list(REFUSED)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown option{hint}"


def _check_ranges(config: TrainConfig) -> None:
    """Every numeric option against OPTION_BOUNDS: the data and run readers check theirs as they read; this also
    covers the parts that take typed values (network, optimizer), so no option escapes the table."""
    for name in OPTION_BOUNDS:
        value = getattr(config, name)
        for item in value if isinstance(value, tuple) else (value,):
            check_option(name, item)


def _check_across_parts(config: TrainConfig) -> None:
    """Rules that involve options of more than one part (each part checks its own)."""
    run, data, network = config.run, config.data, config.network
    check_mode_across_parts(config)
    validation_dir = config.validation.validation_dir
    if validation_dir is not None and data.train_data_dir is not None and \
            Path(validation_dir).expanduser().resolve() == Path(data.train_data_dir).expanduser().resolve():
        raise ConfigError("validation_dir", validation_dir, "is the training folder; give a folder of other images, "
                                                            "or hold part of it out with validation_split")
    if run.cache_text_encoder_outputs:
        if not network.network_train_unet_only:
            raise ConfigError("cache_text_encoder_outputs", True,
                              "needs network_train_unet_only = true (a cached text encoder cannot be trained)")
        for key in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                    "caption_dropout_every_n_epochs"):
            if getattr(data, key):
                raise ConfigError("cache_text_encoder_outputs", True,
                                  f"captions must be fixed to be cached, but {key} = {getattr(data, key)!r}")
