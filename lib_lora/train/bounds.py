"""The range of every numeric training option, in one table: the config parts check against it, the help shows it.

OPTION_BOUNDS covers every int/float field of RunConfig, DataConfig, NetworkConfig, OptimizerConfig,
ValidationConfig and ModeConfig;
NETWORK_ARG_BOUNDS the numeric `network_args`. Upper bounds are generous for real training and exist so that no
value, however typed, can make a run allocate without limit (a resolution of 100000 is 37 GB of pixels per image).
What fits a given machine is the memory preflight's concern (`vram.check_fits`), not this table's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .noise import NUM_TIMESTEPS
from .values import read_number

STEPS = 1_000_000
"""The most steps (and step counts: saving, sampling, warm-up) an option takes."""
EPOCHS = 100_000
MAX_SIDE = 4096
"""The largest training side in pixels (SDXL trains at 1024; 4096 is already 16 times its pixels)."""
MAX_RANK = 1024
MAX_ALPHA = 4096
MAX_LEARNING_RATE = 10.0
MAX_VALIDATION_TIMESTEPS = 100
"""The most timesteps a validation image is measured at (each is one UNet call per image and measurement)."""
MAX_LIST_VALUES = 64
"""The most values a per-block list in network_args may have (the longest layout, SD1's block_dims, has 25)."""


@dataclass(frozen=True)
class Bounds:
    """A closed range [low, high] of ints or floats; `low_open`/`high_open` leave that end out."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False
    high_open: bool = False
    words: str = ""  # how the range is said, where the plain form would read oddly ("a probability ...")

    def describe(self) -> str:
        """The range as the messages and the help say it: "at least 1 and at most 1000000"."""
        if self.words:
            return self.words
        low = f"above {_number(self.low)}" if self.low_open else f"at least {_number(self.low)}"
        high = f"below {_number(self.high)}" if self.high_open else f"at most {_number(self.high)}"
        return f"{low} and {high}"

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return (isinstance(value, int) or math.isfinite(value)) and above and below

    def check(self, key: str, value: object, *, shown: object = None) -> None:
        """ConfigError naming `key`, the value (`shown` when given: the text as typed) and this range."""
        shown = value if shown is None else shown
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not (whole or (not self.integer and isinstance(value, float))):
            noun = "a whole number" if self.integer else "a number"
            raise ConfigError(key, shown, f"expected {self.words or f'{noun} {self.describe()}'}")
        if not self.contains(value):
            raise ConfigError(key, shown, f"must be {self.describe()}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _ints(low: int, high: int) -> Bounds:
    return Bounds(low, high, integer=True)


_FRACTION = Bounds(0.0, 1.0)
_PROBABILITY = Bounds(0.0, 1.0, high_open=True, words="a probability from 0 up to (not including) 1")

OPTION_BOUNDS: dict[str, Bounds] = {
    # RunConfig
    "clip_skip": _ints(1, 12),
    "max_train_steps": _ints(1, STEPS),
    "max_train_epochs": _ints(1, EPOCHS),
    "gradient_accumulation_steps": _ints(1, 1024),
    "seed": _ints(0, 2**32 - 1),
    "noise_offset": _FRACTION,
    "adaptive_noise_scale": Bounds(-1.0, 1.0),
    "multires_noise_iterations": _ints(1, 64),
    "multires_noise_discount": _FRACTION,
    "min_snr_gamma": Bounds(0.0, 100.0, low_open=True),
    "min_timestep": _ints(0, NUM_TIMESTEPS - 1),
    "max_timestep": _ints(1, NUM_TIMESTEPS),
    "huber_c": Bounds(0.0, 1.0, low_open=True),
    "save_every_n_epochs": _ints(1, EPOCHS),
    "save_every_n_steps": _ints(1, STEPS),
    "save_last_n_epochs": _ints(1, EPOCHS),
    "save_last_n_steps": _ints(1, STEPS),
    "preferred_weight": Bounds(-10.0, 10.0),
    "sample_every_n_steps": _ints(1, STEPS),
    "sample_every_n_epochs": _ints(1, EPOCHS),
    # DataConfig
    "prior_loss_weight": Bounds(0.0, 100.0),
    "resolution": _ints(8, MAX_SIDE),  # each side
    "min_bucket_reso": _ints(8, MAX_SIDE),
    "max_bucket_reso": _ints(8, MAX_SIDE),
    "bucket_reso_steps": _ints(8, 512),
    "keep_tokens": _ints(0, 1000),
    "caption_dropout_rate": _FRACTION,
    "caption_dropout_every_n_epochs": _ints(0, EPOCHS),
    "caption_tag_dropout_rate": _FRACTION,
    "vae_batch_size": _ints(1, 256),
    "train_batch_size": _ints(1, 256),
    # NetworkConfig
    "network_dim": _ints(1, MAX_RANK),
    "network_alpha": Bounds(0.0, MAX_ALPHA),
    "network_dropout": _PROBABILITY,
    "scale_weight_norms": Bounds(0.0, 100.0, low_open=True),
    # OptimizerConfig
    "learning_rate": Bounds(0.0, MAX_LEARNING_RATE),
    "unet_lr": Bounds(0.0, MAX_LEARNING_RATE),
    "text_encoder_lr": Bounds(0.0, MAX_LEARNING_RATE),
    "max_grad_norm": Bounds(0.0, 1000.0),
    "lr_warmup_steps": Bounds(0.0, STEPS),
    "lr_scheduler_num_cycles": _ints(1, 10_000),
    "lr_scheduler_power": Bounds(0.0, 100.0, low_open=True),
    # ValidationConfig
    "validation_split": _PROBABILITY,
    "validation_seed": _ints(0, 2**32 - 1),
    "validate_every_n_steps": _ints(1, STEPS),
    "validate_every_n_epochs": _ints(1, EPOCHS),
    "validation_timesteps": _ints(1, MAX_VALIDATION_TIMESTEPS),
    # ModeConfig (modes/config.py)
    "slider_guidance_scale": Bounds(0.0, 100.0, low_open=True),
    "slider_resolution": _ints(8, MAX_SIDE),
    "copy_network_dim": _ints(1, MAX_RANK),
    "copy_network_alpha": Bounds(0.0, MAX_ALPHA),
    "copy_max_train_steps": _ints(1, STEPS),
    "copy_lr": Bounds(0.0, MAX_LEARNING_RATE),
    "rounds_rank": _ints(1, MAX_RANK),
}
"""Every numeric option → its range (the one table; readers, the help and the memory preflight's advice use it)."""

NETWORK_ARG_BOUNDS: dict[str, Bounds] = {
    "conv_dim": _ints(0, MAX_RANK),
    "conv_alpha": Bounds(0.0, MAX_ALPHA),
    "rank_dropout": _PROBABILITY,
    "module_dropout": _PROBABILITY,
    "factor": _ints(-1, MAX_RANK),
    "block_dims": _ints(0, MAX_RANK),  # each value
    "block_alphas": Bounds(0.0, MAX_ALPHA),
    "conv_block_dims": _ints(0, MAX_RANK),
    "conv_block_alphas": Bounds(0.0, MAX_ALPHA),
    "down_lr_weight": Bounds(0.0, 100.0),
    "mid_lr_weight": Bounds(0.0, 100.0),
    "up_lr_weight": Bounds(0.0, 100.0),
    "block_lr_zero_threshold": Bounds(0.0, 100.0),
    "loraplus_lr_ratio": Bounds(0.0, 1000.0, low_open=True),
    "loraplus_unet_lr_ratio": Bounds(0.0, 1000.0, low_open=True),
    "loraplus_text_encoder_lr_ratio": Bounds(0.0, 1000.0, low_open=True),
}
"""Every numeric `network_args` key → the range of its value (of each value, for per-block lists)."""


MAX_ROUNDS = 100
"""The most train-and-merge rounds a run takes."""
ROUND_BOUNDS: dict[str, Bounds] = {
    "learning_rate": Bounds(0.0, MAX_LEARNING_RATE, low_open=True),
    "epochs": _ints(1, EPOCHS),
    "merge": Bounds(0.0, 10.0),
}
"""The range of each value of one round of the `rounds` option (learning_rate, epochs, merge strength)."""


def bounds_of(key: str) -> Bounds:
    """The range of option `key` (a TrainConfig option or `network_args.<key>`)."""
    if key.startswith("network_args."):
        return NETWORK_ARG_BOUNDS[key.removeprefix("network_args.")]
    return OPTION_BOUNDS[key]


def number_option(*, optional: bool = False) -> Callable[[str, object], int | float | None]:
    """A reader for the numeric option named by the key it is called with: kind and range from OPTION_BOUNDS;
    `optional` takes None or "" as unset. ConfigError names the option, the value as given and the range."""
    def read(key: str, value: object) -> int | float | None:
        if value is None or (optional and value == ""):
            if optional:
                return None
            raise ConfigError(key, value, "must be set")
        bounds = bounds_of(key)
        number = read_number(key, value, int if bounds.integer else float)
        bounds.check(key, number, shown=value)
        return number

    return read


def check_option(key: str, value: object) -> None:
    """ConfigError unless `value` (already a number, or None for an unset optional) is in `key`'s range."""
    if value is not None:
        bounds_of(key).check(key, value)


def help_suffix(key: str, text: str) -> str:
    """`text`, the option's help, with " Range: at least 1 and at most 1000000." added for a numeric option."""
    bounds = OPTION_BOUNDS.get(key)
    if bounds is None:
        return text
    per_side = " per side" if key == "resolution" else ""
    sentence = text.rstrip() if text.rstrip().endswith(".") else f"{text.rstrip()}."
    return f"{sentence} Range: {bounds.describe()}{per_side}."


def read_bounded(path: Path, *, option: str, limit: int, hint: str) -> bytes:
    """The bytes of the file at `path`, at most `limit` of them; ConfigError naming `option` when it cannot be read
    or is larger (`hint` says what such a file should be)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as error:
        raise ConfigError(option, str(path), f"cannot read it: {error.strerror or error}") from None
    if len(data) > limit:
        size = f"{limit // 1024**2} MiB" if limit >= 1024**2 else f"{limit // 1024} KiB"
        raise ConfigError(option, str(path), f"larger than {size}; {hint}")
    return data
