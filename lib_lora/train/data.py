"""TrainData: the training images as batches of latents, captions and loss weights, deterministic per (seed, epoch).

`prepare()` scans the folders, assigns buckets, balances the regularisation images, and caches latents (memory,
or disk keyed by image content, crop, flip and VAE) and text-encoder outputs when asked; it only encodes under
`torch.no_grad()`, so it runs inside or outside `host.training_mode()`. `batches(epoch)` then yields this rank's
batches: every epoch each bucket's uses are shuffled and cut into batches of `train_batch_size`, and the batch
order is shuffled, all from (seed, epoch), so every rank sees the same epoch and takes every world_size-th batch
(epoch_order.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..dataset.images import open_image
from ..hosts.base import Conditioning
from ..networks.metadata import DatasetRecord
from .augment import color_aug, flip_pixels, image_to_pixels
from .buckets import Bucketing, BucketPlan, crop_offset, resize_and_crop
from .caption_rules import CaptionRules, caption_for_host, process_caption
from .data_config import DataConfig
from .data_metadata import bucket_info, folder_counts, tag_frequencies
from .data_prep import PrepReporter, bucket_batches, fill_cache, verify_cached
from .data_scan import ImageItem, balance_reg_repeats, scan_images
from .epoch_order import batches_per_rank, epoch_batches, rank_batches
from .errors import ConfigError, TrainingError
from .latent_cache import (
    LatentCache,
    LatentKey,
    cache_seed,
    derived_seed,
    encode_pixels,
    image_identity,
    vae_identity,
)
from .text_cache import TextCache, TextKey, text_encoder_identity, text_order

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
class PreparedImage:
    """A scanned image with its bucket plan and how often an epoch uses it."""

    item: ImageItem
    plan: BucketPlan
    uses: int


class TrainData:
    """The data of one training run on `host`; call `prepare()` once, then `batches(epoch)` per epoch.

    `cache_text_encoder_outputs` (the trainer's choice: the text encoder is not trained) encodes every distinct
    caption once; captions must then be fixed (no shuffle or dropout, else ConfigError). `cache_dir` is the folder
    of cached latents when `cache_latents_to_disk` is on (default: a hidden `.lora_studio_latents` folder in
    train_data_dir). `rank`/`world_size` pick this process's share of each epoch's batches and, with a disk cache,
    of the latents to compute; `sync` (Distributed.barrier) is where all ranks meet around that work, and `share`
    (Distributed.broadcast_int) gives every rank rank 0's value of what must agree. With a disk
    cache the latents are read from its shards batch by batch, never all held in memory;
    `cache_text_encoder_outputs_to_disk` does the same for the text-encoder outputs, in the same folder.
    """

    def __init__(self, config: DataConfig, host: Host, *, seed: int, cache_text_encoder_outputs: bool,
                 cache_dir: Path | None = None, rank: int = 0, world_size: int = 1,
                 sync: Callable[[], None] | None = None, share: Callable[[int], int] | None = None,
                 cache_text_encoder_outputs_to_disk: bool = False,
                 select: Callable[[list[ImageItem]], list[ImageItem]] | None = None) -> None:
        if config.train_data_dir is None:
            raise ConfigError("train_data_dir", None, "set the folder of training images")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError("rank", rank, f"must lie in 0..{world_size - 1} for world_size {world_size}")
        self.rules = CaptionRules.from_config(config)
        varying = self.rules.varying_options()
        cache_text_encoder_outputs = cache_text_encoder_outputs or cache_text_encoder_outputs_to_disk
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
        self.sync = sync
        self.share = share
        self.select = select
        """Which of the scanned training images this data uses (validation_split.py: the training or the held-out
        part); None: all of them."""
        self.bucketing = Bucketing.create(
            config.resolution, enable_bucket=config.enable_bucket, min_bucket_reso=config.min_bucket_reso,
            max_bucket_reso=config.max_bucket_reso, bucket_reso_steps=config.bucket_reso_steps,
            bucket_no_upscale=config.bucket_no_upscale)
        if cache_dir is None:
            cache_dir = Path(config.train_data_dir).expanduser() / DEFAULT_CACHE_FOLDER
        self.latent_cache = LatentCache(cache_dir if config.cache_latents_to_disk else None)
        self.text_cache = TextCache(cache_dir if cache_text_encoder_outputs_to_disk else None)
        self.ignored: list[str] = []
        """Folders and files of the data folders that were left out (for the UI to show)."""
        self.encoded_images = 0
        """Images encoded with the VAE so far (cache misses and uncached batches)."""
        self._images: list[PreparedImage] = []
        self._by_key: dict[str, int] = {}
        self._latent_keys: dict[tuple[int, bool], LatentKey] = {}
        self._text_encoder = ""
        self._prepared = False

    # --- preparing ------------------------------------------------------------------------------------------

    def prepare(self, control: JobControl | None = None) -> None:
        """Scan, bucket, balance; cache latents and text-encoder outputs as configured. Reports through `control`."""
        self._prepared = False
        scanning = PrepReporter(control, "scanning images")
        train = scan_images(self.config.train_data_dir, caption_extension=self.config.caption_extension,
                            is_reg=False, progress=scanning)  # type: ignore[arg-type]
        if self.select is not None:
            train.items = self.select(train.items)
        num_train = sum(item.repeats for item in train.items)
        if num_train == 0:
            raise TrainingError(f"no training images found in {self.config.train_data_dir} (images go in "
                                "<repeats>_<name> subfolders with repeats of at least 1, e.g. 10_mychar)")
        reg_items: list[ImageItem] = []
        self.ignored = list(train.ignored)
        if self.config.reg_data_dir is not None:
            reg = scan_images(self.config.reg_data_dir, caption_extension=self.config.caption_extension,
                              is_reg=True, progress=PrepReporter(control, "scanning regularisation images"))
            reg_items, self.ignored = reg.items, self.ignored + [f"reg: {note}" for note in reg.ignored]
        reg_uses = balance_reg_repeats([item.repeats for item in reg_items], num_train)
        uses = [item.repeats for item in train.items] + reg_uses
        self._images = [PreparedImage(item, self._plan(item), count)
                        for item, count in zip(train.items + reg_items, uses)]
        self._by_key = {image.item.key: index for index, image in enumerate(self._images)}
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
        """Encode the latents the cache lacks (each rank its share, with a disk cache: data_prep.fill_cache)."""
        vae = vae_identity(self.host)
        flips = (False, True) if self.config.flip_aug else (False,)
        jobs: dict[LatentKey, tuple[int, bool]] = {}
        for index in self._used():
            item, plan = self._images[index].item, self._images[index].plan
            image = image_identity(item.path, item.file_size, item.mtime_ns)
            for flipped in flips:
                key = LatentKey(image, plan.bucket, plan.resized, crop_offset(plan), flipped, vae)
                self._latent_keys[(index, flipped)] = key
                jobs[key] = (index, flipped)
        cache = self.latent_cache
        cache.refresh()
        verify_cached(cache, list(jobs), PrepReporter(control, "checking cached latents"))
        batches = bucket_batches(list(jobs), lambda key: key.bucket, self.config.vae_batch_size)

        def encode(keys: list[LatentKey]) -> torch.Tensor:
            pixels = torch.stack([self._pixels(*jobs[key], None) for key in keys])
            self.encoded_images += len(keys)
            return encode_pixels(self.host, pixels, seed=cache_seed(self.seed, keys[0]))

        fill_cache(cache, batches, encode, rank=self.rank, world_size=self.world_size, sync=self._sync,
                   report=PrepReporter(control, "caching latents"))

    def _sync(self) -> None:
        if self.sync is not None and self.world_size > 1:
            self.sync()

    def _agreed(self, identity: str) -> str:
        """Rank 0's `identity` (a hex hash) on every rank: GPUs may differ in the last bit of an encoding, and the
        ranks must look for the entries under the same names."""
        if self.share is None or self.world_size <= 1:
            return identity
        return f"{self.share(int(identity[:15], 16)):015x}"

    def _cache_text(self, control: JobControl | None) -> None:
        cache = self.text_cache
        self._text_encoder = self._agreed(text_encoder_identity(self.host, None)) if cache.on_disk else ""
        keys = {self._text_key(index) for index in self._used()}
        cache.refresh()
        verify_cached(cache, sorted(keys, key=text_order), PrepReporter(control, "checking cached text"))
        batches = bucket_batches(sorted(keys, key=text_order), lambda key: key.size or (0, 0), TEXT_ENCODE_BATCH)

        def encode(chunk: list[TextKey]) -> list[Conditioning]:
            with torch.no_grad():
                encoded = self.host.encode_prompts([key.text for key in chunk], with_grad=False,
                                                   size=chunk[0].size).detach().to("cpu")
            return [encoded.select(slice(row, row + 1)) for row in range(len(chunk))]

        fill_cache(cache, batches, encode, rank=self.rank, world_size=self.world_size, sync=self._sync,
                   report=PrepReporter(control, "caching text-encoder outputs"))

    def _text_key(self, index: int, text: str | None = None) -> TextKey:
        """The cache key of image `index`'s caption (its fixed caption unless `text` is given)."""
        text = self._fixed_caption(index) if text is None else text
        return TextKey(text, self._text_size(self._images[index].plan), self._text_encoder)

    def _fixed_caption(self, index: int) -> str:
        caption = process_caption(self._images[index].item.caption, self.rules, random.Random(0), epoch=0)
        return caption_for_host(caption, self.host.kind)

    def _text_size(self, plan: BucketPlan) -> tuple[int, int] | None:
        """(height, width) for SDXL's size conditioning; None where the encoding does not depend on it."""
        return (plan.bucket[1], plan.bucket[0]) if self.host.arch.name == "sdxl" else None

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

    def _uses(self) -> list[tuple[tuple[int, int], int]]:
        """Each image's (bucket, uses in an epoch), in image order (epoch_order.py draws the batches from it)."""
        return [(image.plan.bucket, image.uses) for image in self._images]

    def _rank_batches(self, epoch: int) -> list[tuple[int, list[int]]]:
        """This rank's (batch number, image indices) of `epoch`."""
        batches = epoch_batches(self._uses(), seed=self.seed, epoch=epoch, batch_size=self.config.train_batch_size)
        return rank_batches(batches, rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        self._require_prepared()
        return batches_per_rank(self._uses(), batch_size=self.config.train_batch_size, world_size=self.world_size)

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
            conditioning = Conditioning.cat([self._cached_text(index, text) for index, text in zip(members, captions)])
        weights = [self.config.prior_loss_weight if self._images[i].item.is_reg else 1.0 for i in members]
        return TrainBatch(
            latents=latents,
            captions=captions,
            conditioning=conditioning,
            loss_weights=torch.tensor(weights, dtype=torch.float32),
            sizes=[(plan.bucket[1], plan.bucket[0]) for plan in plans],
            keys=[self._images[index].item.key for index in members],
        )

    def _cached_text(self, index: int, text: str) -> Conditioning:
        found = self.text_cache.get(self._text_key(index, text))
        if found is None:  # only if the cache was emptied or damaged behind our back
            raise TrainingError(f"{self._images[index].item.path}: cached text-encoder output missing; prepare again")
        return found

    def _cached_latent(self, index: int, flipped: bool) -> torch.Tensor:
        latent = self.latent_cache.get(self._latent_keys[(index, flipped)])
        if latent is None:  # only if the cache was emptied behind our back
            raise TrainingError(f"{self._images[index].item.path}: cached latent missing; prepare again")
        return latent

    def latent_key(self, key: str, *, flipped: bool = False) -> LatentKey:
        """The cache key of image `key` (as in TrainBatch.keys), for tools and tests; KeyError if not cached."""
        index = self._by_key.get(key)
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
        """sd-scripts' ss_* dataset fields (networks.metadata.DatasetRecord); ss_resolution is the trainer's."""
        self._require_prepared()
        config = self.config
        return DatasetRecord(
            num_train_images=self.num_train_images, num_reg_images=self.num_reg_images,
            num_batches_per_epoch=len(self), batch_size=config.train_batch_size,
            dataset_dirs=folder_counts(self._images, reg=False), reg_dataset_dirs=folder_counts(self._images, reg=True),
            tag_frequency=tag_frequencies(self._images), bucket_info=bucket_info(self._images),
            enable_bucket=config.enable_bucket, bucket_no_upscale=config.bucket_no_upscale,
            min_bucket_reso=config.min_bucket_reso, max_bucket_reso=config.max_bucket_reso,
            shuffle_caption=config.shuffle_caption, keep_tokens=config.keep_tokens,
            caption_dropout_rate=config.caption_dropout_rate,
            caption_dropout_every_n_epochs=config.caption_dropout_every_n_epochs,
            caption_tag_dropout_rate=config.caption_tag_dropout_rate, prior_loss_weight=config.prior_loss_weight,
            flip_aug=config.flip_aug, color_aug=config.color_aug, random_crop=config.random_crop,
            cache_latents=config.cache_latents).to_metadata()
