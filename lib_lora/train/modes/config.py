"""ModeConfig: which kind of training a run does and each mode's options, under flat sd-scripts-style names.

`training_mode` picks the mode: `lora` (images and captions, the usual run), `slider` (a concept slider learned
from prompts alone, LECO / iLECO), `difference` (a LoRA of what differs between an original and a target image:
copy-machine two-pass, or a direct paired pass) or `rounds` (train, merge into the working weights, train again,
as in ReLoRA). Every option of a mode is prefixed with its name (`slider_*`, `difference_*`, `copy_*`, `rounds*`),
is ignored by the other modes, and is checked here like any option (ranges in bounds.py). Each field's help text
and its TOML section live in the field's metadata, as in RunConfig.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ..bounds import MAX_ROUNDS, ROUND_BOUNDS, number_option
from ..errors import ConfigError
from ..values import read_bool, read_number

if TYPE_CHECKING:
    from ..config import TrainConfig

MODE_NAMES: tuple[str, ...] = ("lora", "slider", "difference", "rounds")
"""The training modes, in the order the Train tab lists them."""
DIFFERENCE_METHODS: tuple[str, ...] = ("two_pass", "direct")
SECTION = "training_mode_arguments"
MAX_TEXT_CHARS = 65536
ROUND_KEYS = ("learning_rate", "epochs", "merge")
_ROUND_ALIASES = {"lr": "learning_rate", "epoch": "epochs", "strength": "merge"}


def _option(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text, "section": SECTION})


@dataclass
class ModeConfig:
    """Training-mode options; see MODE_HELP for each one's meaning."""

    training_mode: str = _option("lora", (
        "What to train: lora (a LoRA from images and captions), slider (a concept slider from prompts alone: "
        "erase or strengthen a concept, use it at -1..1), difference (a LoRA of what differs between an original "
        "and a target image) or rounds (train, merge into the working weights, train again at a lower learning "
        "rate; one LoRA of the total change at the end)."))
    # slider
    slider_prompt: str | None = _option(None, (
        "slider: the prompt whose concept the LoRA changes, e.g. 'red hair'. With the LoRA at 1 it gives what "
        "slider_target gives without it; at -1 the opposite way."))
    slider_target: str | None = _option(None, (
        "slider: what the concept becomes, e.g. 'blue hair'; empty erases the concept (the prompt then gives the "
        "neutral prompt's picture)."))
    slider_neutral: str | None = _option(None, (
        "slider: what an erased concept becomes (used when slider_target is empty); empty: the empty prompt."))
    slider_guidance_scale: float = _option(1.0, (
        "slider: how far the LoRA moves the concept, in units of the difference between the two prompts' "
        "predictions (LECO's guidance_scale)."))
    slider_resolution: int | None = _option(None, (
        "slider: the side in pixels of the noise the prompts are compared on (a multiple of 8); empty uses "
        "resolution."))
    slider_both_ways: bool = _option(True, (
        "slider: every other step trains the opposite change at multiplier -1, so -1 moves the concept as far the "
        "other way as 1 moves it (off: LECO's one-sided training)."))
    slider_prompts_file: str | None = _option(None, (
        "slider: a LECO prompts file (YAML list of target, positive, unconditional, neutral, action "
        "erase|enhance, guidance_scale, resolution, batch_size); its entries are trained as well."))
    # difference
    difference_method: str = _option("two_pass", (
        "difference: two_pass learns a copy LoRA of the original, merges it into the working weights and then "
        "learns the target (copy-machine learning); direct learns the difference in one pass on paired noise "
        "and timesteps (ADDifT). min_timestep and max_timestep limit the timesteps."))
    difference_original: str | None = _option(None, (
        "difference: the original image, or a folder of pairs: each original `name.png` beside its target "
        "`name<difference_target_suffix>.png`."))
    difference_target: str | None = _option(None, (
        "difference: the target image, the same size as the original (empty when difference_original is a "
        "folder of pairs)."))
    difference_target_suffix: str = _option("_target", (
        "difference: in a folder of pairs, what a target's file name adds to its original's stem."))
    difference_caption: str | None = _option(None, (
        "difference: the prompt both images are trained with, e.g. a trigger word (empty: no prompt)."))
    copy_network_dim: int = _option(16, (
        "difference two_pass: the rank of the copy LoRA of the original (pass 1); the saved difference LoRA "
        "uses network_dim, usually lower."))
    copy_network_alpha: float = _option(16.0, "difference two_pass: the alpha of the copy LoRA (pass 1).")
    copy_max_train_steps: int = _option(300, (
        "difference two_pass: steps of pass 1 (the copy LoRA should reproduce the original whatever the seed)."))
    copy_lr: float | None = _option(None, (
        "difference two_pass: the learning rate of pass 1; empty uses learning_rate."))
    # rounds
    rounds: tuple[str, ...] = _option((), (
        "rounds: one round per entry, learning_rate=…,epochs=…,merge=… (in TOML also inline tables "
        "{learning_rate = 1e-4, epochs = 6, merge = 0.7}). After each round its LoRA is merged into the working "
        "weights at that strength and a fresh LoRA starts."))
    rounds_rank: int | None = _option(None, (
        "rounds: the rank of the one LoRA saved at the end, the SVD of the total change (empty: network_dim); "
        "the relative error of that cut is reported."))
    rounds_save_each: bool = _option(False, (
        "rounds: also save each round's own LoRA as <output_name>-round<n>."))

    def __post_init__(self) -> None:
        for item in fields(self):
            setattr(self, item.name, _COERCE[item.name](item.name, getattr(self, item.name)))
        self._check_mode()

    def _check_mode(self) -> None:
        """What the options say by themselves (the prompts and images a run needs are checked when it starts, as
        train_data_dir is: a recipe or a half-filled form is still a config)."""
        if self.training_mode == "rounds" and not self.rounds:
            raise ConfigError("rounds", [], "give at least one round, e.g. learning_rate=1e-4,epochs=6,merge=0.7")
        if self.slider_resolution is not None and self.slider_resolution % 8:
            raise ConfigError("slider_resolution", self.slider_resolution, "must be a multiple of 8")
        if not self.difference_target_suffix:
            raise ConfigError("difference_target_suffix", "", "must not be empty: targets need a name of their own")

    @property
    def round_schedule(self) -> list[Round]:
        """The rounds as values, in order."""
        return [parse_round("rounds", text) for text in self.rounds]


@dataclass(frozen=True)
class Round:
    """One train-and-merge round: its learning rate, its epochs, the strength it is merged at."""

    learning_rate: float
    epochs: int
    merge: float

    def text(self) -> str:
        """The round as the option writes it: learning_rate=…,epochs=…,merge=… (read back equal)."""
        return f"learning_rate={self.learning_rate!r},epochs={self.epochs},merge={self.merge!r}"


def parse_round(key: str, value: object) -> Round:
    """A Round from a mapping, `k=v,k=v` text or a list of `k=v` texts; ConfigError naming `key` otherwise."""
    pairs = _round_pairs(key, value)
    unknown = sorted(set(pairs) - set(ROUND_KEYS))
    if unknown:
        raise ConfigError(key, value, f"unknown round setting {unknown[0]!r}; a round has {', '.join(ROUND_KEYS)}")
    for needed in ("learning_rate", "epochs"):
        if needed not in pairs:
            raise ConfigError(key, value, f"a round needs {needed}, e.g. learning_rate=1e-4,epochs=6,merge=0.7")
    numbers: dict[str, Any] = {}
    for name in ROUND_KEYS:
        bounds = ROUND_BOUNDS[name]
        raw = pairs.get(name, 1.0)
        number = read_number(f"{key}.{name}", raw, int if bounds.integer else float)
        bounds.check(f"{key}.{name}", number, shown=raw)
        numbers[name] = number
    return Round(float(numbers["learning_rate"]), int(numbers["epochs"]), float(numbers["merge"]))


def _round_pairs(key: str, value: object) -> dict[str, object]:
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        items = [_key_value(key, part) for part in value.replace(";", ",").split(",") if part.strip()]
    elif isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
        items = [_key_value(key, part) for part in value]
    else:
        raise ConfigError(key, value, "expected a round: learning_rate=…,epochs=…,merge=…")
    pairs: dict[str, object] = {}
    for name, item in items:
        name = _ROUND_ALIASES.get(str(name).strip(), str(name).strip())
        if name in pairs:
            raise ConfigError(key, value, f"{name} is given twice in one round")
        pairs[name] = item.strip() if isinstance(item, str) else item
    return pairs


def _key_value(key: str, text: str) -> tuple[str, str]:
    name, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(key, text, "expected key=value, e.g. learning_rate=1e-4")
    return name, raw


def _rounds(key: str, value: object) -> tuple[str, ...]:
    """The rounds option: a list of rounds (or one text of rounds separated by new lines or spaces)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.split()
    if isinstance(value, Mapping) or not isinstance(value, Sequence):
        raise ConfigError(key, value, "expected a list of rounds, e.g. [\"learning_rate=1e-4,epochs=6,merge=0.7\"]")
    if len(value) > MAX_ROUNDS:
        raise ConfigError(key, f"{len(value)} rounds", f"at most {MAX_ROUNDS} rounds")
    return tuple(parse_round(f"{key}[{index}]", item).text() for index, item in enumerate(value))


def _choice(choices: tuple[str, ...]) -> Callable[[str, object], str]:
    def check(key: str, value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ConfigError(key, value, f"expected one of {list(choices)}")

    return check


def _text(*, optional: bool, strip: bool = False) -> Callable[[str, object], str | None]:
    def read(key: str, value: object) -> str | None:
        if value is not None and hasattr(value, "__fspath__"):
            value = str(value)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise ConfigError(key, value, "expected text")
        if len(value) > MAX_TEXT_CHARS:
            raise ConfigError(key, value, f"{len(value)} characters; at most {MAX_TEXT_CHARS}")
        value = value.strip() if strip else value
        return value if value.strip() or not optional else None

    return read


_COERCE: dict[str, Callable[[str, Any], Any]] = {
    "training_mode": _choice(MODE_NAMES),
    "slider_prompt": _text(optional=True),
    "slider_target": _text(optional=True),
    "slider_neutral": _text(optional=True),
    "slider_guidance_scale": number_option(),
    "slider_resolution": number_option(optional=True),
    "slider_both_ways": read_bool,
    "slider_prompts_file": _text(optional=True, strip=True),
    "difference_method": _choice(DIFFERENCE_METHODS),
    "difference_original": _text(optional=True, strip=True),
    "difference_target": _text(optional=True, strip=True),
    "difference_target_suffix": _text(optional=False, strip=True),
    "difference_caption": _text(optional=True),
    "copy_network_dim": number_option(),
    "copy_network_alpha": number_option(),
    "copy_max_train_steps": number_option(),
    "copy_lr": number_option(optional=True),
    "rounds": _rounds,
    "rounds_rank": number_option(optional=True),
    "rounds_save_each": read_bool,
}

MODE_HELP: dict[str, str] = {item.name: item.metadata["help"] for item in fields(ModeConfig)}
"""Option name → one-line help, shown by the command line and the Train tab alike."""

MODE_SECTIONS: dict[str, str] = {item.name: item.metadata["section"] for item in fields(ModeConfig)}
"""Option name → the config-file section it is written under."""


def check_mode_across_parts(config: TrainConfig) -> None:
    """Rules between the mode and the other parts of a TrainConfig (`config`): what only the lora mode does."""
    mode = config.mode.training_mode
    if mode == "lora":
        return
    if config.validation.enabled:
        raise ConfigError("training_mode", mode, "validation images are measured in the lora mode only; unset "
                                                 "validation_split and validation_dir")
    if config.run.resume is not None:
        raise ConfigError("resume", config.run.resume, f"the {mode} mode starts afresh; resuming is for the lora "
                                                       "mode")
    if mode == "rounds" and config.network.args.dora_wd:
        raise ConfigError("network_args", "dora_wd=True", "rounds merge plain changes of the weights; DoRA's "
                                                          "change depends on the weight it is merged into")
