"""Training preparation on a large set (the 44,417-image one of make_big_dataset.py) at 64 px, tiny model.

Measured, with the targets beside them:
- the bucket scan (`scan_images`: captions, header sizes) against the old path, rebuilt here in-process as the
  reference (the Dataset tab's scan checking every image header, then a second open per image for its EXIF
  orientation, which for a PNG decodes the whole image); target ≤ 10 s;
- caching latents to disk, killed half way (a child process kills itself in its VAE call) and resumed: the
  shards written before the kill are reused and nothing is computed twice (encoder calls counted);
- a warm start: prepare again on the full cache, the first batch, one epoch of batches read lazily (memory
  growth, shards open at once), and a TrainRun to its first step;
- 2 ranks under `torchrun --nproc_per_node 2` (gloo, CPU) caching into a fresh folder: disjoint halves, and
  both ranks read the same latents.

    .venv/bin/python bench/bench_big_prep.py /tmp/bigds/44k --work /tmp/h15-bench [--parts scan,old,resume,warm,ranks]

The data folder is only read (caches go under --work).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from lib_lora.dataset.folder import scan_dataset  # noqa: E402
from lib_lora.train import cache_shards  # noqa: E402
from lib_lora.train.data_scan import scan_images  # noqa: E402

SCAN_TARGET_S = 10.0
VAE_BATCH = 16


def old_scan(folder: Path) -> int:
    """The scan as it was: every header checked by the folder scan, then each image opened again for its EXIF
    orientation (Pillow decodes a PNG to look for a trailing eXIf chunk)."""
    dataset = scan_dataset(folder, caption_ext=".txt", recursive=True, check_images=True)
    for item in dataset.items:
        with Image.open(item.image) as image:
            image.getexif().get(0x0112, 1)
    return len(dataset.items)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def data_config(folder: Path) -> Any:
    from lib_lora.train.data_config import DataConfig

    return DataConfig(train_data_dir=str(folder), resolution=64, cache_latents_to_disk=True,
                      vae_batch_size=VAE_BATCH, train_batch_size=4)


def counting_host() -> Any:
    from lib_lora.hosts.diffusers import load_diffusers_host

    host = load_diffusers_host("tiny")
    real, calls = host.encode_images, [0]

    def encode(pixels: Any) -> Any:
        calls[0] += len(pixels)
        return real(pixels)

    host.encode_images = encode  # type: ignore[method-assign]
    host.images_encoded = calls  # type: ignore[attr-defined]
    return host


# --- the worker: one process (or rank) preparing with a disk cache --------------------------------------------


def worker(folder: Path, cache: Path, out: Path, kill_at: int) -> None:
    """Prepare TrainData (under torchrun: this rank's share); kill itself at VAE call `kill_at` (0: never)."""
    from lib_lora.hosts.diffusers import load_diffusers_host
    from lib_lora.train.data import TrainData
    from lib_lora.train.distributed import Distributed

    dist = Distributed.from_environment(cpu=True)
    host = load_diffusers_host("tiny")
    real, calls = host.encode_images, []

    def encode(pixels: Any) -> Any:
        calls.append(len(pixels))
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(pixels)

    host.encode_images = encode  # type: ignore[method-assign]
    started = time.perf_counter()
    data = TrainData(data_config(folder), host, seed=0, cache_text_encoder_outputs=False, cache_dir=cache,
                     rank=dist.rank, world_size=dist.world_size, sync=dist.barrier)
    data.prepare()
    seconds = time.perf_counter() - started
    store = data.latent_cache.store
    written = sorted(name for path in store.written for name in store._entries(path))
    out.write_text(json.dumps({"rank": dist.rank, "encoded": sum(calls), "seconds": seconds, "written": written,
                               "latents_sha256": latents_sha256(data, folder)}))


def run_worker(folder: Path, cache: Path, out: Path, *, kill_at: int = 0, ranks: int = 1) -> tuple[int, float]:
    launcher = [sys.executable]
    if ranks > 1:
        launcher = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(ranks)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if ranks > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // ranks))
    started = time.perf_counter()
    result = subprocess.run(launcher + [__file__, "--worker", str(folder), str(cache), str(out), str(kill_at)],
                            env=env, capture_output=True, text=True)
    if result.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"worker failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.returncode, time.perf_counter() - started


# --- the benchmark --------------------------------------------------------------------------------------------


def bench_scan(folder: Path, skip_old: bool, rounds: int = 2) -> None:
    """The new scan and the old path, alternated `rounds` times (the first read may find the files out of the
    page cache); the best of each is printed."""
    new, old, count = [], [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        count = len(scan_images(folder, caption_extension=".txt", is_reg=False).items)
        new.append(time.perf_counter() - started)
        if not skip_old:
            started = time.perf_counter()
            old_scan(folder)
            old.append(time.perf_counter() - started)
    print(f"bucket scan ({count:,} images): {min(new):.1f} s (runs: {', '.join(f'{t:.1f}' for t in new)})  "
          f"(target ≤ {SCAN_TARGET_S:.0f} s: {'met' if min(new) <= SCAN_TARGET_S else 'MISSED'})")
    if old:
        print(f"  old path (header check + EXIF open, PNG decoded): {min(old):.1f} s (runs: "
              f"{', '.join(f'{t:.1f}' for t in old)}); new/old = {min(new) / min(old):.2f}")


def bench_resume(folder: Path, cache: Path, work: Path) -> int:
    """Cache killed half way, then resumed in this process; returns the number of latents."""
    from lib_lora.train.data import TrainData

    total = len(scan_images(folder, caption_extension=".txt", is_reg=False).items)
    batches = -(-total // VAE_BATCH)  # one bucket at 64 px
    code, killed_after = run_worker(folder, cache, work / "killed.json", kill_at=batches // 2)
    store = cache_shards.ShardStore(cache, "latents", format_name=_format())
    before, shards = len(store), len(list(cache.glob("latents-*.safetensors")))
    print(f"caching {total:,} latents, killed in VAE batch {batches // 2:,} of {batches:,} "
          f"(exit {code}) after {killed_after:.0f} s: {shards} shards, {before:,} latents on disk")
    host = counting_host()
    started = time.perf_counter()
    data = TrainData(data_config(folder), host, seed=0, cache_text_encoder_outputs=False, cache_dir=cache)
    data.prepare()
    resumed = time.perf_counter() - started
    encoded = host.images_encoded[0]
    print(f"  resumed: {encoded:,} encoded in {resumed:.0f} s; expected {total - before:,} "
          f"(recomputed: {encoded - (total - before):,}; target 0)")
    print(f"  caching throughput: {total / (killed_after + resumed):.0f} images/s over both parts")
    return total


def bench_warm(folder: Path, cache: Path, work: Path) -> str:
    """A warm start on the full cache; returns the sha256 of all its latents."""
    from lib_lora.train.config import TrainConfig
    from lib_lora.train.data import TrainData
    from lib_lora.train.loop import TrainRun

    host = counting_host()
    started = time.perf_counter()
    data = TrainData(data_config(folder), host, seed=0, cache_text_encoder_outputs=False, cache_dir=cache)
    data.prepare()
    prepared = time.perf_counter() - started
    memory = rss_mb()
    started = time.perf_counter()
    batches = data.batches(0)
    next(batches)
    first = time.perf_counter() - started
    count, most_open = 1, 0
    for _ in batches:
        count += 1
        most_open = max(most_open, data.latent_cache.store.open_shards)
    epoch = time.perf_counter() - started
    held = 4 * 8 * 8 * 4 * len(data.latent_cache) / 2**20
    print(f"warm prepare (scan, index, check {len(data.latent_cache):,} cached latents): {prepared:.1f} s, "
          f"{host.images_encoded[0]} encoded")
    print(f"  first batch {first * 1000:.0f} ms; {count:,} batches of epoch 0 read in {epoch:.1f} s; "
          f"memory +{rss_mb() - memory:.0f} MB (all latents would be {held:.0f} MB); "
          f"at most {most_open} shards open")
    config = TrainConfig.from_dict({
        "train_data_dir": str(folder), "output_dir": str(work / "out"), "caption_extension": ".txt",
        "resolution": "64", "train_batch_size": 4, "vae_batch_size": VAE_BATCH, "cache_latents_to_disk": True,
        "network_dim": 4, "learning_rate": 1e-3, "max_train_steps": 1, "seed": 0})
    started = time.perf_counter()
    TrainRun(config, host, cache_dir=cache).run()
    print(f"  TrainRun on the warm cache, start to end of its first step (and save): "
          f"{time.perf_counter() - started:.1f} s")
    return latents_sha256(data, folder)


def bench_ranks(folder: Path, work: Path, total: int, single_sha256: str) -> None:
    cache = work / "cache-ranks"
    shutil.rmtree(cache, ignore_errors=True)
    for stale in work.glob("rank*.json"):
        stale.unlink()
    code, seconds = run_worker(folder, cache, work / "rank.json", ranks=2)
    if code != 0:
        sys.exit("the ranks failed")
    reports = [json.loads((work / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    written = [set(report["written"]) for report in reports]
    disjoint = not written[0] & written[1]
    print(f"2 ranks under torchrun (gloo, CPU), fresh cache: {seconds:.0f} s in all; encoded "
          f"{reports[0]['encoded']:,} + {reports[1]['encoded']:,}; shares disjoint: {'yes' if disjoint else 'NO'}, "
          f"together all {total:,}: {'yes' if len(written[0] | written[1]) == total else 'NO'}")
    same = reports[0]["latents_sha256"] == reports[1]["latents_sha256"]
    print(f"  both ranks read the same {total:,} latents: {'yes' if same else 'NO'} (sha256 over all)")
    ranked, single = prepared(folder, cache), prepared(folder, work / "cache")
    keys = [item.key for item in scan_images(folder, caption_extension=".txt", is_reg=False).items]
    largest = max(float((ranked.cached_latent(key) - single.cached_latent(key)).abs().max()) for key in keys)
    bitwise = reports[0]["latents_sha256"] == single_sha256
    print(f"  against the one-process cache: {'bitwise equal' if bitwise else 'not bitwise equal'}, largest "
          f"difference {largest:.2g} (each rank ran {max(1, (os.cpu_count() or 2) // 2)} thread(s), the one "
          f"process {torch_threads()}: float sums in another order)")


def prepared(folder: Path, cache: Path) -> Any:
    """TrainData prepared on a full cache (nothing to encode)."""
    from lib_lora.train.data import TrainData

    data = TrainData(data_config(folder), counting_host(), seed=0, cache_text_encoder_outputs=False, cache_dir=cache)
    data.prepare()
    return data


def latents_sha256(data: Any, folder: Path) -> str:
    digest = hashlib.sha256()
    for key in sorted(item.key for item in scan_images(folder, caption_extension=".txt", is_reg=False).items):
        digest.update(data.cached_latent(key).numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        folder, cache, out, kill_at = sys.argv[2:6]
        rank = os.environ.get("RANK", "0")
        worker(Path(folder), Path(cache), Path(out).with_name(f"{Path(out).stem}{rank}.json"), int(kill_at))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--work", type=Path, default=None, help="folder for the caches (default: a temp folder)")
    parser.add_argument("--parts", default="scan,old,resume,warm,ranks",
                        help="what to run, of scan, old (the old scan beside it), resume, warm, ranks")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # the notes on captions longer than CLIP's 77 tokens
    diffusers_logging.set_verbosity_error()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-big-prep-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.folder} at 64 px, tiny model, vae_batch_size {VAE_BATCH}, {os.cpu_count()} CPUs; work in {work}")
    if "scan" in parts:
        bench_scan(args.folder, "old" not in parts)
    cache = work / "cache"
    if "resume" in parts:
        shutil.rmtree(cache, ignore_errors=True)
        bench_resume(args.folder, cache, work)
    if "warm" in parts or "ranks" in parts:
        single_sha256 = bench_warm(args.folder, cache, work)  # a cache left by "resume" (or filled now)
        if "ranks" in parts:
            total = len(scan_images(args.folder, caption_extension=".txt", is_reg=False).items)
            bench_ranks(args.folder, work, total, single_sha256)


def _format() -> str:
    from lib_lora.train.latent_cache import CACHE_FORMAT

    return CACHE_FORMAT


if __name__ == "__main__":
    main()
