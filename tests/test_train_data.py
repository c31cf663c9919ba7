"""TrainData on the tiny diffusers hosts: latent and text caches, disk reuse, flips, determinism, ranks, reg weights."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lib_lora.hosts.diffusers import DiffusersHost, load_diffusers_host
from lib_lora.jobs import Job, JobCancelled
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.data import TrainBatch, TrainData
from lib_lora.train.data_config import DataConfig
from lib_lora.train.errors import ConfigError, TrainingError
from lib_lora.train.latent_cache import cache_seed, encode_pixels

SEED = 3


class CountingHost:
    """The real host, counting the images its VAE encodes (every other attribute passes through)."""

    def __init__(self, host: DiffusersHost) -> None:
        self._host = host
        self.images_encoded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        self.images_encoded += len(pixels)
        return self._host.encode_images(pixels)


@pytest.fixture(scope="module")
def sd1_host() -> DiffusersHost:
    return load_diffusers_host("tiny")


@pytest.fixture(scope="module")
def sdxl_host() -> DiffusersHost:
    return load_diffusers_host("tiny-sdxl")


@pytest.fixture
def host(sd1_host: DiffusersHost) -> CountingHost:
    return CountingHost(sd1_host)


SIZES = ((32, 32), (48, 32), (32, 48))  # small images keep the VAE cheap; 32 px gives 4×4 latents


def make_dataset(folder: Path, *, count: int, seed: int, repeats: int, name: str):
    return generate_dataset(folder, count=count, seed=seed, repeats=repeats, name=name, sizes=SIZES)


@pytest.fixture
def dataset(tmp_path: Path):
    return make_dataset(tmp_path / "train", count=4, seed=0, repeats=2, name="tinychar")


def make_config(dataset, **overrides: Any) -> DataConfig:
    settings = {"train_data_dir": str(dataset.root), "resolution": 32, "caption_extension": ".txt",
                "train_batch_size": 2, "vae_batch_size": 4, **overrides}
    return DataConfig(**settings)


def prepared(config: DataConfig, host: Any, **kwargs: Any) -> TrainData:
    data = TrainData(config, host, seed=kwargs.pop("seed", SEED),
                     cache_text_encoder_outputs=kwargs.pop("cache_text_encoder_outputs", False), **kwargs)
    data.prepare()
    return data


def expected_pixels(path: Path, bucket: tuple[int, int], *, flipped: bool = False) -> torch.Tensor:
    """The pixels the VAE must see, computed here with PIL alone: alpha on white, cover-resize, centre crop."""
    image = Image.open(path)
    image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")
    scale = max(bucket[0] / image.width, bucket[1] / image.height)
    size = (round(image.width * scale), round(image.height * scale))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - bucket[0]) // 2, (size[1] - bucket[1]) // 2
    image = image.crop((left, top, left + bucket[0], top + bucket[1]))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1
    return pixels.flip(-1) if flipped else pixels


def epoch_batches(data: TrainData, epoch: int) -> list[TrainBatch]:
    return list(data.batches(epoch))


# --- latents ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip_aug", [False, True])
def test_cached_latents_are_the_host_encoding_of_the_bucket_crop(dataset, host: CountingHost, flip_aug: bool) -> None:
    data = prepared(make_config(dataset, flip_aug=flip_aug, vae_batch_size=1), host)
    flips = (False, True) if flip_aug else (False,)
    assert host.images_encoded == len(dataset.images) * len(flips)
    for path in dataset.images:
        key = path.relative_to(dataset.root).as_posix()
        for flipped in flips:
            latent_key = data.latent_key(key, flipped=flipped)
            pixels = expected_pixels(path, (32, 32), flipped=flipped)
            direct = encode_pixels(host, pixels[None], seed=cache_seed(SEED, latent_key))[0]
            assert torch.allclose(data.cached_latent(key, flipped=flipped), direct, atol=1e-5)
    for batch in epoch_batches(data, 0):
        for row, key in zip(batch.latents, batch.keys):
            assert any(torch.equal(row, data.cached_latent(key, flipped=f)) for f in flips)


def test_flip_aug_uses_both_latents_about_half_the_time(dataset, host: CountingHost) -> None:
    data = prepared(make_config(dataset, flip_aug=True), host)
    used = Counter()
    for epoch in range(12):
        for batch in epoch_batches(data, epoch):
            for row, key in zip(batch.latents, batch.keys):
                used[torch.equal(row, data.cached_latent(key, flipped=True))] += 1
    assert 0.3 < used[True] / sum(used.values()) < 0.7


def test_disk_cache_is_reused_and_invalidated_by_image_bytes_and_settings(dataset, host, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = make_config(dataset, cache_latents_to_disk=True)
    first = prepared(config, host, cache_dir=cache)
    count = len(dataset.images)
    assert host.images_encoded == count and len(first.latent_cache) == count
    assert len(list(cache.glob("latents-*.safetensors"))) == 1  # one shard holds them all

    second = prepared(config, host, cache_dir=cache)
    assert host.images_encoded == count  # nothing encoded again
    key = dataset.images[0].relative_to(dataset.root).as_posix()
    assert torch.equal(first.cached_latent(key), second.cached_latent(key))

    with Image.open(dataset.images[0]) as image:
        changed = image.copy()
    changed.putpixel((0, 0), (1, 2, 3, 255) if changed.mode == "RGBA" else (1, 2, 3))
    changed.save(dataset.images[0])
    prepared(config, host, cache_dir=cache)
    assert host.images_encoded == count + 1  # only the changed image

    prepared(replace(config, resolution=(16, 16)), host, cache_dir=cache)
    assert host.images_encoded == 2 * count + 1  # new crop size: all again


def test_disk_cache_is_not_reused_for_another_vae(dataset, host: CountingHost, tmp_path: Path) -> None:
    config = make_config(dataset, cache_latents_to_disk=True)
    prepared(config, host, cache_dir=tmp_path / "cache")
    other = CountingHost(load_diffusers_host("tiny"))
    with torch.no_grad():
        next(other.vae.parameters()).add_(0.01)
    prepared(config, other, cache_dir=tmp_path / "cache")
    assert other.images_encoded == len(dataset.images)


def _nan_latent(path: Path, digest: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    tensors[f"{digest}/latents"] = torch.full_like(tensors[f"{digest}/latents"], float("nan"))
    save_file(tensors, str(path), metadata=metadata)


CORRUPTIONS = {  # (damage to the shard holding one latent, how many latents are computed again)
    "garbage": (lambda path, digest: path.write_bytes(b"not a safetensors file at all"), 4),
    "truncated": (lambda path, digest: path.write_bytes(path.read_bytes()[:-7]), 4),
    "empty": (lambda path, digest: path.write_bytes(b""), 4),
    "not finite": (_nan_latent, 1),
}


@pytest.mark.parametrize(("damage", "recomputed"), CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_damaged_cache_shard_is_recomputed_not_fatal(dataset, host: CountingHost, tmp_path: Path, damage,
                                                       recomputed: int) -> None:
    config = make_config(dataset, cache_latents_to_disk=True, vae_batch_size=1)
    first = prepared(config, host, cache_dir=tmp_path / "cache")
    key = dataset.images[0].relative_to(dataset.root).as_posix()
    expected = first.cached_latent(key)
    digest = first.latent_key(key).digest
    damage(first.latent_cache.store.shard_of(digest), digest)
    again = prepared(config, host, cache_dir=tmp_path / "cache")
    assert host.images_encoded == len(dataset.images) + recomputed
    assert torch.equal(again.cached_latent(key), expected)  # same seed, same sample
    prepared(config, host, cache_dir=tmp_path / "cache")
    assert host.images_encoded == len(dataset.images) + recomputed  # and the shard was written again


def test_cache_to_disk_defaults_to_a_hidden_folder_in_the_data_folder(dataset, host: CountingHost) -> None:
    prepared(make_config(dataset, cache_latents_to_disk=True), host)
    assert len(list((dataset.root / ".lora_studio_latents").glob("latents-*.safetensors"))) == 1


def test_uncached_batches_are_encoded_per_batch_with_random_crop_and_colour_aug(dataset, host) -> None:
    config = make_config(dataset, cache_latents=False, random_crop=True, color_aug=True, flip_aug=True)
    data = prepared(config, host)
    assert host.images_encoded == 0
    first, again, other = epoch_batches(data, 0), epoch_batches(data, 0), epoch_batches(data, 1)
    assert host.images_encoded == 3 * data.num_train_images
    assert all(torch.equal(a.latents, b.latents) and a.keys == b.keys for a, b in zip(first, again))
    assert [b.keys for b in first] != [b.keys for b in other]
    before = host.images_encoded
    resumed = list(data.batches(0, start=3))
    assert host.images_encoded - before == sum(len(b) for b in resumed)  # skipped batches are not encoded
    assert [b.keys for b in resumed] == [b.keys for b in first[3:]]
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(resumed, first[3:]))
    assert all(batch.latents.shape[1:] == (4, 4, 4) for batch in first)


# --- text-encoder outputs ----------------------------------------------------------------------------------------


def test_cached_text_encoder_outputs_equal_a_direct_encode(dataset, host: CountingHost) -> None:
    data = prepared(make_config(dataset, caption_prefix="photo of"), host, cache_text_encoder_outputs=True)
    for batch in epoch_batches(data, 0):
        assert batch.conditioning is not None and all(c.startswith("photo of tinychar") for c in batch.captions)
        direct = host.encode_prompts(batch.captions)
        assert torch.allclose(batch.conditioning.context, direct.context.cpu(), atol=1e-6)


def test_sdxl_batches_carry_bucket_sizes_into_latents_and_size_conditioning(dataset, sdxl_host) -> None:
    config = make_config(dataset, enable_bucket=True, min_bucket_reso=16, max_bucket_reso=64, bucket_reso_steps=16)
    data = prepared(config, sdxl_host, cache_text_encoder_outputs=True)
    seen = set()
    for batch in epoch_batches(data, 0):
        height, width = batch.sizes[0]
        assert set(batch.sizes) == {(height, width)}
        assert batch.latents.shape[2:] == (height // 8, width // 8)
        assert batch.conditioning.extra["time_ids"].tolist() == [[height, width, 0, 0, height, width]] * len(batch)
        direct = sdxl_host.encode_prompts(batch.captions, size=(height, width))
        assert torch.allclose(batch.conditioning.extra["text_embeds"], direct.extra["text_embeds"], atol=1e-6)
        seen.add((height, width))
    assert len(seen) > 1


VARYING = [
    ({"shuffle_caption": True}, "shuffle_caption"),
    ({"caption_dropout_rate": 0.1}, "caption_dropout_rate"),
    ({"caption_dropout_every_n_epochs": 2}, "caption_dropout_every_n_epochs"),
    ({"caption_tag_dropout_rate": 0.2, "shuffle_caption": True}, "shuffle_caption"),
]


@pytest.mark.parametrize(("settings_", "key"), VARYING)
def test_caching_text_encoder_outputs_refuses_captions_that_change(dataset, host, settings_, key) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainData(make_config(dataset, **settings_), host, seed=0, cache_text_encoder_outputs=True)
    assert caught.value.key == key and "cache_text_encoder_outputs" in str(caught.value)
    assert all(name in str(caught.value) for name in settings_)


# --- epochs, ranks, repeats ---------------------------------------------------------------------------------------


def _signature(batches: list[TrainBatch]) -> list[tuple]:
    return [(b.keys, b.captions, b.latents.sum().item()) for b in batches]


def test_batches_are_deterministic_for_seed_and_epoch(dataset, host: CountingHost, tmp_path: Path) -> None:
    config = make_config(dataset, shuffle_caption=True, keep_tokens=1, flip_aug=True, cache_latents_to_disk=True)
    one, two = prepared(config, host), prepared(config, host)
    assert _signature(epoch_batches(one, 0)) == _signature(epoch_batches(two, 0))
    assert _signature(epoch_batches(one, 0)) != _signature(epoch_batches(one, 1))
    other_seed = prepared(config, host, seed=SEED + 1)
    assert _signature(epoch_batches(other_seed, 0)) != _signature(epoch_batches(one, 0))
    assert all(c.startswith("tinychar, ") for b in epoch_batches(one, 0) for c in b.captions)


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 2), (3, 1), (3, 2)])
def test_rank_shards_are_disjoint_cover_the_epoch_and_have_equal_length(dataset, host, world_size, batch_size):
    config = make_config(dataset, train_batch_size=batch_size, cache_latents_to_disk=True)  # encoded once
    whole = epoch_batches(prepared(config, host), 0)
    shards = [epoch_batches(prepared(config, host, rank=r, world_size=world_size), 0) for r in range(world_size)]
    assert {len(shard) for shard in shards} == {-(-len(whole) // world_size)}
    assert [len(prepared(config, host, rank=0, world_size=world_size))] == [len(shards[0])]
    taken = [tuple(b.keys) for shard in shards for b in shard]
    expected = [tuple(b.keys) for b in whole]
    if len(whole) % world_size == 0:
        assert sorted(taken) == sorted(expected)  # disjoint and covering
    else:  # padded with the epoch's first batches so every rank steps as often
        assert Counter(taken) - Counter(expected) == Counter(expected[: len(taken) - len(expected)])
        assert not Counter(expected) - Counter(taken)


def test_repeats_regularisation_balance_and_loss_weights(dataset, host: CountingHost, tmp_path: Path) -> None:
    reg = make_dataset(tmp_path / "reg", count=3, seed=5, repeats=1, name="person")
    data = prepared(make_config(dataset, reg_data_dir=str(reg.root), prior_loss_weight=0.25), host)
    assert data.num_train_images == 8 and data.num_reg_images == 3
    uses: Counter[str] = Counter()
    for batch in epoch_batches(data, 0):
        for key, weight in zip(batch.keys, batch.loss_weights.tolist()):
            uses[key] += 1
            assert weight == (0.25 if key.startswith("reg:") else 1.0)
    assert all(uses[p.relative_to(dataset.root).as_posix()] == 2 for p in dataset.images)
    reg_uses = sorted(count for key, count in uses.items() if key.startswith("reg:"))
    assert reg_uses == [2, 3, 3] and len(data) == 8  # 8 reg uses for 8 train uses; 16 images in batches of 2


def test_metadata_has_sd_scripts_dataset_fields_as_strings(dataset, host: CountingHost, tmp_path: Path) -> None:
    reg = make_dataset(tmp_path / "reg", count=2, seed=5, repeats=3, name="person")
    data = prepared(make_config(dataset, reg_data_dir=str(reg.root), enable_bucket=True, min_bucket_reso=16,
                                max_bucket_reso=64, bucket_reso_steps=16), host)
    metadata = data.metadata()
    assert all(isinstance(value, str) for value in metadata.values())
    assert json.loads(metadata["ss_dataset_dirs"]) == {"2_tinychar": {"n_repeats": 2, "img_count": 4}}
    assert json.loads(metadata["ss_reg_dataset_dirs"]) == {"3_person": {"n_repeats": 3, "img_count": 2}}
    assert (metadata["ss_num_train_images"], metadata["ss_num_reg_images"]) == ("8", "6")
    frequency = json.loads(metadata["ss_tag_frequency"])
    assert frequency["2_tinychar"]["tinychar"] == 4 and frequency["3_person"]["person"] == 2
    buckets = json.loads(metadata["ss_bucket_info"])
    assert sum(b["count"] for b in buckets["buckets"].values()) == 16  # 8 train + 8 balanced reg uses
    assert buckets["mean_img_ar_error"] >= 0 and metadata["ss_enable_bucket"] == "True"


# --- folders and failures -----------------------------------------------------------------------------------------


def test_folder_rules_unnumbered_ignored_flat_accepted_uncaptioned_named(tmp_path: Path, host) -> None:
    numbered = make_dataset(tmp_path / "data", count=2, seed=0, repeats=3, name="alice")
    make_dataset(tmp_path / "data" / "extra", count=1, seed=1, repeats=1, name="bob")  # data/extra/1_bob
    (tmp_path / "data" / "loose").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "data" / "loose" / "x.png")
    numbered.caption_paths[0].unlink()
    data = prepared(make_config(numbered), host)
    assert data.num_train_images == 6 and any("loose" in note for note in data.ignored)
    captions = {k: c for b in epoch_batches(data, 0) for k, c in zip(b.keys, b.captions)}
    assert captions[numbered.images[0].relative_to(numbered.root).as_posix()] == "alice"

    flat = tmp_path / "flat"
    flat.mkdir()
    for path in numbered.images:
        (flat / path.name).write_bytes(path.read_bytes())
    flat_data = prepared(replace(make_config(numbered), train_data_dir=str(flat)), host)
    assert flat_data.num_train_images == 2


def test_exif_rotated_images_are_bucketed_as_they_are_shown(tmp_path: Path, host: CountingHost) -> None:
    folder = tmp_path / "data" / "1_rotated"
    folder.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 64×32, shown 32×64
    Image.new("RGB", (64, 32), "blue").save(folder / "tall.jpg", exif=exif)
    config = DataConfig(train_data_dir=str(tmp_path / "data"), resolution=32, enable_bucket=True,
                        min_bucket_reso=16, max_bucket_reso=64, bucket_reso_steps=16)
    (batch,) = epoch_batches(prepared(config, host), 0)
    assert batch.sizes == [(48, 16)] and batch.latents.shape[2:] == (6, 2)


def test_bad_folders_and_images_stop_with_a_clear_error(tmp_path: Path, dataset, host) -> None:
    with pytest.raises(ConfigError, match="train_data_dir"):
        prepared(replace(make_config(dataset), train_data_dir=str(tmp_path / "missing")), host)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no training images"):
        prepared(replace(make_config(dataset), train_data_dir=str(tmp_path / "empty")), host)
    (tmp_path / "zero" / "0_none").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "zero" / "0_none" / "a.png")
    with pytest.raises(TrainingError, match="no training images"):
        prepared(replace(make_config(dataset), train_data_dir=str(tmp_path / "zero")), host)
    with pytest.raises(ConfigError, match="caption_extension"):
        prepared(replace(make_config(dataset), caption_extension=".png"), host)
    (dataset.folder / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(TrainingError, match="broken.png"):
        prepared(make_config(dataset), host)


def test_batches_before_prepare_and_bad_rank_are_refused(dataset, host: CountingHost) -> None:
    with pytest.raises(TrainingError, match="prepare"):
        next(TrainData(make_config(dataset), host, seed=0, cache_text_encoder_outputs=False).batches(0))
    with pytest.raises(ConfigError, match="rank"):
        TrainData(make_config(dataset), host, seed=0, cache_text_encoder_outputs=False, rank=2, world_size=2)


def test_prepare_reports_progress_and_stops_on_cancel(dataset, host: CountingHost) -> None:
    data = TrainData(make_config(dataset, vae_batch_size=1), host, seed=0, cache_text_encoder_outputs=False)
    job = Job("prepare", lambda control: data.prepare(control))
    job.run_here()
    assert job.snapshot().done == job.snapshot().total == len(dataset.images)
    cancelled = Job("prepare", lambda control: TrainData(
        make_config(dataset), host, seed=1, cache_text_encoder_outputs=False).prepare(control))
    cancelled.cancel()
    with pytest.raises(JobCancelled):
        cancelled.run_here()
