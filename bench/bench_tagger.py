"""Tagging a folder: our pipelined `tag_folder` against one-at-a-time tagging and the model alone, same run.

A ConvNeXt-base-like ONNX model with the WD14 contract (NHWC BGR 0-255 input at 448, 10,861 sigmoid outputs,
dynamic batch; random weights, exported with torch into a temp folder) tags generated 1024-px images:
(a) one image at a time, decode -> preprocess -> run, as today's extensions do (a default session);
(b) the model alone on already preprocessed tensors, the limit, the better of a default session at batch 1
    and our session run our way (the plan's batch size and concurrent runs);
(c) `tag_folder`: scan, decode + preprocess and model runs per the plan, each caption written.
Targets: (c) >= 0.95x (b) and >= 1.0x (a) in images per second. The three are interleaved in rounds over
disjoint parts of the images (each part its own folder), in alternating order, so a load change on the
machine hits all alike.

    .venv/bin/python bench/bench_tagger.py [--images 200] [--rounds 10] [--model saved.onnx]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_lora.dataset.images import open_image  # noqa: E402
from lib_lora.dataset.preprocess import prepare_image  # noqa: E402
from lib_lora.dataset.tagging.models import resolve_model  # noqa: E402
from lib_lora.dataset.tagging.run import tag_folder  # noqa: E402
from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions  # noqa: E402
from lib_lora.tiny.images import generate_dataset  # noqa: E402
from lib_lora.tiny.tagger import tag_table  # noqa: E402

TAGS = 10_861  # as the v3 models


def build_model(path: Path) -> None:
    """Export a ConvNeXt-base-like tagger (dims 128-1024, depths 3/3/27/3) with random weights."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim)
            self.pw1, self.act, self.pw2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
            self.gamma = nn.Parameter(torch.full((dim,), 1e-2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.pw2(self.act(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1))))) * self.gamma
            return x + y.permute(0, 3, 1, 2)

    class ChannelNorm(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Net(nn.Module):
        def __init__(self, dims=(128, 256, 512, 1024), depths=(3, 3, 27, 3)) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), ChannelNorm(dims[0])]
            for i, (dim, depth) in enumerate(zip(dims, depths)):
                if i:
                    layers += [ChannelNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
                layers += [Block(dim) for _ in range(depth)]
            self.features = nn.Sequential(*layers)
            self.norm, self.head = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], TAGS)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # NHWC, BGR, 0-255: normalised inside, as WD14
            x = x.flip(-1).permute(0, 3, 1, 2) / 127.5 - 1.0
            return torch.sigmoid(self.head(self.norm(self.features(x).mean((2, 3)))))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # a real tagger's few dozen tags above 0.35 per image, not thousands of random ones
        net.head.weight.normal_(0.0, 1.0 / 32)  # logits of std ~1 over the 1024 normalised features
        net.head.bias.fill_(-3.4)  # about 0.3% of the tags (~30) above 0.35
    with torch.no_grad():
        torch.onnx.export(net, (torch.rand(1, 448, 448, 3) * 255,), str(path), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}})


def write_tags(path: Path) -> None:
    """A selected_tags.csv of TAGS rows: the tiny tagger's, padded with general tags."""
    rows = tag_table()
    rows += [(90_000_000 + i, f"tag_{i}", 0, 100) for i in range(TAGS - len(rows))]
    path.write_text("tag_id,name,category,count\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows),
                    encoding="utf-8")


def make_images(root: Path, count: int, rounds: int) -> list[list[Path]]:
    """count generated 1024-px images (PNG and JPEG) with film grain so files compress like real art."""
    parts = []
    rng = np.random.default_rng(0)
    per = -(-count // rounds)
    for r in range(rounds):
        n = min(per, count - r * per)
        data = generate_dataset(root / f"part{r}", count=n, seed=r, sizes=((1024, 1024), (1024, 768), (768, 1024)))
        for image_path in data.images:
            from PIL import Image

            with Image.open(image_path) as image:
                pixels = np.asarray(image).astype(np.int16)
            grain = rng.normal(0, 6, size=pixels.shape[:2] + (1,))
            pixels[..., :3] = np.clip(pixels[..., :3] + grain, 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(image_path, quality=90)
        for caption in data.caption_paths:
            caption.unlink()
        parts.append(list(data.images))
    return parts


def one_at_a_time(session, paths: list[Path]) -> float:
    name, side = session.get_inputs()[0].name, session.get_inputs()[0].shape[1]
    start = time.perf_counter()
    for path in paths:
        session.run(None, {name: prepare_image(open_image(path), side)[None]})
    return time.perf_counter() - start


def model_alone(session, tensors: np.ndarray, batch: int, runs: int = 1) -> float:
    """Seconds to run every tensor through `session` in batches, `runs` batches at once."""
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    with ThreadPoolExecutor(runs) as pool:
        list(pool.map(lambda i: session.run(None, {name: tensors[i:i + batch]}), range(0, len(tensors), batch)))
    return time.perf_counter() - start


def tagged_seconds(folder: Path, tagger: Tagger, options: TaggerOptions) -> float:
    return tag_folder(folder, tagger, options).seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--model", type=Path, help="reuse (or keep) the exported model at this path")
    parser.add_argument("--batch-size", default="auto", help="tag_folder's batch size (default auto)")
    args = parser.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench_tagger_") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        model_path = args.model or folder / "model.onnx"
        if not model_path.exists():
            print(f"exporting the model to {model_path} ...", flush=True)
            build_model(model_path)
        if model_path != folder / "model.onnx":
            (folder / "model.onnx").symlink_to(model_path.resolve())
        write_tags(folder / "selected_tags.csv")
        print(f"writing {args.images} images ...", flush=True)
        parts = make_images(Path(tmp) / "data", args.images, args.rounds)

        tagger = Tagger.load(resolve_model(str(folder)))
        batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
        options = TaggerOptions(recursive=True, existing="overwrite", batch_size=batch_size)
        plan = tagger.plan(options.batch_size)
        default = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        side = tagger.input_size
        sample = np.stack([prepare_image(open_image(p), side) for p in parts[0][: plan.batch_size]])
        default.run(None, {"input": sample[:1]})  # warm both sessions (allocations, first-run costs)
        tagger.predict(sample)

        timings = {"a": 0.0, "b_default": 0.0, "b_ours": 0.0, "c": 0.0, "prep": 0.0}
        load_before = os.getloadavg()
        per_round: list[dict[str, float]] = []
        for r, paths in enumerate(parts):
            before = dict(timings)
            start = time.perf_counter()
            tensors = np.stack([prepare_image(open_image(p), side) for p in paths])
            timings["prep"] += time.perf_counter() - start
            runs = {
                "b_default": partial(model_alone, default, tensors, 1),
                "b_ours": partial(model_alone, tagger.session, tensors, plan.batch_size, plan.model_runs),
                "a": partial(one_at_a_time, default, paths),
                "c": partial(tagged_seconds, paths[0].parents[1], tagger, options),
            }
            for key in (list(runs) if r % 2 == 0 else list(runs)[::-1]):  # no side always runs first or last
                timings[key] += runs[key]()
            assert all(p.with_suffix(".txt").exists() for p in paths)
            per_round.append({k: timings[k] - before[k] for k in timings})
            print(f"round {r + 1}/{len(parts)}: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
                  flush=True)

    n = args.images
    rate = {k: n / v for k, v in timings.items()}
    limit = max(rate["b_default"], rate["b_ours"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min)")
    print(f"{n} images of 1024 px, {cpus} CPUs, onnxruntime {ort.__version__}, provider "
          f"{tagger.provider_in_use}, plan: batch {plan.batch_size}, {plan.model_runs} run(s) at once, "
          f"{plan.decode_workers} decoding thread(s) beside them, {plan.intra_op_threads} intra-op thread(s) per run")
    print(f"decode + preprocess alone:                    {1000 * timings['prep'] / n:7.1f} ms/image")
    print(f"(a) one at a time, decode -> preprocess -> run: {1000 / rate['a']:7.1f} ms/image")
    print(f"(b) model alone, default session, batch 1:      {1000 / rate['b_default']:7.1f} ms/image")
    print(f"(b) model alone, our plan:                      {1000 / rate['b_ours']:7.1f} ms/image")
    print(f"(c) tag_folder:                                 {1000 / rate['c']:7.1f} ms/image")
    print(f"ratio (c)/(b) throughput: {rate['c'] / limit:.3f}  (target >= 0.95)")
    print(f"ratio (c)/(a) throughput: {rate['c'] / rate['a']:.3f}  (target >= 1.0)")
    medians = [statistics.median(min(t["b_default"], t["b_ours"]) / t["c"] for t in per_round),
               statistics.median(t["a"] / t["c"] for t in per_round)]
    print(f"median over rounds: (c)/(b) {medians[0]:.3f}, (c)/(a) {medians[1]:.3f}")


if __name__ == "__main__":
    main()
