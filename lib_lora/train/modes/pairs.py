"""Image pairs for the difference mode: an original and its target, encoded once to latents.

`difference_original` is an image (its target is `difference_target`) or a folder of pairs where each original
`name.ext` has its target `name<suffix>.ext` beside it (Multi-ADDifT's rule; any image suffix). Both images of a
pair must be the same size; both are resized and centre-cropped to the run's resolution the same way, so what
differs between them stays where it is. PairData gives the batches of pass 1 (originals), pass 2 (targets) or
the direct pass (both).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from PIL import Image

from ...dataset.errors import ImageReadError
from ...dataset.images import IMAGE_SUFFIXES, open_image
from ...networks.metadata import DatasetRecord, ModeRecord
from ..augment import image_to_pixels
from ..buckets import crop_offset, plan_in_buckets, resize_and_crop
from ..errors import ConfigError, TrainingError

if TYPE_CHECKING:
    from ...hosts.base import Host
    from ...jobs import JobControl
    from .config import ModeConfig

MAX_PAIRS = 1000
"""The most pairs a folder gives (a difference LoRA is usually learned from one to a few dozen)."""
Side = Literal["original", "target", "both"]


@dataclass(frozen=True)
class ImagePair:
    original: Path
    target: Path


@dataclass(frozen=True)
class PairBatch:
    """One step's pairs: latents [B, 4, h, w] (scaled; None for the side a pass does not use) and captions."""

    original: torch.Tensor | None
    target: torch.Tensor | None
    captions: list[str]
    size: tuple[int, int]
    """(height, width) in pixels."""


def find_pairs(mode: ModeConfig) -> tuple[list[ImagePair], list[str]]:
    """The pairs the options name, and what was left out with the reason; ConfigError when there is none."""
    if mode.difference_original is None:
        raise ConfigError("difference_original", None, "set the original image (or a folder of pairs)")
    original = Path(mode.difference_original).expanduser()
    if original.is_dir():
        if mode.difference_target is not None:
            raise ConfigError("difference_target", mode.difference_target, "leave it empty when "
                              "difference_original is a folder of pairs (targets are found by their suffix)")
        return _folder_pairs(original, mode.difference_target_suffix)
    if not original.is_file():
        raise ConfigError("difference_original", str(original), "no such image or folder")
    if mode.difference_target is None:
        raise ConfigError("difference_target", None, "set the target image (the original changed where it should)")
    target = Path(mode.difference_target).expanduser()
    if not target.is_file():
        raise ConfigError("difference_target", str(target), "no such image")
    return [ImagePair(original, target)], []


def _folder_pairs(folder: Path, suffix: str) -> tuple[list[ImagePair], list[str]]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    by_stem = {p.stem: p for p in images}
    pairs, left_out = [], []
    for path in images:
        if path.stem.endswith(suffix):
            if path.stem[: -len(suffix)] not in by_stem:
                left_out.append(f"{path.name}: a target without its original")
            continue
        target = by_stem.get(path.stem + suffix)
        if target is None:
            left_out.append(f"{path.name}: no target {path.stem}{suffix}.*")
            continue
        pairs.append(ImagePair(path, target))
    if not pairs:
        raise ConfigError("difference_original", str(folder), f"no pair found: an original name.png needs its "
                                                              f"target name{suffix}.png beside it")
    if len(pairs) > MAX_PAIRS:
        raise ConfigError("difference_original", str(folder), f"{len(pairs)} pairs; at most {MAX_PAIRS}")
    return pairs, left_out


class PairData:
    """The pairs' latents, encoded once by the host's VAE; `side` says which of them the batches carry."""

    def __init__(self, pairs: list[ImagePair], host: Host, *, resolution: tuple[int, int], batch_size: int,
                 caption: str, side: Side, ignored: list[str] | None = None) -> None:
        self.pairs = pairs
        self.host = host
        self.resolution = resolution
        self.batch_size = batch_size
        self.caption = caption
        self.side = side
        self.ignored = list(ignored or [])
        self._latents: list[tuple[torch.Tensor, torch.Tensor]] = []

    def prepare(self, control: JobControl | None = None) -> None:
        """Read and encode every pair (both images, so a pass's two sides always come from the same crop)."""
        self._latents = []
        for number, pair in enumerate(self.pairs):
            if control is not None:
                control.check()
                control.progress(message=f"encoding image pair {number + 1}/{len(self.pairs)}")
            original, target = (_pixels(path) for path in (pair.original, pair.target))
            if original.size != target.size:
                raise TrainingError(f"{pair.target.name} is {target.size[0]}×{target.size[1]} and "
                                    f"{pair.original.name} {original.size[0]}×{original.size[1]}: a pair must be "
                                    "the same size")
            plan = plan_in_buckets(original.size, [self.resolution])
            offset = crop_offset(plan)
            self._latents.append(tuple(  # type: ignore[arg-type]
                _encode(self.host, image_to_pixels(resize_and_crop(image, plan, offset)), seed=number)
                for image in (original, target)))

    def __len__(self) -> int:
        return max(1, -(-len(self.pairs) // self.batch_size)) if self.pairs else 0

    def batches(self, epoch: int) -> Iterator[PairBatch]:
        """Batches of `batch_size` pairs in order (a single pair fills a batch with itself)."""
        if not self._latents:
            raise TrainingError("the image pairs were not prepared")
        order = [index % len(self._latents) for index in range(max(self.batch_size, len(self._latents)))]
        width, height = self.resolution
        for start in range(0, len(order), self.batch_size):
            chosen = [self._latents[i] for i in order[start:start + self.batch_size]]
            original = torch.cat([o for o, _ in chosen]) if self.side != "target" else None
            target = torch.cat([t for _, t in chosen]) if self.side != "original" else None
            yield PairBatch(original, target, [self.caption] * len(chosen), (height, width))

    def metadata(self) -> dict[str, str]:
        names = [{"original": p.original.name, "target": p.target.name} for p in self.pairs]
        counts = DatasetRecord(num_train_images=len(self.pairs) * (2 if self.side == "both" else 1),
                               num_batches_per_epoch=len(self))
        return {**counts.to_metadata(), **ModeRecord("difference", difference_pairs=names).to_metadata()}


def _encode(host: Host, pixels: torch.Tensor, *, seed: int) -> torch.Tensor:
    """[1, 4, h, w] latents of [3, H, W] pixels. The VAE samples its posterior: both images of a pair draw the same
    sample noise, so where they are equal their latents are equal too."""
    devices = [host.device] if host.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        return host.encode_images(pixels[None]).float().cpu()


def _pixels(path: Path) -> Image.Image:
    try:
        return open_image(path)
    except ImageReadError as error:
        raise TrainingError(str(error)) from None
