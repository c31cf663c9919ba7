"""TrainData: the training images as batches of latents, captions and loss weights, deterministic per (seed, epoch).

`prepare()` scans the folders, assigns buckets, balances the regularisation images, and caches latents (memory,
or disk keyed by image content, crop, flip and VAE) and text-encoder outputs when asked; it only encodes under
`torch.no_grad()`, so it runs inside or outside `host.training_mode()`. `batches(epoch)` then yields this rank's
batches: every epoch each bucket's uses are shuffled and cut into batches of `train_batch_size`, and the batch
order is shuffled, all from (seed, epoch), so every rank sees the same epoch and takes every world_size-th batch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..dataset.images import open_image
from ..hosts.base import Conditioning
from .augment import color_aug, flip_pixels, image_to_pixels
from .buckets import Bucketing, BucketPlan, crop_offset, resize_and_crop
from .captions import CaptionRules, caption_for_host, process_caption, tag_frequency
from .data_config import DataConfig
from .data_scan import ImageItem, balance_reg_repeats, scan_images
from .errors import ConfigError, TrainingError
from .latent_cache import LatentCache, LatentKey, cache_seed, derived_seed, encode_pixels, file_sha256, vae_identity

if TYPE_CHECKING:
    from ..hosts.base import Host
    from ..jobs import JobControl

TEXT_ENCODE_BATCH = 16
DEFAULT_CACHE_FOLDER = ".lora_studio_latents"
"""Where latents go inside train_data_dir when cache_latents_to_disk is on and no cache_dir is given."""


@dataclass
class TrainBatch:
    """One step's images, all of one bucket."""

    latents: torch.Tensor
    """[B, 4, h, w] float32 on the CPU, already multiplied by the latent scale."""
    captions: list[str]
    """This use's captions (prefix/suffix, shuffle, dropout applied), ready for host.encode_prompts (brackets
    escaped for hosts that read them as emphasis)."""
    conditioning: Conditioning | None
    """Cached text-encoder outputs (CPU) for these captions when TrainData was asked to cache them."""
    loss_weights: torch.Tensor
    """[B] float32: prior_loss_weight for regularisation images, 1 for training images."""
    sizes: list[tuple[int, int]]
    """(height, width) in pixels of each image's bucket (SDXL size conditioning)."""
    keys: list[str]
    """Stable ids of the images (paths relative to their data folder; "reg:" for regularisation images)."""

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class _Image:
    """A scanned image with its bucket plan and how often an epoch uses it."""

    item: ImageItem
    plan: BucketPlan
    uses: int


class TrainData:
    """The data of one training run on `host`; call `prepare()` once, then `batches(epoch)` per epoch.

    `cache_text_encoder_outputs` (the trainer's choice: the text encoder is not trained) encodes every distinct
    caption once; captions must then be fixed (no shuffle or dropout, else ConfigError). `cache_dir` is the folder
    of cached latents when `cache_latents_to_disk` is on (default: a hidden `.lora_studio_latents` folder in
    train_data_dir). `rank`/`world_size` pick this process's share of each epoch's batches.
    """

    def __init__(self, config: DataConfig, host: Host, *, seed: int, cache_text_encoder_outputs: bool,
                 cache_dir: Path | None = None, rank: int = 0, world_size: int = 1) -> None:
        if config.train_data_dir is None:
            raise ConfigError("train_data_dir", None, "set the folder of training images")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError("rank", rank, f"must lie in 0..{world_size - 1} for world_size {world_size}")
        self.rules = CaptionRules.from_config(config)
        varying = self.rules.varying_options()
        if cache_text_encoder_outputs and varying:
            raise ConfigError(varying[0], getattr(config, varying[0]),
                              f"captions must stay fixed while text-encoder outputs are cached "
                              f"(cache_text_encoder_outputs); turn off {', '.join(varying)} or train the text "
                              f"encoder")
        self.config = config
        self.host = host
        self.seed = seed
        self.cache_text_encoder_outputs = cache_text_encoder_outputs
        self.rank = rank
        self.world_size = world_size
        self.bucketing = Bucketing.create(
            config.resolution, enable_bucket=config.enable_bucket, min_bucket_reso=config.min_bucket_reso,
            max_bucket_reso=config.max_bucket_reso, bucket_reso_steps=config.bucket_reso_steps,
            bucket_no_upscale=config.bucket_no_upscale)
        if config.cache_latents_to_disk and cache_dir is None:
            cache_dir = Path(config.train_data_dir).expanduser() / DEFAULT_CACHE_FOLDER
        self.latent_cache = LatentCache(cache_dir if config.cache_latents_to_disk else None)
        self.ignored: list[str] = []
        """Folders and files of the data folders that were left out (for the UI to show)."""
        self.encoded_images = 0
        """Images encoded with the VAE so far (cache misses and uncached batches)."""
        self._images: list[_Image] = []
        self._latent_keys: dict[tuple[int, bool], LatentKey] = {}
        self._text_cache: dict[tuple[str, tuple[int, int] | None], Conditioning] = {}
        self._prepared = False

    # --- preparing ------------------------------------------------------------------------------------------

    def prepare(self, control: JobControl | None = None) -> None:
        """Scan, bucket, balance; cache latents and text-encoder outputs as configured. Reports through `control`."""
        self._prepared = False
        train = scan_images(self.config.train_data_dir, caption_extension=self.config.caption_extension,
                            is_reg=False)  # type: ignore[arg-type]
        num_train = sum(item.repeats for item in train.items)
        if num_train == 0:
            raise TrainingError(f"no training images found in {self.config.train_data_dir} (images go in "
                                "<repeats>_<name> subfolders with repeats of at least 1, e.g. 10_mychar)")
        reg_items: list[ImageItem] = []
        self.ignored = list(train.ignored)
        if self.config.reg_data_dir is not None:
            reg = scan_images(self.config.reg_data_dir, caption_extension=self.config.caption_extension,
                              is_reg=True)
            reg_items, self.ignored = reg.items, self.ignored + [f"reg: {note}" for note in reg.ignored]
        reg_uses = balance_reg_repeats([item.repeats for item in reg_items], num_train)
        uses = [item.repeats for item in train.items] + reg_uses
        self._images = [_Image(item, self._plan(item), count)
                        for item, count in zip(train.items + reg_items, uses)]
        self._latent_keys = {}
        if self.config.cache_latents:
            self._cache_latents(control)
        if self.cache_text_encoder_outputs:
            self._cache_text(control)
        self._prepared = True

    def _plan(self, item: ImageItem) -> BucketPlan:
        try:
            return self.bucketing.plan(item.size)
        except TrainingError as error:
            raise TrainingError(f"{item.path}: {error}") from error

    def _used(self) -> list[int]:
        return [index for index, image in enumerate(self._images) if image.uses > 0]

    def _cache_latents(self, control: JobControl | None) -> None:
        vae = vae_identity(self.host)
        flips = (False, True) if self.config.flip_aug else (False,)
        missing: dict[tuple[int, int], list[tuple[int, bool]]] = {}
        for index in self._used():
            image = self._images[index]
            sha = file_sha256(image.item.path)
            for flipped in flips:
                key = LatentKey(sha, image.plan.bucket, image.plan.resized, crop_offset(image.plan), flipped, vae)
                self._latent_keys[(index, flipped)] = key
                if self.latent_cache.get(key) is None:
                    missing.setdefault(image.plan.bucket, []).append((index, flipped))
        total = sum(len(jobs) for jobs in missing.values())
        done = 0
        self._report(control, 0, total, "caching latents")
        step = self.config.vae_batch_size
        for bucket in sorted(missing):
            jobs = missing[bucket]
            for start in range(0, len(jobs), step):
                chunk = jobs[start:start + step]
                pixels = torch.stack([self._pixels(index, flipped, None) for index, flipped in chunk])
                keys = [self._latent_keys[job] for job in chunk]
                latents = encode_pixels(self.host, pixels, seed=cache_seed(self.seed, keys[0]))
                self.encoded_images += len(chunk)
                for key, latent in zip(keys, latents):
                    self.latent_cache.put(key, latent)
                done += len(chunk)
                self._report(control, done, total, "caching latents")

    def _cache_text(self, control: JobControl | None) -> None:
        wanted: dict[tuple[int, int] | None, set[str]] = {}
        for index in self._used():
            text, size = self._fixed_caption(index), self._text_size(self._images[index].plan)
            wanted.setdefault(size, set()).add(text)
        self._text_cache = {}
        total, done = sum(len(texts) for texts in wanted.values()), 0
        for size, texts in wanted.items():
            ordered = sorted(texts)
            for start in range(0, len(ordered), TEXT_ENCODE_BATCH):
                chunk = ordered[start:start + TEXT_ENCODE_BATCH]
                with torch.no_grad():
                    encoded = self.host.encode_prompts(chunk, with_grad=False, size=size).detach().to("cpu")
                for row, text in enumerate(chunk):
                    self._text_cache[(text, size)] = encoded.select(slice(row, row + 1))
                done += len(chunk)
                self._report(control, done, total, "caching text-encoder outputs")

    def _fixed_caption(self, index: int) -> str:
        caption = process_caption(self._images[index].item.caption, self.rules, random.Random(0), epoch=0)
        return caption_for_host(caption, self.host.kind)

    def _text_size(self, plan: BucketPlan) -> tuple[int, int] | None:
        """(height, width) for SDXL's size conditioning; None where the encoding does not depend on it."""
        return (plan.bucket[1], plan.bucket[0]) if self.host.arch.name == "sdxl" else None

    @staticmethod
    def _report(control: JobControl | None, done: int, total: int, message: str) -> None:
        if control is not None:
            control.check()
            control.progress(done=done, total=total, message=message)

    # --- pixels ---------------------------------------------------------------------------------------------

    def _pixels(self, index: int, flipped: bool, rng: random.Random | None) -> torch.Tensor:
        """[3, h, w] in [-1, 1]: the image resized and cropped into its bucket; with `rng`, the random augments."""
        image = self._images[index]
        picture = open_image(image.item.path)
        if picture.size != image.item.size:
            raise TrainingError(f"{image.item.path}: the image changed on disk since prepare() "
                                f"({image.item.size} → {picture.size}); prepare again")
        random_crop = rng if rng is not None and self.config.random_crop else None
        picture = resize_and_crop(picture, image.plan, crop_offset(image.plan, random_crop))
        if rng is not None and self.config.color_aug:
            picture = color_aug(picture, rng)
        pixels = image_to_pixels(picture)
        return flip_pixels(pixels) if flipped else pixels

    # --- epochs ---------------------------------------------------------------------------------------------

    def _require_prepared(self) -> None:
        if not self._prepared:
            raise TrainingError("TrainData.prepare() must run before the batches are read")

    def _all_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of the epoch (image indices), the same on every rank."""
        rng = random.Random(derived_seed(self.seed, "epoch", epoch))
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(self._images):
            by_bucket.setdefault(image.plan.bucket, []).extend([index] * image.uses)
        size = self.config.train_batch_size
        batches = []
        for bucket in sorted(by_bucket):
            members = by_bucket[bucket]
            rng.shuffle(members)
            batches.extend(members[start:start + size] for start in range(0, len(members), size))
        rng.shuffle(batches)
        return batches

    def _rank_batches(self, epoch: int) -> list[tuple[int, list[int]]]:
        """This rank's (batch number, image indices); the epoch is padded with its first batches so that every
        rank gets as many (DDP steps in lockstep), as accelerate's even_batches does."""
        batches = self._all_batches(epoch)
        count = len(batches)
        padded = -(-count // self.world_size) * self.world_size
        numbered = [(number % count, batches[number % count]) for number in range(padded)]
        return numbered[self.rank::self.world_size]

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        self._require_prepared()
        size = self.config.train_batch_size
        counts: dict[tuple[int, int], int] = {}
        for image in self._images:
            counts[image.plan.bucket] = counts.get(image.plan.bucket, 0) + image.uses
        total = sum(-(-count // size) for count in counts.values())
        return -(-total // self.world_size)

    def batches(self, epoch: int, *, start: int = 0) -> Iterator[TrainBatch]:
        """This rank's batches of `epoch` (counted from 0); the same (seed, epoch) gives the same batches.

        `start` skips that many batches without loading or encoding them (resuming in the middle of an epoch).
        """
        self._require_prepared()
        for number, members in self._rank_batches(epoch)[start:]:
            yield self._batch(epoch, number, members)

    def _batch(self, epoch: int, number: int, members: list[int]) -> TrainBatch:
        captions, flips, pixels = [], [], []
        for position, index in enumerate(members):
            rng = random.Random(derived_seed(self.seed, "use", epoch, number, position))
            image = self._images[index]
            caption = process_caption(image.item.caption, self.rules, rng, epoch=epoch)
            captions.append(caption_for_host(caption, self.host.kind))
            flipped = self.config.flip_aug and rng.random() < 0.5
            flips.append(flipped)
            if not self.config.cache_latents:
                pixels.append(self._pixels(index, flipped, rng))
        if self.config.cache_latents:
            latents = torch.stack([self._cached_latent(index, flipped) for index, flipped in zip(members, flips)])
        else:
            latents = encode_pixels(self.host, torch.stack(pixels), seed=derived_seed(self.seed, "encode", epoch,
                                                                                    number))
            self.encoded_images += len(members)
        plans = [self._images[index].plan for index in members]
        conditioning = None
        if self.cache_text_encoder_outputs:
            conditioning = Conditioning.cat([self._text_cache[(text, self._text_size(plan))]
                                             for text, plan in zip(captions, plans)])
        weights = [self.config.prior_loss_weight if self._images[i].item.is_reg else 1.0 for i in members]
        return TrainBatch(
            latents=latents,
            captions=captions,
            conditioning=conditioning,
            loss_weights=torch.tensor(weights, dtype=torch.float32),
            sizes=[(plan.bucket[1], plan.bucket[0]) for plan in plans],
            keys=[self._images[index].item.key for index in members],
        )

    def _cached_latent(self, index: int, flipped: bool) -> torch.Tensor:
        latent = self.latent_cache.get(self._latent_keys[(index, flipped)])
        if latent is None:  # only if the cache was emptied behind our back
            raise TrainingError(f"{self._images[index].item.path}: cached latent missing; prepare again")
        return latent

    def latent_key(self, key: str, *, flipped: bool = False) -> LatentKey:
        """The cache key of image `key` (as in TrainBatch.keys), for tools and tests; KeyError if not cached."""
        index = next((i for i, image in enumerate(self._images) if image.item.key == key), None)
        if index is None or (index, flipped) not in self._latent_keys:
            raise KeyError(f"no cached latent for {key!r} (flipped={flipped})")
        return self._latent_keys[(index, flipped)]

    def cached_latent(self, key: str, *, flipped: bool = False) -> torch.Tensor:
        """The cached latent [4, h, w] of image `key`; KeyError if it is not cached."""
        latent = self.latent_cache.get(self.latent_key(key, flipped=flipped))
        if latent is None:
            raise KeyError(f"no cached latent for {key!r} (flipped={flipped})")
        return latent

    # --- counts and metadata --------------------------------------------------------------------------------

    @property
    def num_train_images(self) -> int:
        """Training images times their repeats (sd-scripts' ss_num_train_images)."""
        return sum(image.item.repeats for image in self._images if not image.item.is_reg)

    @property
    def num_reg_images(self) -> int:
        """Regularisation images times their folder repeats, as sd-scripts counts them (before balancing)."""
        return sum(image.item.repeats for image in self._images if image.item.is_reg)

    def metadata(self) -> dict[str, str]:
        """sd-scripts' ss_* dataset fields, every value a string (dicts as JSON); ss_resolution is the trainer's."""
        self._require_prepared()
        config = self.config
        return {
            "ss_num_train_images": str(self.num_train_images),
            "ss_num_reg_images": str(self.num_reg_images),
            "ss_num_batches_per_epoch": str(len(self)),
            "ss_batch_size_per_device": str(config.train_batch_size),
            "ss_dataset_dirs": json.dumps(self._folder_counts(reg=False)),
            "ss_reg_dataset_dirs": json.dumps(self._folder_counts(reg=True)),
            "ss_tag_frequency": json.dumps(self._tag_frequency()),
            "ss_bucket_info": json.dumps(self._bucket_info()),
            "ss_enable_bucket": str(config.enable_bucket),
            "ss_bucket_no_upscale": str(config.bucket_no_upscale),
            "ss_min_bucket_reso": str(config.min_bucket_reso),
            "ss_max_bucket_reso": str(config.max_bucket_reso),
            "ss_shuffle_caption": str(config.shuffle_caption),
            "ss_keep_tokens": str(config.keep_tokens),
            "ss_caption_dropout_rate": str(config.caption_dropout_rate),
            "ss_caption_dropout_every_n_epochs": str(config.caption_dropout_every_n_epochs),
            "ss_caption_tag_dropout_rate": str(config.caption_tag_dropout_rate),
            "ss_prior_loss_weight": str(config.prior_loss_weight),
            "ss_flip_aug": str(config.flip_aug),
            "ss_color_aug": str(config.color_aug),
            "ss_random_crop": str(config.random_crop),
            "ss_cache_latents": str(config.cache_latents),
        }

    def _folder_counts(self, *, reg: bool) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for image in self._images:
            if image.item.is_reg == reg:
                entry = counts.setdefault(image.item.subset, {"n_repeats": image.item.repeats, "img_count": 0})
                entry["img_count"] += 1
        return counts

    def _tag_frequency(self) -> dict[str, dict[str, int]]:
        by_folder: dict[str, list[str]] = {}
        for image in self._images:
            by_folder.setdefault(image.item.subset, []).append(image.item.caption)
        return {folder: tag_frequency(captions) for folder, captions in by_folder.items()}

    def _bucket_info(self) -> dict[str, object]:
        counts: dict[tuple[int, int], int] = {}
        for image in self._images:
            if image.uses:
                counts[image.plan.bucket] = counts.get(image.plan.bucket, 0) + image.uses
        used = [image for image in self._images if image.uses]
        mean_error = sum(abs(image.plan.aspect_error) for image in used) / len(used) if used else 0.0
        buckets = {str(i): {"resolution": list(bucket), "count": counts[bucket]}
                   for i, bucket in enumerate(sorted(counts))}
        return {"buckets": buckets, "mean_img_ar_error": mean_error}
