"""Epoch comparison: the time to score and render a 4-epoch comparison on the tiny model, against its images alone.

A tiny run saves 4 epochs (not timed); then, same process, rounds alternate:
1. reference: the grid's images rendered plainly, one `host.generate` each (no LoRA, no scoring);
2. the comparison as the Train tab and `python -m lib_lora compare` run it (`run_comparison`: read the training
   images, render files × strengths × prompts with each LoRA merged, similarity, scores, recommendation, each
   file's loader check), without and with the block analyzer of the recommended file.
The ratio is what merging, scoring, loader checks and the analyzer add to the images themselves.

    .venv/bin/python bench/bench_compare.py [--rounds 3] [--steps 4] [--size 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from train_run_helpers import TRIGGER, make_pattern_dataset, tiny_config  # noqa: E402

from lib_lora.blocks.apply import LoraLibrary  # noqa: E402
from lib_lora.blocks.presets import PresetBook  # noqa: E402
from lib_lora.blocks.session import LoraSession  # noqa: E402
from lib_lora.hosts.diffusers import load_diffusers_host  # noqa: E402
from lib_lora.jobs import Job  # noqa: E402
from lib_lora.train.compare import CompareSpec, run_comparison  # noqa: E402
from lib_lora.train.loop import TrainRun  # noqa: E402


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = load_diffusers_host("tiny")
    root = Path(tempfile.mkdtemp(prefix="bench_compare_"))
    data = make_pattern_dataset(root / "data", count=2)
    validation = make_pattern_dataset(root / "validation", count=1)
    TrainRun(tiny_config(data, root / "out", max_train_epochs=4, save_every_n_epochs=1, train_batch_size=2,
                         network_train_unet_only=True, validation_dir=str(validation)), host).run()
    paths = sorted((root / "out").glob("*.safetensors"))
    prompts = f"{TRIGGER} --s {args.steps}\n{TRIGGER}, outdoors --s {args.steps}"
    spec = CompareSpec(prompts=prompts, width=args.size, height=args.size, analyze="none")
    requests = [p.request(index=i, run_seed=0, default_size=(args.size, args.size))
                for i, p in enumerate(spec.sample_prompts())]
    images = len(paths) * len(spec.strengths) * len(requests)
    session = LoraSession(host, LoraLibrary([root / "out"]), PresetBook.builtin())

    def reference() -> None:
        for _ in range(len(paths) * len(spec.strengths)):
            for request in requests:
                host.generate(request)

    def comparison(analyze: str) -> None:
        chosen = replace(spec, analyze=analyze)
        Job("bench", lambda control: run_comparison(host, session, paths, chosen, control, data=data)).run_here()
        session.unmerge()

    plain, compared, analyzed = [], [], []
    for _ in range(args.rounds):
        plain.append(timed(reference))
        compared.append(timed(lambda: comparison("none")))
        analyzed.append(timed(lambda: comparison("best")))
    from lib_lora.networks.loaders import check_file

    loaders = statistics.median(timed(lambda: [check_file(p) for p in paths]) for _ in range(args.rounds))
    base = statistics.median(plain)
    print(f"model: tiny SD1, {args.size}px, {args.steps} steps, threads=1; {len(paths)} epochs × "
          f"{len(spec.strengths)} strengths × {len(requests)} prompts = {images} images")
    print(f"the images alone, plain generate (median of {args.rounds}):   {base:8.3f} s")
    print(f"comparison: render + score + loader checks:        {statistics.median(compared):8.3f} s   "
          f"{statistics.median(compared) / base:.2f}x")
    print(f"  of which the 4 files' loader checks:               {loaders:8.3f} s")
    print(f"... and the block analyzer of the recommended file: {statistics.median(analyzed):8.3f} s   "
          f"{statistics.median(analyzed) / base:.2f}x")


if __name__ == "__main__":
    main()
