"""LoRA file metadata: the ss_* + modelspec.* strings sd-scripts writes, parsing them back, and family detection.

Every value in a safetensors header is a string: numbers as `str()`, booleans as "True"/"False", dicts as JSON
(as sd-scripts encodes them). Fields left unset are omitted rather than written as "None".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NoReturn

from ..arch import ARCHS

MODELSPEC_VERSION = "1.0.0"
MODELSPEC_IMPL_SGM = "https://github.com/Stability-AI/generative-models"
MODELSPEC_IMPL_DIFFUSERS = "diffusers"
MIXED_PRECISIONS = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v")

# scalar field -> ss_* key; a field left at None is not written
_SS_SCALARS: dict[str, str] = {
    "network_module": "ss_network_module",
    "network_dim": "ss_network_dim",
    "network_alpha": "ss_network_alpha",
    "network_dropout": "ss_network_dropout",
    "sd_model_name": "ss_sd_model_name",
    "steps": "ss_steps",
    "max_train_steps": "ss_max_train_steps",
    "epochs": "ss_num_epochs",
    "epoch": "ss_epoch",
    "batch_size": "ss_batch_size_per_device",
    "gradient_accumulation_steps": "ss_gradient_accumulation_steps",
    "gradient_checkpointing": "ss_gradient_checkpointing",
    "optimizer": "ss_optimizer",
    "learning_rate": "ss_learning_rate",
    "unet_lr": "ss_unet_lr",
    "text_encoder_lr": "ss_text_encoder_lr",
    "lr_scheduler": "ss_lr_scheduler",
    "lr_warmup_steps": "ss_lr_warmup_steps",
    "seed": "ss_seed",
    "mixed_precision": "ss_mixed_precision",
    "clip_skip": "ss_clip_skip",
    "noise_offset": "ss_noise_offset",
    "min_snr_gamma": "ss_min_snr_gamma",
    "caption_dropout_rate": "ss_caption_dropout_rate",
    "shuffle_caption": "ss_shuffle_caption",
    "keep_tokens": "ss_keep_tokens",
    "flip_aug": "ss_flip_aug",
    "enable_bucket": "ss_enable_bucket",
    "training_started_at": "ss_training_started_at",
    "training_finished_at": "ss_training_finished_at",
    "session_id": "ss_session_id",
    "training_comment": "ss_training_comment",
    "validation_loss": "ss_validation_loss",
    "validation_step": "ss_validation_step",
    "validation_seed": "ss_validation_seed",
    "validation_timesteps": "ss_validation_timesteps",
}
_POSITIVE_INTS = ("network_dim", "max_train_steps", "epochs", "batch_size", "gradient_accumulation_steps", "clip_skip",
                  "validation_timesteps")
_NON_NEGATIVE_INTS = ("steps", "epoch", "lr_warmup_steps", "keep_tokens", "seed", "session_id", "validation_step",
                      "validation_seed")
_NON_NEGATIVE_FLOATS = (
    "network_alpha",
    "learning_rate",
    "unet_lr",
    "text_encoder_lr",
    "noise_offset",
    "min_snr_gamma",
    "training_started_at",
    "training_finished_at",
    "validation_loss",
)
_FRACTIONS = ("network_dropout", "caption_dropout_rate")
_BOOLS = ("gradient_checkpointing", "shuffle_caption", "flip_aug", "enable_bucket")
_STRINGS = (
    "network_module",
    "output_name",
    "sd_model_name",
    "optimizer",
    "lr_scheduler",
    "training_comment",
    "author",
    "description",
    "trigger_phrase",
    "tags",
)
_MODELSPEC_STRINGS = ("author", "description", "trigger_phrase", "tags")


@dataclass(frozen=True)
class LoraMetadata:
    """What a LoRA file says about its training, known at save time; validates itself (ValueError names the field)."""

    arch: str  # sd1 / sd2 / sdxl
    network_dim: int
    network_alpha: float
    network_module: str = "networks.lora"
    network_args: dict[str, str | int | float | bool] = field(default_factory=dict)
    network_dropout: float | None = None
    output_name: str = ""
    sd_model_name: str | None = None
    resolution: tuple[int, int] | None = None  # (width, height); None: the family's default square
    prediction_type: str = "epsilon"
    steps: int | None = None
    max_train_steps: int | None = None
    epochs: int | None = None
    epoch: int | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    gradient_checkpointing: bool | None = None
    optimizer: str | None = None  # class path, e.g. "torch.optim.adamw.AdamW(weight_decay=0.01)"
    learning_rate: float | None = None
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    lr_scheduler: str | None = None
    lr_warmup_steps: int | None = None
    seed: int | None = None
    mixed_precision: str = "no"
    clip_skip: int | None = None
    noise_offset: float | None = None
    min_snr_gamma: float | None = None
    caption_dropout_rate: float | None = None
    shuffle_caption: bool | None = None
    keep_tokens: int | None = None
    flip_aug: bool | None = None
    enable_bucket: bool | None = None
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)  # {dir: {"n_repeats", "img_count"}}
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)  # {dir: {tag: count}}
    training_started_at: float | None = None  # unix seconds
    training_finished_at: float | None = None
    session_id: int | None = None
    training_comment: str | None = None
    author: str | None = None
    description: str | None = None
    trigger_phrase: str | None = None
    tags: str | None = None  # comma-separated, as modelspec.tags
    validation_loss: float | None = None  # the loss on held-out images with fixed noise (train/validation.py)
    validation_step: int | None = None  # the step it was measured at
    validation_seed: int | None = None  # the seed of its fixed noise and timesteps
    validation_timesteps: int | None = None  # timesteps per image

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            _invalid("arch", f"one of {sorted(ARCHS)}", self.arch)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        for name in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
            _check_int(name, getattr(self, name), minimum=1 if name in _POSITIVE_INTS else 0)
        for name in _NON_NEGATIVE_FLOATS + _FRACTIONS:
            object.__setattr__(self, name, _checked_float(name, getattr(self, name), fraction=name in _FRACTIONS))
        for name in _BOOLS:
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                _invalid(name, "True, False or None", getattr(self, name))
        for name in _STRINGS:
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                _invalid(name, "a string", getattr(self, name))
        if not self.network_module:
            _invalid("network_module", "a non-empty module path", self.network_module)
        object.__setattr__(self, "resolution", _checked_resolution(self.resolution))
        _check_network_args(self.network_args)
        _check_dataset_dirs(self.dataset_dirs)
        _check_tag_frequency(self.tag_frequency)
        started, finished = self.training_started_at, self.training_finished_at
        if started is not None and finished is not None and finished < started:
            _invalid("training_finished_at", f"not before training_started_at ({started})", finished)

    def to_metadata(self) -> dict[str, str]:
        """The ss_* and modelspec.* strings to store in the file's `__metadata__`."""
        arch = ARCHS[self.arch]
        out: dict[str, str] = {
            "ss_base_model_version": arch.ss_base_model_version,
            "ss_v2": str(self.arch == "sd2"),
        }
        for name, key in _SS_SCALARS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = str(value)
        if self.output_name:
            out["ss_output_name"] = self.output_name
        if self.network_args:
            out["ss_network_args"] = json.dumps(self.network_args)
        width, height = self.resolution or (arch.default_resolution, arch.default_resolution)
        out["ss_resolution"] = str((width, height))
        if self.dataset_dirs:
            out["ss_dataset_dirs"] = json.dumps(self.dataset_dirs)
            out["ss_num_train_images"] = str(sum(d["n_repeats"] * d["img_count"] for d in self.dataset_dirs.values()))
        if self.tag_frequency:
            out["ss_tag_frequency"] = json.dumps(self.tag_frequency)
        out.update(self._modelspec(f"{width}x{height}"))
        return out

    def _modelspec(self, resolution: str) -> dict[str, str]:
        arch = ARCHS[self.arch]
        when = self.training_finished_at if self.training_finished_at is not None else self.training_started_at
        date = datetime.fromtimestamp(int(when), tz=timezone.utc).isoformat() if when is not None else None
        spec = {
            "modelspec.sai_model_spec": MODELSPEC_VERSION,
            "modelspec.architecture": f"{arch.modelspec_architecture}/lora",
            "modelspec.implementation": MODELSPEC_IMPL_SGM if self.arch == "sdxl" else MODELSPEC_IMPL_DIFFUSERS,
            "modelspec.title": self.output_name or (f"LoRA@{date}" if date else "LoRA"),
            "modelspec.resolution": resolution,
            "modelspec.prediction_type": self.prediction_type,
        }
        if date is not None:
            spec["modelspec.date"] = date
        if self.clip_skip is not None:
            spec["modelspec.encoder_layer"] = str(self.clip_skip)
        for name in _MODELSPEC_STRINGS:
            if getattr(self, name):
                spec[f"modelspec.{name}"] = getattr(self, name)
        return spec


def parse_metadata(metadata: Mapping[str, str]) -> dict[str, object]:
    """Decode values that are JSON objects or arrays (as A1111 does for "{…}"); leave every other value as is."""
    parsed: dict[str, object] = {}
    for key, value in metadata.items():
        parsed[key] = value
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                parsed[key] = json.loads(value)
            except (ValueError, RecursionError):
                pass
    return parsed


_MODELSPEC_ARCHS = (
    ("stable-diffusion-xl-v1-base", "sdxl"),
    ("stable-diffusion-v2", "sd2"),
    ("stable-diffusion-v1", "sd1"),
)


def arch_from_metadata(metadata: Mapping[str, object]) -> str | None:
    """sd1/sd2/sdxl from ss_base_model_version, modelspec.architecture or ss_v2 (in that order); None if unknown.

    Like A1111 (sdxl_* prefix, ss_v2 "True") and Forge (modelspec.architecture), but an unrecognised family name
    (flux, sd3, …) gives None instead of A1111's fallback to SD1.
    """
    version = str(metadata.get("ss_base_model_version") or "")
    if version:
        if version.startswith("sdxl_"):
            return "sdxl"
        if version.startswith("sd_v2"):
            return "sd2"
        if version.startswith("sd_v1"):
            return "sd1"
        return None
    architecture = str(metadata.get("modelspec.architecture") or "")
    if architecture:
        base = architecture.split("/", 1)[0]
        return next((name for prefix, name in _MODELSPEC_ARCHS if base.startswith(prefix)), None)
    v2 = str(metadata.get("ss_v2", "")).strip().lower()
    if v2 in ("true", "false"):
        return "sd2" if v2 == "true" else "sd1"
    return None


# --- validation helpers -----------------------------------------------------------------------------------------


def _invalid(name: str, expected: str, value: object) -> NoReturn:
    raise ValueError(f"`{name}` must be {expected}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _invalid(name, f"one of {list(choices)}", value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if value is not None and not (_is_int(value) and value >= minimum):
        _invalid(name, f"an integer >= {minimum} or None", value)


def _checked_float(name: str, value: object, *, fraction: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        _invalid(name, "a finite number >= 0 or None", value)
    if fraction and value > 1:
        _invalid(name, "between 0 and 1", value)
    return float(value)


def _checked_resolution(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
        _invalid("resolution", "(width, height) as two positive integers, or None", value)
    return (value[0], value[1])


def _check_network_args(value: object) -> None:
    def plain(item: object) -> bool:
        return isinstance(item, (str, int, bool)) or (isinstance(item, float) and math.isfinite(item))

    if not isinstance(value, dict) or not all(isinstance(k, str) and plain(v) for k, v in value.items()):
        _invalid("network_args", "a dict of name -> str/int/finite float/bool", value)


def _check_dataset_dirs(value: object) -> None:
    expected = 'a dict of folder -> {"n_repeats": int >= 1, "img_count": int >= 0}'
    if not isinstance(value, dict):
        _invalid("dataset_dirs", expected, value)
    for folder, entry in value.items():
        ok = isinstance(folder, str) and isinstance(entry, dict) and set(entry) == {"n_repeats", "img_count"}
        if not (ok and _is_int(entry["n_repeats"]) and entry["n_repeats"] >= 1 and _is_int(entry["img_count"])):
            _invalid(f"dataset_dirs[{folder!r}]", expected, entry)
        if entry["img_count"] < 0:
            _invalid(f"dataset_dirs[{folder!r}]", expected, entry)


def _check_tag_frequency(value: object) -> None:
    expected = "a dict of folder -> {tag: count >= 0}"
    if not isinstance(value, dict):
        _invalid("tag_frequency", expected, value)
    for folder, counts in value.items():
        if not (isinstance(folder, str) and isinstance(counts, dict)):
            _invalid(f"tag_frequency[{folder!r}]", expected, counts)
        for tag, count in counts.items():
            if not (isinstance(tag, str) and _is_int(count) and count >= 0):
                _invalid(f"tag_frequency[{folder!r}][{tag!r}]", "a count >= 0", count)
