"""Training preparation at scale: header-only scan, latent shards (resume after a kill, stale settings), ranks under
torchrun caching disjoint halves, lazy shard reading with bounded memory, progress with an ETA."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageFile

from lib_lora.dataset.images import open_image
from lib_lora.hosts.diffusers import DiffusersHost, load_diffusers_host
from lib_lora.jobs import JobCancelled, JobSnapshot
from lib_lora.tiny.images import generate_dataset
from lib_lora.train import cache_shards, data_prep, image_headers
from lib_lora.train.cache_shards import ShardStore
from lib_lora.train.data import TrainData
from lib_lora.train.data_config import DataConfig
from lib_lora.train.data_prep import bucket_batches, rank_share
from lib_lora.train.data_scan import scan_images
from lib_lora.train.errors import TrainingError
from lib_lora.train.image_headers import read_image_facts, scan_image_facts
from lib_lora.train.latent_cache import vae_identity
from lib_lora.train.progress import PrepMeter
from lib_lora.ui.train.view import progress_text

ROOT = Path(__file__).resolve().parents[1]
SEED = 3
SIZES = ((32, 32), (48, 32), (32, 48))


class CountingHost:
    """The real host, counting the images its VAE encodes."""

    def __init__(self, host: DiffusersHost) -> None:
        self._host = host
        self.images_encoded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        self.images_encoded += len(pixels)
        return self._host.encode_images(pixels)


class RecordingControl:
    """What TrainData calls on a JobControl: check() and progress(...), recorded."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def check(self) -> None:
        pass

    def progress(self, **report: Any) -> None:
        self.reports.append(report)


@pytest.fixture(scope="module")
def sd1_host() -> DiffusersHost:
    pytest.importorskip("diffusers")
    return load_diffusers_host("tiny")


@pytest.fixture
def host(sd1_host: DiffusersHost) -> CountingHost:
    return CountingHost(sd1_host)


def make_config(root: Path, **overrides: Any) -> DataConfig:
    settings = {"train_data_dir": str(root), "resolution": 32, "train_batch_size": 2, "vae_batch_size": 2,
                "cache_latents_to_disk": True, **overrides}
    return DataConfig(**settings)


def prepared(config: DataConfig, host: Any, **kwargs: Any) -> TrainData:
    control = kwargs.pop("control", None)
    kwargs.setdefault("cache_text_encoder_outputs", False)
    data = TrainData(config, host, seed=SEED, **kwargs)
    data.prepare(control)
    return data


def keys_of(root: Path) -> list[str]:
    return [item.key for item in scan_images(root, caption_extension=".txt", is_reg=False).items]


# --- the header scan ------------------------------------------------------------------------------------------


def _trailing_exif_png(path: Path, size: tuple[int, int], orientation: int) -> None:
    """A PNG whose eXIf chunk follows the pixel data (Pillow itself only sees it after decoding)."""
    import struct
    import zlib

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()[6:]  # PNG keeps the TIFF block, without "Exif" before it
    plain = path.with_suffix(".plain.png")
    Image.new("RGB", size, "red").save(plain)
    raw = plain.read_bytes()
    plain.unlink()
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
    iend = raw.rindex(b"IEND") - 4
    path.write_bytes(raw[:iend] + chunk + raw[iend:])


def test_header_facts_match_the_decoded_image_without_decoding(tmp_path: Path, monkeypatch) -> None:
    jpeg_exif = Image.Exif()
    jpeg_exif[0x0112] = 6  # rotated: width and height swap
    Image.new("RGB", (40, 24)).save(tmp_path / "rotated.jpg", exif=jpeg_exif)
    _trailing_exif_png(tmp_path / "late.png", (40, 24), 8)
    _trailing_exif_png(tmp_path / "upright.png", (40, 24), 1)
    Image.new("RGBA", (24, 40)).save(tmp_path / "plain.png")
    paths = sorted(tmp_path.iterdir())
    decoded = {path.name: open_image(path).size for path in paths}
    assert decoded == {"late.png": (24, 40), "plain.png": (24, 40), "rotated.jpg": (24, 40), "upright.png": (40, 24)}
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the scan decoded pixels"))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the scan decoded pixels"))
    facts = {path.name: read_image_facts(path) for path in paths}
    assert {name: fact.size for name, fact in facts.items()} == decoded
    assert all(fact.file_size == (tmp_path / name).stat().st_size for name, fact in facts.items())


def test_threaded_scan_gives_the_same_facts_in_order_and_reports_progress(tmp_path: Path, monkeypatch) -> None:
    for index in range(300):
        Image.new("RGB", (8 + index % 5 * 8, 16)).save(tmp_path / f"{index:03d}.png")
    (tmp_path / "999.png").write_bytes(b"")
    paths = sorted(tmp_path.iterdir())
    one = scan_image_facts(paths, workers=1)
    monkeypatch.setattr(image_headers, "IO_BOUND_RATIO", 0.0)  # as if the first chunk waited on the disk
    monkeypatch.setattr(image_headers, "SCAN_CHUNK", 16)
    seen: list[tuple[int, int]] = []
    threaded = scan_image_facts(paths, workers=4, progress=lambda done, total: seen.append((done, total)))
    assert [str(f) if isinstance(f, Exception) else f for f in threaded] == \
        [str(f) if isinstance(f, Exception) else f for f in one]
    assert "empty file" in str(threaded[-1]) and [f.size[0] for f in threaded[:5]] == [8, 16, 24, 32, 40]
    assert seen[0] == (0, 301) and seen[-1] == (301, 301) and len(seen) > 10


def test_an_unreadable_image_still_stops_the_scan_with_its_name(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "train", count=3, repeats=1, sizes=SIZES)
    data.images[1].write_bytes(b"not an image")
    with pytest.raises(TrainingError, match=data.images[1].name):
        scan_images(data.root, caption_extension=".txt", is_reg=False)


# --- shards: resume, stale settings, lazy reading ------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from lib_lora.hosts.diffusers import load_diffusers_host
    from lib_lora.train import cache_shards
    from lib_lora.train.data import TrainData
    from lib_lora.train.data_config import DataConfig
    from lib_lora.train.data_scan import scan_images
    from lib_lora.train.distributed import Distributed

    data_dir, cache_dir, out, shard_items, kill_at = sys.argv[1:6]
    cache_shards.SHARD_ITEMS = int(shard_items)
    dist = Distributed.from_environment(cpu=True)
    host = load_diffusers_host("tiny")
    real, calls = host.encode_images, []

    def encode(pixels):
        calls.append(len(pixels))
        if len(calls) == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)  # killed part way, as a crash or an OOM kill would
        return real(pixels)

    host.encode_images = encode
    config = DataConfig(train_data_dir=data_dir, resolution=32, cache_latents_to_disk=True, vae_batch_size=2,
                        train_batch_size=2)
    data = TrainData(config, host, seed=3, cache_text_encoder_outputs=False, cache_dir=Path(cache_dir),
                     rank=dist.rank, world_size=dist.world_size, sync=dist.barrier, share=dist.broadcast_int,
                     cache_text_encoder_outputs_to_disk=dist.world_size > 1)
    data.prepare()
    text = data.text_cache.store
    keys = [item.key for item in scan_images(data_dir, caption_extension=".txt", is_reg=False).items]
    report = {
        "encoded": sum(calls),
        "written": {path.name: sorted(data.latent_cache.store._entries(path)) for path in
                    data.latent_cache.store.written},
        "latents": {key: data.cached_latent(key).tolist() for key in keys},
        "batches": [[b.keys, b.latents.tolist()] for b in data.batches(0)],
        "text_written": [name for path in text.written for name in text._entries(path)] if text else [],
    }
    Path(out, f"rank{dist.rank}.json").write_text(json.dumps(report))
""")


def run_worker(tmp_path: Path, data_dir: Path, cache_dir: Path, *, shard_items: int, kill_at: int = 0,
               torchrun: str | None = None) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prep_worker.py"
    script.write_text(WORKER, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    args = [str(script), str(data_dir), str(cache_dir), str(out), str(shard_items), str(kill_at)]
    launcher = [torchrun, "--standalone", "--nproc_per_node", "2"] if torchrun else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(launcher + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)


def test_caching_resumes_after_a_kill_reusing_every_written_shard(tmp_path: Path, host: CountingHost) -> None:
    data = generate_dataset(tmp_path / "train", count=12, repeats=1, sizes=((32, 32),))
    cache = tmp_path / "cache"
    # 6 VAE batches of 2, a shard every 2 batches: killed in the 5th batch, after 2 shards (8 latents)
    killed = run_worker(tmp_path, data.root, cache, shard_items=4, kill_at=5)
    assert killed.returncode == -9, killed.stderr[-2000:]
    shards = sorted(cache.glob("latents-*.safetensors"))
    assert len(shards) == 2 and not list(cache.glob(".*"))  # no half-written shard or temp file
    times = {path: path.stat().st_mtime_ns for path in shards}

    resumed = prepared(make_config(data.root), host, cache_dir=cache)
    assert host.images_encoded == 4  # only the 4 latents of the unwritten batches: none computed twice
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in times.items())  # reused, not rewritten
    fresh = prepared(make_config(data.root), host, cache_dir=tmp_path / "fresh")
    for key in keys_of(data.root):  # the same latents as a run that was never killed
        assert torch.equal(resumed.cached_latent(key), fresh.cached_latent(key))


def test_two_ranks_cache_disjoint_halves_and_read_the_same_full_set(tmp_path: Path, host: CountingHost) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    data = generate_dataset(tmp_path / "train", count=8, repeats=1, sizes=((32, 32),))
    result = run_worker(tmp_path, data.root, tmp_path / "cache", shard_items=2, torchrun=torchrun)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    written = [{name for names in rank["written"].values() for name in names} for rank in ranks]
    single = prepared(make_config(data.root), host, cache_dir=tmp_path / "single")
    every = {single.latent_key(key).digest for key in keys_of(data.root)}
    assert written[0] and written[1] and not written[0] & written[1] and written[0] | written[1] == every
    assert [rank["encoded"] for rank in ranks] == [4, 4]
    assert ranks[0]["latents"] == ranks[1]["latents"]  # both read the full set, the same latents
    for key, latent in ranks[0]["latents"].items():  # and they are the latents one process caches
        assert torch.allclose(torch.tensor(latent), single.cached_latent(key), atol=1e-6)
    text = [set(rank["text_written"]) for rank in ranks]  # the captions too (one batch of 8: one rank's share)
    assert len(text[0] | text[1]) == 8 and not text[0] & text[1]
    taken = [tuple(keys) for rank in ranks for keys, _ in rank["batches"]]
    assert sorted(taken) == sorted(tuple(b.keys) for b in single.batches(0))  # each its share of the epoch


def test_a_stop_while_caching_keeps_the_finished_batches(tmp_path: Path, host: CountingHost, monkeypatch) -> None:
    monkeypatch.setattr(cache_shards, "SHARD_ITEMS", 100)  # nothing is flushed on the way: only the stop writes
    data = generate_dataset(tmp_path / "train", count=8, repeats=1, sizes=((32, 32),))

    class StopControl(RecordingControl):
        def check(self) -> None:
            if self.reports and self.reports[-1].get("prep_phase") == "caching latents" and \
                    self.reports[-1]["done"] >= 4:
                raise JobCancelled("stopped")

    monkeypatch.setattr(data_prep, "REPORT_EVERY_S", 0.0)
    with pytest.raises(JobCancelled):
        prepared(make_config(data.root), host, cache_dir=tmp_path / "cache", control=StopControl())
    assert host.images_encoded == 6  # the stop is seen at the report after the third batch
    prepared(make_config(data.root), host, cache_dir=tmp_path / "cache")
    assert host.images_encoded == 8  # the 6 encoded before the stop were kept


@pytest.mark.parametrize(("change", "reencoded"), [
    ("touch the image", 1),
    ("buckets", 4),
    ("flip", 4),  # the flipped latents are new; the unflipped ones are reused
    ("another VAE dtype", 4),
])
def test_a_changed_file_or_setting_never_reuses_stale_latents(tmp_path: Path, sd1_host, change: str,
                                                              reencoded: int) -> None:
    data = generate_dataset(tmp_path / "train", count=4, repeats=1, sizes=((48, 32),))
    config = make_config(data.root)
    first = CountingHost(sd1_host)
    prepared(config, first, cache_dir=tmp_path / "cache")
    assert first.images_encoded == 4
    host = CountingHost(sd1_host)
    if change == "touch the image":
        os.utime(data.images[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    elif change == "buckets":
        config = replace(config, enable_bucket=True, bucket_no_upscale=True, min_bucket_reso=16, bucket_reso_steps=16)
    elif change == "flip":
        config = replace(config, flip_aug=True)
    else:
        host = CountingHost(load_diffusers_host("tiny", dtype="bfloat16"))
        assert vae_identity(host) != vae_identity(sd1_host)
    again = prepared(config, host, cache_dir=tmp_path / "cache")
    assert host.images_encoded == reencoded
    for key in keys_of(data.root):  # what is read is what this run's settings give
        assert again.cached_latent(key).shape[1:] == again.latent_key(key).latent_size


def test_disk_cache_reads_shards_lazily_with_few_open_files(tmp_path: Path, host: CountingHost, monkeypatch) -> None:
    monkeypatch.setattr(cache_shards, "SHARD_ITEMS", 2)
    data = generate_dataset(tmp_path / "train", count=10, repeats=1, sizes=SIZES)
    on_disk = prepared(make_config(data.root, vae_batch_size=1), host, cache_dir=tmp_path / "cache")
    assert len(on_disk.latent_cache.store.written) == 5 and not on_disk.latent_cache._memory
    in_memory = prepared(make_config(data.root, vae_batch_size=1, cache_latents_to_disk=False), host)
    opened = 0
    for disk_batch, memory_batch in zip(on_disk.batches(0), in_memory.batches(0), strict=True):
        assert disk_batch.keys == memory_batch.keys and torch.equal(disk_batch.latents, memory_batch.latents)
        opened = max(opened, on_disk.latent_cache.store.open_shards)
        assert not on_disk.latent_cache._memory
    assert 0 < opened <= cache_shards.MAX_OPEN_SHARDS


class TextCountingHost(CountingHost):
    """Also counts the captions its text encoder encodes."""

    def __init__(self, host: DiffusersHost) -> None:
        super().__init__(host)
        self.captions_encoded = 0

    def encode_prompts(self, texts, **kwargs: Any):
        self.captions_encoded += len(texts)
        return self._host.encode_prompts(texts, **kwargs)


def test_text_encoder_outputs_go_to_shards_are_reused_and_keyed_by_the_encoding(tmp_path: Path, sd1_host) -> None:
    data = generate_dataset(tmp_path / "train", count=5, repeats=1, sizes=((32, 32),))
    config = make_config(data.root, cache_latents_to_disk=False)
    cache = tmp_path / "cache"
    first = TextCountingHost(sd1_host)
    on_disk = prepared(config, first, cache_dir=cache, cache_text_encoder_outputs_to_disk=True)
    assert first.captions_encoded == 1 + 5 and len(list(cache.glob("text-*.safetensors"))) == 1  # probe + captions
    in_memory = prepared(config, sd1_host, cache_text_encoder_outputs=True)
    for disk_batch, memory_batch in zip(on_disk.batches(0), in_memory.batches(0), strict=True):
        assert torch.equal(disk_batch.conditioning.context, memory_batch.conditioning.context)
    assert not on_disk.text_cache._memory

    data.caption_paths[0].write_text("another caption", encoding="utf-8")
    again = TextCountingHost(sd1_host)
    prepared(config, again, cache_dir=cache, cache_text_encoder_outputs_to_disk=True)
    assert again.captions_encoded == 1 + 1  # the probe, and the changed caption only
    skipped = TextCountingHost(sd1_host)
    sd1_host.clip_skip = 2  # encodes differently: nothing cached may be reused
    try:
        prepared(config, skipped, cache_dir=cache, cache_text_encoder_outputs_to_disk=True)
    finally:
        sd1_host.clip_skip = None
    assert skipped.captions_encoded == 1 + 5


def test_shard_store_ignores_other_kinds_and_formats_and_bounds_open_files(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, "latents", format_name="f1", max_open=2)
    for shard in range(4):
        for item in range(3):
            store.add(f"n{shard}{item}", {"latents": torch.full((1, 2, 2), float(shard * 3 + item))})
        assert store.flush() is not None
    ShardStore(tmp_path, "latents", format_name="f0").flush()  # nothing buffered: no file
    other = ShardStore(tmp_path, "text", format_name="f1")
    other.add("n00", {"latents": torch.zeros(1)})
    other.flush()
    old = ShardStore(tmp_path, "latents", format_name="f0")
    old.add("n01", {"latents": torch.zeros(1)})
    old.flush()
    reader = ShardStore(tmp_path, "latents", format_name="f1", max_open=2)
    assert len(reader) == 12 and len(list(tmp_path.glob("*.safetensors"))) == 6
    for name in sorted(f"n{s}{i}" for s in range(4) for i in range(3)):
        assert reader.read(name)["latents"].flatten()[0].item() == int(name[1]) * 3 + int(name[2])
        assert reader.open_shards <= 2


def test_work_is_cut_into_bucket_batches_and_rank_shares() -> None:
    jobs = [("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 2)]
    batches = bucket_batches(jobs, lambda job: (job[1], job[1]), 2)
    assert batches == [[("a", 1), ("c", 1)], [("d", 1)], [("b", 2), ("e", 2)]]
    for world in (1, 2, 3, 7):
        shares = [rank_share(list(range(10)), rank, world) for rank in range(world)]
        assert sum(shares, []) == list(range(10)) and max(map(len, shares)) - min(map(len, shares)) <= 1


# --- progress and ETA -----------------------------------------------------------------------------------------


def test_prep_meter_rate_and_eta() -> None:
    meter = PrepMeter("caching latents", 1000)
    assert meter.update(0, now=10.0).eta_s is None
    report = meter.update(250, now=15.0)
    assert report.per_s == 50 and report.eta_s == 15
    assert report.message == "caching latents 250/1,000 (25%) · 50/s · ETA 0:15"


def test_scan_and_caches_report_progress_with_an_eta_the_train_tab_shows(tmp_path: Path, host, monkeypatch) -> None:
    monkeypatch.setattr(data_prep, "REPORT_EVERY_S", 0.0)
    data = generate_dataset(tmp_path / "train", count=6, repeats=1, sizes=SIZES)
    control = RecordingControl()
    prepared(make_config(data.root, vae_batch_size=1), host, cache_dir=tmp_path / "cache", control=control)
    phases = [report["prep_phase"] for report in control.reports]
    assert phases[0] == "scanning images" and "caching latents" in phases
    last = [report for report in control.reports if report["prep_phase"] == "caching latents"][-1]
    assert last["done"] == last["total"] == 6 and last["message"].startswith("caching latents 6/6 (100%)")
    running = next(r for r in control.reports if r["prep_phase"] == "caching latents" and 0 < r["done"] < 6)
    snapshot = JobSnapshot(name="training", state="running", done=running["done"], total=running["total"],
                           message=running["message"], extra={k: v for k, v in running.items() if k.startswith("prep")})
    shown = progress_text(snapshot)
    assert shown.startswith(f"**caching latents {running['done']}/6") and "ETA" in shown
