"""What a comparison reads before it renders: the training images to compare samples with, and the validation loss
of each file measured on a validation folder (train/validation.py: fixed noise and timesteps, as `validate`).

`run_comparison` is the whole comparison as the command line and the Train tab run it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..data_scan import scan_images
from ..errors import ConfigError
from .files import CompareError, CompareFile, describe_files
from .run import CompareResult, compare_files, file_losses
from .similarity import ImageEmbedder, image_embedder
from .spec import MAX_REFERENCE_IMAGES, CompareSpec

if TYPE_CHECKING:
    from ...blocks.grid import LoraRenderer
    from ...hosts.base import Host
    from ...jobs import JobControl

REFERENCE_SIDE = 256
"""Training images are shrunk to at most this side before their statistic or embedding is taken."""
VALIDATION_SEED = 0
VALIDATION_TIMESTEPS = 4


def reference_images(folder: str | os.PathLike[str], *, caption_extension: str = ".txt",
                     limit: int = MAX_REFERENCE_IMAGES) -> list[Image.Image]:
    """Up to `limit` training images of `folder` (its `<repeats>_<name>` subfolders, or itself), spread evenly
    over them in key order, shrunk to REFERENCE_SIDE; ConfigError naming `data` when there are none."""
    try:
        items = sorted(scan_images(folder, caption_extension=caption_extension, is_reg=False).items,
                       key=lambda item: item.key)
    except ConfigError as error:
        raise ConfigError("data", str(folder), error.reason) from None
    if not items:
        raise ConfigError("data", str(folder), "holds no training image")
    if len(items) > limit:
        items = [items[index * len(items) // limit] for index in range(limit)]
    images = []
    for item in items:
        with Image.open(item.path) as opened:
            image = opened.convert("RGB")
        image.thumbnail((REFERENCE_SIDE, REFERENCE_SIDE))
        images.append(image)
    return images


def measure_losses(host: Host, files: Sequence[CompareFile], folder: str | os.PathLike[str], *,
                   resolution: str = "512", caption_extension: str = ".txt", seed: int = VALIDATION_SEED,
                   timesteps: int = VALIDATION_TIMESTEPS, control: JobControl | None = None) -> list[float]:
    """Each file's validation loss on the images of `folder` with the fixed draws of `seed` (the model alone
    underneath: call it before rendering, or with every merged LoRA taken out)."""
    from ..config import TrainConfig
    from ..validation import ValidationSet, validation_loss

    try:
        config = TrainConfig.from_dict({"train_data_dir": str(folder), "resolution": resolution,
                                        "caption_extension": caption_extension, "validation_seed": seed,
                                        "validation_timesteps": timesteps})
    except ConfigError as error:
        key = "validation_dir" if error.key == "train_data_dir" else error.key
        raise ConfigError(key, error.value, error.reason) from None
    images = ValidationSet.prepare(config.data, host, seed=seed, control=control)
    losses = []
    for index, file in enumerate(files):
        if control is not None:
            control.check()
            control.progress(index, len(files), f"validation loss of {file.label}")
        losses.append(validation_loss(host, file.path, images, seed, timesteps=timesteps).loss)
    return losses


def run_comparison(host: Host, renderer: LoraRenderer, paths: Sequence[str | os.PathLike[str]], spec: CompareSpec,
                   control: JobControl, *, data: str | os.PathLike[str], validation_dir: str | None = None,
                   resolution: str | None = None, caption_extension: str = ".txt", model_name: str = "",
                   embedder: ImageEmbedder | None = None, save_to: Path | None = None,
                   check_loaders: bool = True) -> CompareResult:
    """The comparison of `paths` on `host`: files checked, training images read, validation losses measured (when
    `validation_dir` is given, before anything is rendered, with merged LoRAs taken out), then `compare_files`."""
    files = describe_files(paths)
    spec.check_size(len(files))
    reference_set = reference_images(data, caption_extension=caption_extension)
    embedder = embedder or image_embedder(host)
    control.progress(0, None, f"embedding {len(reference_set)} training images")
    reference = embedder.embed(reference_set)
    measured = None
    if validation_dir:
        unmerge = getattr(renderer, "unmerge", None)
        if callable(unmerge):
            unmerge()  # the loss is the file's alone, on the base weights
        measured = measure_losses(host, files, validation_dir, resolution=resolution or f"{spec.width},{spec.height}",
                                  caption_extension=caption_extension, control=control)
    losses, source = file_losses(files, measured)
    return compare_files(files, spec, renderer, control, embedder=embedder, reference=np.asarray(reference),
                         losses=losses, source=source, arch=host.arch, model_name=model_name or host.model_name,
                         save_to=save_to, loader_check=_loader_check if check_loaders else None)


def _loader_check(path: Path) -> Any:
    from ...networks.loaders import check_file

    return check_file(path)


__all__ = ["CompareError", "measure_losses", "reference_images", "run_comparison"]
