"""Tagging a large folder: 2 processes under the launcher against 1, a run killed half way and resumed.

A small ConvNeXt-like ONNX model with the WD14 contract (NHWC BGR 0-255 input at 448, 10,861 sigmoid outputs,
random weights, exported with torch; bench_tagger.py's approach at a smaller size) tags generated 512-px images
through the command line, as a user runs it:
(a) `python -m lib_lora tag` (one process) and `torchrun --nproc_per_node 2 -m lib_lora tag` in alternating rounds
    on copies of the folder: the captions must be identical byte for byte; the throughput ratio (2 vs 1) is
    printed, for the whole command and for the tagging itself (the summary's seconds);
(b) one process killed with SIGKILL once the journal holds half the images, then the same command again: the
    images that went through the model in the two runs (journal lines before the kill, "tagged N" after) must
    add up to the folder, none twice, and the captions must equal (a)'s;
(c) in this process, `tag_folder` with and without the journal on the same tagger, alternating: the journal's cost;
(d) a model much faster than the disk (the tiny tagger at 64 px on small images, every caption overwritten): the
    writer as it is (grouped journal, captions saved by several threads) against one caption at a time;
(e) with --big DIR (a copy of bench/make_big_dataset.py's set, e.g. /tmp/bigds/5k): the tiny tagger over all of
    it, cancelled at 90 %; the journal's size and the time to sort the folder out against it when resuming.

    .venv/bin/python bench/bench_big_tagging.py [--images 200] [--fast-images 2000] [--rounds 3] [--big DIR]
        [--parts abcd]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_lora.dataset.tagging import run as tag_run  # noqa: E402
from lib_lora.dataset.tagging import writer as tag_writer  # noqa: E402
from lib_lora.dataset.tagging.journal import JOURNAL_DIR_NAME  # noqa: E402
from lib_lora.dataset.tagging.models import resolve_model  # noqa: E402
from lib_lora.dataset.tagging.run import tag_folder  # noqa: E402
from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions  # noqa: E402
from lib_lora.tiny.images import generate_dataset  # noqa: E402
from lib_lora.tiny.tagger import tag_table, write_tiny_wd14_tagger  # noqa: E402

TAGS = 10_861
ARGS = ["--recursive", "--existing", "overwrite", "--trigger", "bench"]


def build_model(path: Path) -> None:
    """Export a small ConvNeXt-like tagger (dims 32-256, depths 1/1/3/1) with random weights."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim)
            self.pw1, self.act, self.pw2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.pw2(self.act(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
            return x + y.permute(0, 3, 1, 2)

    class Net(nn.Module):
        def __init__(self, dims=(32, 64, 128, 256), depths=(1, 1, 3, 1)) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4)]
            for i, (dim, depth) in enumerate(zip(dims, depths)):
                if i:
                    layers.append(nn.Conv2d(dims[i - 1], dim, 2, 2))
                layers += [Block(dim) for _ in range(depth)]
            self.features = nn.Sequential(*layers)
            self.norm, self.head = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], TAGS)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flip(-1).permute(0, 3, 1, 2) / 127.5 - 1.0
            return torch.sigmoid(self.head(self.norm(self.features(x).mean((2, 3)))))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # a few dozen tags per image above 0.35, as a real tagger
        net.head.weight.normal_(0.0, 1.0 / 16)
        net.head.bias.fill_(-3.4)
        torch.onnx.export(net, (torch.rand(1, 448, 448, 3) * 255,), str(path / "model.onnx"), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}})
    rows = tag_table()
    rows += [(90_000_000 + i, f"tag_{i}", 0, 100) for i in range(TAGS - len(rows))]
    (path / "selected_tags.csv").write_text(
        "tag_id,name,category,count\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows), encoding="utf-8")


def make_images(folder: Path, count: int) -> None:
    """count generated 512-px images (PNG and JPEG, film grain), in two `<repeats>_<name>` folders, no captions."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("a", count // 2), ("b", count - count // 2)):
        data = generate_dataset(folder, count=n, seed=len(part), name=f"set{part}",
                                sizes=((512, 512), (512, 384), (384, 512)))
        for image_path in data.images:
            with Image.open(image_path) as image:
                pixels = np.asarray(image).astype(np.int16)
            pixels[..., :3] = np.clip(pixels[..., :3] + rng.normal(0, 6, size=pixels.shape[:2] + (1,)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(image_path, quality=90)
        for caption in data.caption_paths:
            caption.unlink()


def captions(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.txt"))
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def cli(launcher: list[str], folder: Path, model: Path) -> tuple[float, float, str, float]:
    """(wall seconds, the summary's tagging seconds, the summary line, CPU seconds of all its processes) of one
    `lib_lora tag` command."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([*launcher, "-m", "lib_lora", "tag", str(folder), "--model", str(model), *ARGS], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if result.returncode:
        raise SystemExit(f"{launcher} failed:\n{result.stderr[-3000:]}")
    summary = [line for line in result.stdout.splitlines() if line.startswith("tag: tagged")]
    if len(summary) != 1:
        raise SystemExit(f"expected one summary line, got {summary}")
    return wall, float(re.search(r" in ([0-9.]+)s on ", summary[0]).group(1)), summary[0], cpu


def journal_intents(folder: Path) -> set[str]:
    """The images a killed run's journal says went through the model."""
    import json

    keys = set()
    for part in (folder / JOURNAL_DIR_NAME).glob("*/rank-*.jsonl"):
        for line in part.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "c" in record:
                keys.add(record["k"])
    return keys


def kill_half_way(folder: Path, model: Path, count: int) -> tuple[set[str], float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "lib_lora", "tag", str(folder), "--model", str(model), *ARGS],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and len(journal_intents(folder)) < count // 2:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(60)
    return journal_intents(folder), time.perf_counter() - start


def fast(work: Path, count: int, rounds: int) -> None:
    """(d): the writer against one caption at a time, when the disk and not the model is the limit."""
    generate_dataset(work / "fast", count=count, seed=7, sizes=((64, 64), (96, 64), (64, 96)))
    model = write_tiny_wd14_tagger(work / "tiny", input_size=64).directory
    tagger = Tagger.load(resolve_model(model), providers=["cpu"])
    options = TaggerOptions(recursive=True, existing="overwrite")
    defaults = (tag_writer.SAVERS, tag_run.WRITER_GROUP)
    times: dict[str, list[float]] = {"writer": [], "one at a time": []}
    for round_ in range(rounds):
        for name in (("writer", "one at a time") if round_ % 2 == 0 else ("one at a time", "writer")):
            tag_writer.SAVERS, tag_run.WRITER_GROUP = defaults if name == "writer" else (1, 1)
            times[name].append(tag_folder(work / "fast", tagger, options).seconds)
    tag_writer.SAVERS, tag_run.WRITER_GROUP = defaults
    grouped, single = statistics.median(times["writer"]), statistics.median(times["one at a time"])
    print(f"(d) {count} small images, tiny tagger, median of {rounds}: {count / grouped:.0f} img/s with the writer "
          f"({defaults[0]} saving threads, groups of up to {defaults[1]}), {count / single:.0f} img/s one caption "
          f"at a time: {single / grouped:.2f}x")


def big(work: Path, source: Path) -> None:
    """(e): resuming at scale: the journal of a run cancelled at 90 % and the time to sort the folder out."""
    from lib_lora.dataset.folder import leave_out_links, scan_dataset
    from lib_lora.dataset.tagging.run import ImageResult, TagReport, prepare_tagging
    from lib_lora.jobs import Job, JobCancelled, JobControl

    folder = work / "big"
    shutil.copytree(source, folder, symlinks=True)
    model = write_tiny_wd14_tagger(work / "tiny64", input_size=64).directory
    tagger = Tagger.load(resolve_model(model), providers=["cpu"])
    options = TaggerOptions(recursive=True, existing="overwrite")
    dataset = leave_out_links(scan_dataset(folder, recursive=True))
    stop = int(len(dataset.items) * 0.9)

    def cancel_at_90(control: JobControl) -> TagReport:
        run = prepare_tagging(dataset, tagger, options)

        def count(result: ImageResult) -> None:
            if len(run.report.results) >= stop:
                job.cancel()

        return run.run(control, on_image=count)

    job = Job("tag", cancel_at_90)
    start = time.perf_counter()
    try:
        job.run_here()
    except JobCancelled:
        pass
    first = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (folder / JOURNAL_DIR_NAME).rglob("*.jsonl"))
    dataset = leave_out_links(scan_dataset(folder, recursive=True))
    start = time.perf_counter()
    run = prepare_tagging(dataset, tagger, options)
    planning = time.perf_counter() - start
    report = run.run()
    print(f"(e) {len(dataset.items)} images of {source}: cancelled after {first:.1f}s with {run.resumed} done, journal "
          f"{size / 2**20:.1f} MiB ({size / max(run.resumed, 1):.0f} bytes an image); sorting the folder out against "
          f"it: {planning:.2f}s; the rest: {report.summary()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--fast-images", type=int, default=2000, help="images of (d)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a), (c) and (d)")
    parser.add_argument("--big", type=Path, default=None, help="a big generated set for (e), copied first")
    parser.add_argument("--parts", default="abcde", help="which parts to run (e needs --big)")
    args = parser.parse_args()
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        raise SystemExit("torchrun is not installed in this Python (pip install torch)")
    with tempfile.TemporaryDirectory(prefix="bench_big_tagging_") as temp:
        work = Path(temp)
        (work / "model").mkdir()
        build_model(work / "model")
        make_images(work / "source", args.images)
        print(f"{args.images} images of 512 px, a small ConvNeXt-like tagger at 448 px, {os.cpu_count()} CPUs, "
              f"CPU onnxruntime, load average {os.getloadavg()[0]:.1f} at the start")
        for name in ("one", "two", "killed"):
            shutil.copytree(work / "source", work / name)
        same = once = exact = True
        if "a" in args.parts:
            same = part_a(args, work, torchrun)
        if "b" in args.parts:
            once, exact = part_b(args, work)
        if "c" in args.parts:
            part_c(args, work)
        if "d" in args.parts:
            fast(work, args.fast_images, args.rounds)
        if "e" in args.parts and args.big is not None:
            big(work, args.big)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        if not (same and once and exact):
            raise SystemExit(1)


def part_a(args: argparse.Namespace, work: Path, torchrun: Path) -> bool:
    """(a): 1 process against 2 under torchrun, alternating; whether the captions were identical in every round."""
    launchers = {"one": [sys.executable], "two": [str(torchrun), "--nproc_per_node", "2"]}
    runs: dict[str, list[tuple[float, float, str, float]]] = {"one": [], "two": []}
    same = True
    for round_ in range(args.rounds):  # alternating, so a load change on the machine hits both alike
        for name in (("one", "two") if round_ % 2 == 0 else ("two", "one")):
            runs[name].append(cli(launchers[name], work / name, work / "model"))
        same = same and captions(work / "one") == captions(work / "two")
    same = same and len(captions(work / "one")) == args.images
    one, two = (tuple(statistics.median(r[i] for r in runs[n]) for i in (0, 1, 3)) for n in ("one", "two"))
    print(f"(a) median of {args.rounds} rounds, each command tagging every image (--existing overwrite):")
    for label, (wall, tagging, cpu) in (("1 process:  ", one), ("2 processes:", two)):
        print(f"    {label} {wall:6.1f}s wall, {tagging:6.1f}s tagging, {args.images / tagging:6.1f} img/s, "
              f"{cpu:6.1f} CPU s (all processes, start-up included)")
    print(f"    throughput 2 vs 1: {one[0] / two[0]:.2f}x wall, {one[1] / two[1]:.2f}x tagging; "
          f"captions identical in every round: {'yes' if same else 'NO'}")
    return same


def part_b(args: argparse.Namespace, work: Path) -> tuple[bool, bool]:
    """(b): killed half way and resumed; (no image through the model twice, captions identical to one run)."""
    if not captions(work / "one"):
        cli([sys.executable], work / "one", work / "model")
    first, killed_after = kill_half_way(work / "killed", work / "model", args.images)
    resumed = cli([sys.executable], work / "killed", work / "model")
    tagged = int(re.search(r"tagged (\d+)", resumed[2]).group(1))
    earlier = int(re.search(r"(\d+) done earlier", resumed[2]).group(1)) if "done earlier" in resumed[2] else 0
    exact = captions(work / "killed") == captions(work / "one")
    once = len(first) + tagged == args.images and earlier == len(first)
    print(f"(b) killed (SIGKILL) after {killed_after:.1f}s with {len(first)} of {args.images} images journaled; "
          f"resumed: {resumed[2].removeprefix('tag: ')}")
    print(f"    through the model: {len(first)} + {tagged} = {len(first) + tagged} of {args.images} "
          f"(no image twice: {'yes' if once else 'NO'}); captions identical to one run: {'yes' if exact else 'NO'}; "
          f"journal left: {'yes' if (work / 'killed' / JOURNAL_DIR_NAME).exists() else 'no'}")
    return once, exact


def part_c(args: argparse.Namespace, work: Path) -> None:
    """(c): the journal's cost, tag_folder with and without it, alternating."""
    tagger = Tagger.load(resolve_model(work / "model"), providers=["cpu"])
    options = TaggerOptions(recursive=True, existing="overwrite", trigger="bench")
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for resume in ((True, False) if round_ % 2 == 0 else (False, True)):
            times[resume].append(tag_folder(work / "one", tagger, options, resume=resume).seconds)
    with_journal, without = statistics.median(times[True]), statistics.median(times[False])
    print(f"(c) tag_folder, median of {args.rounds}: {with_journal:.2f}s with the journal, {without:.2f}s "
          f"without: {with_journal / without:.3f}x")


if __name__ == "__main__":
    main()
