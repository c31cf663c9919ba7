"""ValidationConfig: the held-out images a run measures its loss on, and when, under sd-scripts' option names.

Part of the training folder can be held out (`validation_split`, per `<repeats>_<name>` subfolder, chosen by
`validation_seed`), or a folder of its own given (`validation_dir`, laid out like train_data_dir). The loss on
those images is measured with fixed noise and timesteps (validation.py) every `validate_every_n_steps` steps
and/or `validate_every_n_epochs` epochs, and before every save, so each saved file records its own value.
Each field's help text and its TOML section live in the field's metadata, as in RunConfig.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .bounds import number_option
from .errors import ConfigError

MAX_TEXT_CHARS = 65536


def _option(default: Any, section: str, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text, "section": section})


@dataclass
class ValidationConfig:
    """Validation options; see VALIDATION_HELP for each one's meaning. Validation is on when it has images."""

    validation_split: float = _option(0.0, "dataset_arguments", (
        "Fraction of each training subfolder held out for the validation loss instead of trained on (0 = none); "
        "every subfolder keeps at least one training image."))
    validation_seed: int | None = _option(None, "dataset_arguments", (
        "Seed that chooses the held-out images and draws the validation noise and timesteps (default: the run's "
        "seed); the same seed gives comparable values across runs and files."))
    validation_dir: str | None = _option(None, "dataset_arguments", (
        "Folder of validation images laid out like train_data_dir, used instead of validation_split."))
    validate_every_n_steps: int | None = _option(None, "training_arguments", (
        "Measure the validation loss every n steps (it is also measured before every save)."))
    validate_every_n_epochs: int | None = _option(None, "training_arguments", (
        "Measure the validation loss every n epochs (it is also measured before every save)."))
    validation_timesteps: int = _option(4, "training_arguments", (
        "Timesteps per validation image, spread evenly over the noise schedule, each with its own fixed noise."))

    def __post_init__(self) -> None:
        for item in fields(self):
            setattr(self, item.name, _COERCE[item.name](item.name, getattr(self, item.name)))
        if self.validation_split and self.validation_dir is not None:
            raise ConfigError("validation_split", self.validation_split,
                              "give either validation_split or validation_dir, not both")
        for key in ("validate_every_n_steps", "validate_every_n_epochs"):
            if getattr(self, key) and not self.enabled:
                raise ConfigError(key, getattr(self, key), "needs validation images: set validation_split or "
                                                           "validation_dir")

    @property
    def enabled(self) -> bool:
        """Whether the run has validation images (a split or a folder)."""
        return bool(self.validation_split) or self.validation_dir is not None


def _optional_folder(key: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(key, value, "expected a folder")
    if len(value) > MAX_TEXT_CHARS:
        raise ConfigError(key, value, f"{len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value if value.strip() else None


_COERCE: dict[str, Callable[[str, Any], Any]] = {
    "validation_split": number_option(),
    "validation_seed": number_option(optional=True),
    "validation_dir": _optional_folder,
    "validate_every_n_steps": number_option(optional=True),
    "validate_every_n_epochs": number_option(optional=True),
    "validation_timesteps": number_option(),
}

VALIDATION_HELP: dict[str, str] = {item.name: item.metadata["help"] for item in fields(ValidationConfig)}
"""Option name → one-line help, shown by the command line and the Train tab alike."""

VALIDATION_SECTIONS: dict[str, str] = {item.name: item.metadata["section"] for item in fields(ValidationConfig)}
"""Option name → the sd-scripts config-file section it is written under."""
