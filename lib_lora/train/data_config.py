"""DataConfig: the training data settings under sd-scripts' argument names, validated where they are made.

Every field is one sd-scripts option with its default (except `cache_latents`, on by default here because the
data is read from the host's VAE once instead of every step). Values from a TOML file, a form or a command line
are coerced ("512,768", "true", "0.1") and checked; a bad one raises ConfigError naming the option. The help
text of each field lives in its metadata; DATA_HELP collects it so the CLI and the Train tab say the same words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .bounds import number_option
from .errors import ConfigError
from .values import read_bool

MAX_TEXT_CHARS = 65536
"""The longest text option (caption parts, separators, folders): captions and metadata carry them."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DataConfig:
    """Where the images are and how they become batches; see DATA_HELP for each option's meaning."""

    train_data_dir: str | None = field(default=None, metadata=_help(
        "Folder of training images in <repeats>_<name> subfolders (e.g. 10_mychar); unnumbered subfolders are "
        "ignored as in sd-scripts. A folder with images directly in it is also accepted and counts as 1 repeat."))
    reg_data_dir: str | None = field(default=None, metadata=_help(
        "Folder of regularisation images in <repeats>_<class> subfolders; they are repeated or trimmed to the "
        "number of training images and weighted by prior_loss_weight."))
    prior_loss_weight: float = field(default=1.0, metadata=_help(
        "Loss weight of the regularisation images (training images weigh 1)."))
    resolution: tuple[int, int] = field(default=(512, 512), metadata=_help(
        "Training resolution as 'size' or 'width,height' (multiples of 8); with buckets, the pixel budget of "
        "every bucket."))
    enable_bucket: bool = field(default=False, metadata=_help(
        "Group images into aspect-ratio buckets instead of cropping every image to the resolution."))
    min_bucket_reso: int = field(default=256, metadata=_help(
        "Smallest bucket side in pixels (rounded down to bucket_reso_steps)."))
    max_bucket_reso: int = field(default=1024, metadata=_help(
        "Largest bucket side in pixels (rounded up to bucket_reso_steps)."))
    bucket_reso_steps: int = field(default=64, metadata=_help(
        "Bucket sides are multiples of this many pixels (a multiple of 8; SDXL allows 32)."))
    bucket_no_upscale: bool = field(default=False, metadata=_help(
        "Never enlarge an image: each image gets a bucket no larger than itself (min/max bucket sizes are then "
        "ignored)."))
    caption_extension: str = field(default=".txt", metadata=_help(
        "Extension of the caption file next to each image: .txt, as the Dataset tab and kohya_ss write them "
        "(sd-scripts alone defaults to .caption). Images without one are captioned with their folder's class name."))
    shuffle_caption: bool = field(default=False, metadata=_help(
        "Shuffle the caption's tags every time the image is used (the kept tokens stay in front)."))
    keep_tokens: int = field(default=0, metadata=_help(
        "Number of leading tags that are never shuffled or dropped (e.g. 1 keeps the trigger word first)."))
    keep_tokens_separator: str = field(default="", metadata=_help(
        "Marker such as ||| that ends the fixed part of a caption instead of keep_tokens; a second marker starts "
        "a fixed tail."))
    caption_separator: str = field(default=",", metadata=_help("Separator between the tags of a caption."))
    caption_dropout_rate: float = field(default=0.0, metadata=_help(
        "Probability that an image is trained with an empty caption."))
    caption_dropout_every_n_epochs: int = field(default=0, metadata=_help(
        "Train every n-th epoch with empty captions (0 = never)."))
    caption_tag_dropout_rate: float = field(default=0.0, metadata=_help(
        "Probability that each tag outside the kept tokens is left out."))
    caption_prefix: str | None = field(default=None, metadata=_help(
        "Text put before every caption (joined with a space)."))
    caption_suffix: str | None = field(default=None, metadata=_help(
        "Text put after every caption (joined with a space)."))
    flip_aug: bool = field(default=False, metadata=_help(
        "Mirror images horizontally at random (half the time); works with cached latents."))
    color_aug: bool = field(default=False, metadata=_help(
        "Weak random hue/gamma change; needs cache_latents off."))
    random_crop: bool = field(default=False, metadata=_help(
        "Crop at a random place instead of the centre; needs cache_latents off."))
    cache_latents: bool = field(default=True, metadata=_help(
        "Encode every image with the VAE once before training and keep the latents in memory."))
    cache_latents_to_disk: bool = field(default=False, metadata=_help(
        "Also keep the cached latents on disk, reused by later runs while images, buckets and VAE are unchanged "
        "and by a run started again after a stop or crash; training then reads them batch by batch instead of "
        "holding them all in memory, and several processes share the encoding (turns cache_latents on)."))
    vae_batch_size: int = field(default=1, metadata=_help("Images per VAE call while caching latents."))
    train_batch_size: int = field(default=1, metadata=_help(
        "Images per training step (a batch holds images of one bucket)."))

    def __post_init__(self) -> None:
        for item in fields(self):
            setattr(self, item.name, _COERCE[item.name](item.name, getattr(self, item.name)))
        self._check_consistency()

    def _check_consistency(self) -> None:
        if self.min_bucket_reso > self.max_bucket_reso:
            raise ConfigError("min_bucket_reso", self.min_bucket_reso,
                              f"must not exceed max_bucket_reso ({self.max_bucket_reso})")
        if self.enable_bucket and not self.bucket_no_upscale:
            if min(self.resolution) < self.min_bucket_reso:
                raise ConfigError("min_bucket_reso", self.min_bucket_reso,
                                  f"must not exceed the smaller side of resolution {self.resolution}")
            if max(self.resolution) > self.max_bucket_reso:
                raise ConfigError("max_bucket_reso", self.max_bucket_reso,
                                  f"must be at least the larger side of resolution {self.resolution}")
        if self.cache_latents_to_disk:
            self.cache_latents = True  # sd-scripts: caching to disk implies caching
        for key in ("color_aug", "random_crop"):
            if getattr(self, key) and self.cache_latents:
                raise ConfigError(key, True, "changes the pixels every epoch, so it needs cache_latents = false "
                                             "(and cache_latents_to_disk = false)")

    @property
    def width(self) -> int:
        return self.resolution[0]

    @property
    def height(self) -> int:
        return self.resolution[1]


# --- coercion: one checker per field kind, applied by name ----------------------------------------------------


def _multiple_of_8(key: str, value: object) -> int:
    number = int(number_option()(key, value))  # type: ignore[arg-type]
    if number % 8:
        raise ConfigError(key, value, "must be a multiple of 8 (the VAE works on 8×8 pixel cells)")
    return number


def _resolution(key: str, value: object) -> tuple[int, int]:
    """'512' or 512 → (512, 512); '512,768', [512, 768] or (512, 768) → (width, height) = (512, 768)."""
    parts: list[object]
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ConfigError(key, value, "expected one size or 'width,height'")
    try:
        width, height = (_multiple_of_8(key, p) for p in parts)
    except ConfigError as error:
        raise ConfigError(key, value, f"each side: {error.reason}") from None
    return width, height


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, value, "expected text")
    if len(value) > MAX_TEXT_CHARS:
        raise ConfigError(key, value, f"{len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value


def _optional_text(key: str, value: object) -> str | None:
    return None if value is None else _text(key, value)


def _optional_folder(key: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    text = _text(key, value)
    return text if text.strip() else None


def _non_empty(key: str, value: object) -> str:
    text = _text(key, value)
    if not text:
        raise ConfigError(key, value, "must not be empty")
    return text


def _caption_extension(key: str, value: object) -> str:
    text = _non_empty(key, value)
    if not text.startswith(".") or len(text) < 2 or any(c in text for c in "/\\"):
        raise ConfigError(key, value, "expected a file extension starting with '.', such as .txt or .caption")
    return text


_COERCE: dict[str, Callable[[str, Any], Any]] = {
    "train_data_dir": _optional_folder,
    "reg_data_dir": _optional_folder,
    "prior_loss_weight": number_option(),
    "resolution": _resolution,
    "enable_bucket": read_bool,
    "min_bucket_reso": number_option(),
    "max_bucket_reso": number_option(),
    "bucket_reso_steps": _multiple_of_8,
    "bucket_no_upscale": read_bool,
    "caption_extension": _caption_extension,
    "shuffle_caption": read_bool,
    "keep_tokens": number_option(),
    "keep_tokens_separator": _text,
    "caption_separator": _non_empty,
    "caption_dropout_rate": number_option(),
    "caption_dropout_every_n_epochs": number_option(),
    "caption_tag_dropout_rate": number_option(),
    "caption_prefix": _optional_text,
    "caption_suffix": _optional_text,
    "flip_aug": read_bool,
    "color_aug": read_bool,
    "random_crop": read_bool,
    "cache_latents": read_bool,
    "cache_latents_to_disk": read_bool,
    "vae_batch_size": number_option(),
    "train_batch_size": number_option(),
}

DATA_HELP: dict[str, str] = {item.name: item.metadata["help"] for item in fields(DataConfig)}
"""Option name → one-line help, shown by the command line and the Train tab alike."""
