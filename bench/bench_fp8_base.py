"""Peak memory of a training run with fp8_base against the same run without it, on an SD1.5-size UNet.

An SD1.5-size UNet and CLIP-L with random weights (diffusers config; tiny VAE and tokenizer; CPU, float32) behind a
DiffusersHost, trained by `TrainRun` for a handful of steps at 64 px: batch 1, rank 8, AdamW, UNet only, cached
latents and text, mixed_precision bf16 (sd-scripts asks for mixed precision with fp8_base). Each side runs in its
own process (peak RSS is per process) and reports JSON; the parent prints both and the ratios. The kernel's peak
mark is reset once the model is loaded (so model building is left out), and again at the first step:
- "peak RSS, whole run": from the loaded model on, through setting weights aside, caching, training, saving and
  putting the weights back, to the end;
- "peak RSS, steps 2..N": the steady state of training (the mark read after each step).
The host's weights are checked bit-identical after each run. Memory: about 6 GB for the plain side at most (the
fp32 UNet, its bf16 casts held for the backward pass), under 4 GB for the fp8 side; one side at a time.

    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python bench/bench_fp8_base.py [--steps 4] [--threads 2]
    ... bench/bench_fp8_base.py --only plain|fp8     # one process, JSON on stdout

(The fixed mmap threshold returns freed tensors to the system at once: see bench_lora_apply.py.)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_block_session import sd15_size_pipeline  # noqa: E402
from bench_train_reference import reset_peak_rss, rss_kib  # noqa: E402

from lib_lora.hosts.diffusers import DiffusersHost  # noqa: E402
from lib_lora.tiny.images import generate_dataset  # noqa: E402

SIZE = 64


def peak_rss_kib() -> int:
    """The kernel's peak-RSS mark in KiB (VmHWM: the one `reset_peak_rss` resets; getrusage's is never reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def config(root: Path, data, steps: int, fp8: bool):
    from lib_lora.train.config import TrainConfig

    return TrainConfig.from_dict({
        "train_data_dir": str(data.root), "output_dir": str(root / "out"), "caption_extension": ".txt",
        "resolution": str(SIZE), "train_batch_size": 1, "network_dim": 8, "network_alpha": 8,
        "optimizer_type": "AdamW", "learning_rate": 1e-4, "max_train_steps": steps, "seed": 0,
        "network_train_unet_only": True, "cache_text_encoder_outputs": True, "cache_latents": True,
        "mixed_precision": "bf16", "fp8_base": fp8})


def run_side(name: str, steps: int) -> dict:
    """One side in this process: load, reset the peak mark, train, report memory (KiB) and the run's notes."""
    from lib_lora.train.loop import TrainRun

    torch.manual_seed(0)
    host = DiffusersHost(sd15_size_pipeline(), model_name="sd15-random")
    gc.collect()
    report = {"side": name, "rss_loaded_kib": rss_kib(), "peak_reset": reset_peak_rss()}
    first = {name: p.detach()[:2].clone() for name, p in list(host.unet.named_parameters())[::50]}
    marks: dict[str, int] = {}
    stamps: list[float] = []

    def on_step(progress) -> None:
        stamps.append(time.perf_counter())
        if progress.step == 1:
            marks["before_steady_kib"] = peak_rss_kib()
            reset_peak_rss()
        else:
            marks["steady_kib"] = peak_rss_kib()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = generate_dataset(root / "data", count=4, repeats=1, sizes=((SIZE, SIZE),))
        result = TrainRun(config(root, data, steps, name == "fp8"), host, on_step=on_step).run()
    report.update(peak_whole_kib=max(marks["before_steady_kib"], peak_rss_kib()), peak_steady_kib=marks["steady_kib"],
                  s_per_step=(stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1), steps=len(stamps),
                  notes=[n for n in result.notes if n.startswith("fp8_base")],
                  restored=all(torch.equal(p.detach()[:2], first[n])
                               for n, p in host.unet.named_parameters() if n in first))
    return report


def side(name: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--only", name, "--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {name} process failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(kib: int) -> str:
    return f"{kib / 1024:10.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("plain", "fp8"), help="run one side here, print its JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(run_side(args.only, args.steps)))
        return
    plain, fp8 = side("plain", args), side("fp8", args)
    print(f"SD1.5-size UNet (random, float32) + CLIP-L, {SIZE} px, batch 1, rank 8, UNet only, mixed_precision bf16, "
          f"{args.steps} steps, threads={args.threads}, MALLOC_MMAP_THRESHOLD_="
          f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    print("                                   without fp8_base   fp8_base   ratio")
    rows = (("RSS of the loaded model, MiB", "rss_loaded_kib"), ("peak RSS, whole run, MiB", "peak_whole_kib"),
            ("peak RSS, steps 2..N, MiB", "peak_steady_kib"))
    for label, key in rows:
        print(f"{label:34} {mib(plain[key])}   {mib(fp8[key])}   {fp8[key] / plain[key]:.3f}x")
    print(f"{'s/step':34} {plain['s_per_step']:10.2f}   {fp8['s_per_step']:10.2f}")
    print(f"peak mark reset: {plain['peak_reset']} / {fp8['peak_reset']}; host weights restored: "
          f"{plain['restored']} / {fp8['restored']}")
    print("run note:", *fp8["notes"])


if __name__ == "__main__":
    main()
