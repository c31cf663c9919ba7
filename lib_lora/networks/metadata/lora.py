"""The LoRA file's own metadata: `LoraMetadata` (the ss_* + modelspec.* strings sd-scripts writes) and
`NetworkRecord` (the ss_network_* keys, which trained networks and the network tools write through it too).

Every value in a safetensors header is a string: numbers as `str()`, booleans as "True"/"False", dicts as JSON
(as sd-scripts encodes them). Fields left unset are omitted rather than written as "None".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from ...arch import ARCHS
from .checks import (
    check_choice,
    check_dataset_dirs,
    check_int,
    check_network_args,
    check_tag_frequency,
    checked_float,
    checked_resolution,
    invalid,
    is_int,
)
from .run import TrainingRecord

MODELSPEC_VERSION = "1.0.0"
MODELSPEC_IMPL_SGM = "https://github.com/Stability-AI/generative-models"
MODELSPEC_IMPL_DIFFUSERS = "diffusers"
MIXED_PRECISIONS = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v")
DYNAMIC = "Dynamic"
"""ss_network_dim / ss_network_alpha of a file whose modules differ in rank or alpha (as sd-scripts writes it)."""

# scalar field -> ss_* key; a field left at None is not written
_SS_SCALARS: dict[str, str] = {
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
    training: TrainingRecord | None = None  # the rest of what a training run records (train/saving.py)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            invalid("arch", f"one of {sorted(ARCHS)}", self.arch)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        for name in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
            check_int(name, getattr(self, name), minimum=1 if name in _POSITIVE_INTS else 0)
        for name in _NON_NEGATIVE_FLOATS + _FRACTIONS:
            object.__setattr__(self, name, checked_float(name, getattr(self, name), fraction=name in _FRACTIONS))
        for name in _BOOLS:
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                invalid(name, "True, False or None", getattr(self, name))
        for name in _STRINGS:
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                invalid(name, "a string", getattr(self, name))
        if not self.network_module:
            invalid("network_module", "a non-empty module path", self.network_module)
        if self.training is not None and not isinstance(self.training, TrainingRecord):
            invalid("training", "a TrainingRecord or None", self.training)
        object.__setattr__(self, "resolution", checked_resolution(self.resolution))
        check_network_args(self.network_args)
        check_dataset_dirs(self.dataset_dirs)
        check_tag_frequency(self.tag_frequency)
        started, finished = self.training_started_at, self.training_finished_at
        if started is not None and finished is not None and finished < started:
            invalid("training_finished_at", f"not before training_started_at ({started})", finished)

    def to_metadata(self) -> dict[str, str]:
        """The ss_* and modelspec.* strings to store in the file's `__metadata__`."""
        arch = ARCHS[self.arch]
        out: dict[str, str] = {
            "ss_base_model_version": arch.ss_base_model_version,
            "ss_v2": str(self.arch == "sd2"),
        }
        out.update(NetworkRecord(self.network_module, self.network_dim, self.network_alpha,
                                 self.network_args).to_metadata())
        for name, key in _SS_SCALARS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = str(value)
        if self.output_name:
            out["ss_output_name"] = self.output_name
        width, height = self.resolution or (arch.default_resolution, arch.default_resolution)
        out["ss_resolution"] = str((width, height))
        if self.dataset_dirs:
            out["ss_dataset_dirs"] = json.dumps(self.dataset_dirs)
            out["ss_num_train_images"] = str(sum(d["n_repeats"] * d["img_count"] for d in self.dataset_dirs.values()))
        if self.tag_frequency:
            out["ss_tag_frequency"] = json.dumps(self.tag_frequency)
        out.update(self._modelspec(f"{width}x{height}"))
        if self.training is not None:
            out.update(self.training.to_metadata())
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


@dataclass(frozen=True)
class NetworkRecord:
    """The ss_network_* keys: the module path, dim and alpha (DYNAMIC when they differ by module), network_args."""

    module: str
    dim: int | Literal["Dynamic"]
    alpha: float | Literal["Dynamic"]  # any finite value: a file's own alpha may be negative
    args: dict[str, str | int | float | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.module, str) and self.module):
            invalid("network_module", "a non-empty module path", self.module)
        if self.dim != DYNAMIC and not (is_int(self.dim) and self.dim >= 1):
            invalid("network_dim", f"an integer >= 1 or {DYNAMIC!r}", self.dim)
        plain = isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
        if self.alpha != DYNAMIC and not (plain and math.isfinite(self.alpha)):
            invalid("network_alpha", f"a finite number or {DYNAMIC!r}", self.alpha)
        check_network_args(self.args)

    def to_metadata(self) -> dict[str, str]:
        """The keys as sd-scripts writes them: the alpha as a float, network_args as JSON (left out when empty)."""
        out = {
            "ss_network_module": self.module,
            "ss_network_dim": str(self.dim),
            "ss_network_alpha": DYNAMIC if self.alpha == DYNAMIC else str(float(self.alpha)),
        }
        if self.args:
            out["ss_network_args"] = json.dumps(self.args)
        return out


def with_network_shape(metadata: Mapping[str, str], dim: int | Literal["Dynamic"],
                       alpha: float | Literal["Dynamic"]) -> dict[str, str]:
    """`metadata` with ss_network_dim and ss_network_alpha set to `dim` and `alpha` (its other keys kept)."""
    shape = NetworkRecord("networks.lora", dim, alpha).to_metadata()
    return {**metadata, **{key: shape[key] for key in ("ss_network_dim", "ss_network_alpha")}}
