"""What a training run adds to its file: the rest of sd-scripts' training keys (`TrainingRecord`), the data
source's keys (`DatasetRecord`), the training mode's own keys (`ModeRecord`), and how the parts make one file.

Values are written as the run's config holds them (`str()`, as sd-scripts does), never converted, so a file keeps
the exact strings it always had; fields left at None are not written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from .checks import check_dataset_dirs, check_int, check_plain, check_tag_frequency, invalid

if TYPE_CHECKING:
    from .lora import LoraMetadata

_NUMBER = (int, float)
_TRAINING_BOOLS = ("full_fp16", "fp8_base", "fp8_base_unet", "noise_offset_random_strength",
                   "cache_text_encoder_outputs", "network_train_unet_only", "network_train_text_encoder_only")
_TRAINING_TEXTS = ("loss_type", "huber_schedule")


@dataclass(frozen=True)
class TrainingRecord:
    """sd-scripts' training keys beyond LoraMetadata's fields: each is written as `ss_<field name>`, except
    `timestep_range`, which is modelspec.timestep_range ("low,high")."""

    full_fp16: bool
    fp8_base: bool
    fp8_base_unet: bool
    max_grad_norm: float | None
    lr_scheduler_num_cycles: int | None
    lr_scheduler_power: float | None
    multires_noise_iterations: int | None
    multires_noise_discount: float | None
    adaptive_noise_scale: float | None
    noise_offset_random_strength: bool
    loss_type: str
    huber_schedule: str
    huber_c: float | None
    scale_weight_norms: float | None
    total_batch_size: int
    cache_text_encoder_outputs: bool
    network_train_unet_only: bool
    network_train_text_encoder_only: bool
    timestep_range: tuple[int, int]

    def __post_init__(self) -> None:
        for item in fields(self):
            kind = bool if item.name in _TRAINING_BOOLS else str if item.name in _TRAINING_TEXTS else _NUMBER
            if item.name != "timestep_range":
                check_plain(item.name, getattr(self, item.name), kind)
        low_high = self.timestep_range
        if not (isinstance(low_high, tuple) and len(low_high) == 2 and all(isinstance(t, int) for t in low_high)):
            invalid("timestep_range", "(low, high) as two integers", low_high)

    def to_metadata(self) -> dict[str, str]:
        out = {f"ss_{item.name}": str(getattr(self, item.name)) for item in fields(self)
               if item.name != "timestep_range" and getattr(self, item.name) is not None}
        low, high = self.timestep_range
        out["modelspec.timestep_range"] = f"{low},{high}"
        return out


_DATASET_KEYS = {
    "num_train_images": "ss_num_train_images",
    "num_reg_images": "ss_num_reg_images",
    "num_batches_per_epoch": "ss_num_batches_per_epoch",
    "batch_size": "ss_batch_size_per_device",
    "dataset_dirs": "ss_dataset_dirs",
    "reg_dataset_dirs": "ss_reg_dataset_dirs",
    "tag_frequency": "ss_tag_frequency",
    "bucket_info": "ss_bucket_info",
    "enable_bucket": "ss_enable_bucket",
    "bucket_no_upscale": "ss_bucket_no_upscale",
    "min_bucket_reso": "ss_min_bucket_reso",
    "max_bucket_reso": "ss_max_bucket_reso",
    "shuffle_caption": "ss_shuffle_caption",
    "keep_tokens": "ss_keep_tokens",
    "caption_dropout_rate": "ss_caption_dropout_rate",
    "caption_dropout_every_n_epochs": "ss_caption_dropout_every_n_epochs",
    "caption_tag_dropout_rate": "ss_caption_tag_dropout_rate",
    "prior_loss_weight": "ss_prior_loss_weight",
    "flip_aug": "ss_flip_aug",
    "color_aug": "ss_color_aug",
    "random_crop": "ss_random_crop",
    "cache_latents": "ss_cache_latents",
}
_DATASET_JSON = ("dataset_dirs", "reg_dataset_dirs", "tag_frequency", "bucket_info")
_DATASET_BOOLS = ("enable_bucket", "bucket_no_upscale", "shuffle_caption", "flip_aug", "color_aug", "random_crop",
                  "cache_latents")
_DATASET_COUNTS = ("num_train_images", "num_reg_images", "num_batches_per_epoch", "batch_size", "min_bucket_reso",
                   "max_bucket_reso", "keep_tokens", "caption_dropout_every_n_epochs")


@dataclass(frozen=True)
class DatasetRecord:
    """sd-scripts' dataset keys of a training file: image and batch counts, folders, tags, buckets and the data
    options (dicts written as JSON). A data source without images (slider, pairs) sets only the counts."""

    num_train_images: int
    num_batches_per_epoch: int
    num_reg_images: int | None = None
    batch_size: int | None = None
    dataset_dirs: dict[str, dict[str, int]] | None = None
    reg_dataset_dirs: dict[str, dict[str, int]] | None = None
    tag_frequency: dict[str, dict[str, int]] | None = None
    bucket_info: dict[str, object] | None = None
    enable_bucket: bool | None = None
    bucket_no_upscale: bool | None = None
    min_bucket_reso: int | None = None
    max_bucket_reso: int | None = None
    shuffle_caption: bool | None = None
    keep_tokens: int | None = None
    caption_dropout_rate: float | None = None
    caption_dropout_every_n_epochs: int | None = None
    caption_tag_dropout_rate: float | None = None
    prior_loss_weight: float | None = None
    flip_aug: bool | None = None
    color_aug: bool | None = None
    random_crop: bool | None = None
    cache_latents: bool | None = None

    def __post_init__(self) -> None:
        for name in _DATASET_COUNTS:
            check_int(name, getattr(self, name), minimum=0)
        for name in _DATASET_BOOLS:
            check_plain(name, getattr(self, name), bool)
        for name in ("caption_dropout_rate", "caption_tag_dropout_rate", "prior_loss_weight"):
            check_plain(name, getattr(self, name), _NUMBER)
        for name in ("dataset_dirs", "reg_dataset_dirs"):
            if getattr(self, name) is not None:
                check_dataset_dirs(getattr(self, name), name)
        if self.tag_frequency is not None:
            check_tag_frequency(self.tag_frequency)
        if self.bucket_info is not None and not isinstance(self.bucket_info, dict):
            invalid("bucket_info", "a dict or None", self.bucket_info)

    def to_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, key in _DATASET_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = json.dumps(value) if name in _DATASET_JSON else str(value)
        return out


TRAINING_MODES = ("slider", "difference", "rounds")


@dataclass(frozen=True)
class ModeRecord:
    """What a training mode other than plain LoRA trained from, in our own lora_studio_* keys."""

    training_mode: str
    slider_prompts: list[dict[str, object]] | None = None  # slider: each prompt set as a dict
    difference_pairs: list[dict[str, str]] | None = None  # difference: {"original", "target"} file names
    rounds: list[str] | None = None  # rounds: each round as written in the config
    rounds_error: float | None = None  # rounds: the relative error of the final cut

    def __post_init__(self) -> None:
        if self.training_mode not in TRAINING_MODES:
            invalid("training_mode", f"one of {list(TRAINING_MODES)}", self.training_mode)
        for name in ("slider_prompts", "difference_pairs", "rounds"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), list):
                invalid(name, "a list or None", getattr(self, name))
        check_plain("rounds_error", self.rounds_error, _NUMBER)

    def to_metadata(self) -> dict[str, str]:
        out = {"lora_studio_training_mode": self.training_mode}
        if self.slider_prompts is not None:
            out["lora_studio_slider_prompts"] = json.dumps(self.slider_prompts, ensure_ascii=False)
        if self.difference_pairs is not None:
            out["lora_studio_difference_pairs"] = json.dumps(self.difference_pairs, ensure_ascii=False)
        if self.rounds is not None:
            out["lora_studio_rounds"] = ";".join(self.rounds)
        if self.rounds_error is not None:
            out["lora_studio_rounds_error"] = f"{self.rounds_error:.6g}"
        return out


_NETWORK_KEYS = frozenset({"ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args"})
_MODE_KEYS = frozenset({"lora_studio_training_mode", "lora_studio_slider_prompts", "lora_studio_difference_pairs",
                        "lora_studio_rounds", "lora_studio_rounds_error"})


def run_file_metadata(run: LoraMetadata, *, dataset: Mapping[str, str], network: Mapping[str, str]) -> dict[str, str]:
    """A training run's file: `run`'s keys, then the data source's (DatasetRecord + ModeRecord) and the trained
    network's (NetworkRecord + ModeRecord), which own their keys: `run`'s values for those give way. A value "None"
    is left out. ValueError when a part writes a key that is not its own."""
    _check_part("dataset", dataset, frozenset(_DATASET_KEYS.values()) | _MODE_KEYS)
    _check_part("network", network, _NETWORK_KEYS | _MODE_KEYS)
    out = {**run.to_metadata(), **dataset, **network}
    return {key: value for key, value in out.items() if value != "None"}


def _check_part(name: str, part: Mapping[str, str], own: frozenset[str]) -> None:
    foreign = sorted(set(part) - own)
    if foreign:
        invalid(f"{name} metadata", f"only its own keys ({', '.join(sorted(own))})", foreign)
