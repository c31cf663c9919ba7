"""LoRA training on the loaded model against a diffusers + peft reference loop, same settings (issue #6).

An SD1.5-size UNet and CLIP-L with random weights (tiny VAE and tokenizer; CPU, float32), 256 px, batch 1,
rank 16 / alpha 16, AdamW lr 1e-4, grad-norm clip 1.0, UNet only, cached latents and text embeddings, N steps:
- ours: `TrainRun` on a DiffusersHost over the loaded pipeline (the network hooked onto the loaded UNet);
- reference: the loop a user writes after diffusers' `train_text_to_image_lora.py`, training on a SECOND copy
  of the UNet (`copy.deepcopy`, standing in for reading the checkpoint again as traintrain does) with peft
  adapters on the same modules ours trains (attention q/k/v/out, proj_in/proj_out, ff.net.0.proj, ff.net.2).
Each runs in its own process (peak RSS is per process), reporting JSON; the parent prints the ratios:
peak RSS over the RSS of the loaded model, start → first step (data preparation / latent and text caching left
out), and s/step. Single-thread CPU speed on a shared VM drifts by 5-10% within minutes, more than the effect
measured, so the s/step ratio comes from a third process that holds both and alternates them step by step
(a reference step run from our per-step report, each side timed on its own; first steps left out); the
own-process s/step are printed beside it. Targets: steps/s ≥ 1.05× the reference; RSS increase
≤ 0.5× the reference's; base weights not copied (same data_ptr before and during training).

    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python bench/bench_train_reference.py [--steps 8] [--paired-steps 12]
    ... bench/bench_train_reference.py --only ours|reference|paired    # one process, JSON on stdout

(The fixed mmap threshold: see bench_lora_apply.py.)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_block_session import sd15_size_pipeline  # noqa: E402

from lib_lora.hosts.diffusers import DiffusersHost  # noqa: E402
from lib_lora.tiny.images import generate_dataset  # noqa: E402

SIZE = 256
RANK = 16
LR = 1e-4
MAX_GRAD_NORM = 1.0  # ours' default, and diffusers' script's
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
"""kohya's default UNet targets (networks/random_files.py kohya_default_targets) spelled as peft module suffixes."""


def rss_kib() -> int:
    """The current resident set size in KiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux `clear_refs` 5); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def loaded_host() -> tuple[DiffusersHost, dict]:
    """The SD1.5-size pipeline behind a host, and the RSS figures once it is loaded."""
    torch.manual_seed(0)
    host = DiffusersHost(sd15_size_pipeline(), model_name="sd15-random")
    gc.collect()
    reset = reset_peak_rss()
    return host, {"rss_loaded_kib": rss_kib(), "peak_reset": reset, "peak_after_load_kib": peak_rss_kib()}


def dataset(root: Path, count: int):
    return generate_dataset(root / "data", count=count, repeats=1, sizes=((SIZE, SIZE),))


# --- ours ---------------------------------------------------------------------------------------------------------
@contextmanager
def timed_prepare(seconds: list[float]):
    """Time TrainData.prepare (latent / text caching) inside the run; the original method is restored on exit."""
    from lib_lora.train.data import TrainData

    original = TrainData.prepare

    def prepare(self, control=None):
        start = time.perf_counter()
        try:
            return original(self, control)
        finally:
            seconds.append(time.perf_counter() - start)

    TrainData.prepare = prepare
    try:
        yield
    finally:
        TrainData.prepare = original


def our_config(root: Path, data, steps: int):
    from lib_lora.train.config import TrainConfig

    return TrainConfig.from_dict({
        "train_data_dir": str(data.root), "output_dir": str(root / "out"), "caption_extension": ".txt",
        "resolution": str(SIZE), "train_batch_size": 1, "network_dim": RANK, "network_alpha": RANK,
        "optimizer_type": "AdamW", "learning_rate": LR, "max_grad_norm": MAX_GRAD_NORM,
        "max_train_steps": steps, "seed": 0, "network_train_unet_only": True,
        "cache_text_encoder_outputs": True, "cache_latents": True})


def run_ours(steps: int, count: int) -> dict:
    from lib_lora.train.loop import TrainRun
    from lib_lora.train.network.trainable import TrainableNetwork

    host, report = loaded_host()
    pointers = {name: p.data_ptr() for name, p in host.unet.named_parameters()}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = dataset(root, count)
        config = our_config(root, data, steps)
        stamps: list[float] = []
        moved: list[str] = []

        def on_step(progress) -> None:
            stamps.append(time.perf_counter())
            if progress.step == 1:  # during training: the hooked UNet still holds the loaded weights
                moved.extend(n for n, p in host.unet.named_parameters() if p.data_ptr() != pointers[n])

        prep: list[float] = []
        with timed_prepare(prep):
            start = time.perf_counter()
            TrainRun(config, host, on_step=on_step).run()
        report["peak_end_kib"] = peak_rss_kib()
        network = TrainableNetwork.create(config.network, host, seed=0)
        report["lora_params"] = sum(p.numel() for p in network.parameters())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    report.update(s_per_step=statistics.median(gaps), step_seconds=gaps, prep_s=sum(prep),
                  start_to_first_step_s=stamps[0] - start - sum(prep), steps=len(stamps),
                  base_weights_moved=len(moved), base_params=len(pointers))
    return report


# --- reference: diffusers + peft -----------------------------------------------------------------------------------
def cached_inputs(pipe, data) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Latents (the pipeline's VAE, × scaling factor) and text embeddings of every image, computed once."""
    import numpy as np
    from PIL import Image

    latents, embeddings = [], []
    with torch.no_grad():
        for path, caption in zip(data.images, data.captions):
            image = Image.open(path).convert("RGB").resize((SIZE, SIZE))
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
            latent = pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
            ids = pipe.tokenizer(caption, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            latents.append(latent)
            embeddings.append(pipe.text_encoder(ids)[0])
    return latents, embeddings


class ReferenceLoop:
    """diffusers' train_text_to_image_lora.py loop on a second copy of the UNet with peft adapters."""

    def __init__(self, pipe, latents: list[torch.Tensor], embeddings: list[torch.Tensor]) -> None:
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        self.latents, self.embeddings = latents, embeddings
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.generator = torch.Generator().manual_seed(0)
        self.unet = copy.deepcopy(pipe.unet)  # the second copy of the checkpoint the reference trains on
        self.unet.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                         target_modules=PEFT_TARGETS))
        self.unet.train()
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR)
        self.index = 0

    def step(self) -> None:
        index, self.index = self.index % len(self.latents), self.index + 1
        latent, embedding = self.latents[index], self.embeddings[index]
        noise = torch.randn(latent.shape, generator=self.generator)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=self.generator)
        noisy = self.noise_scheduler.add_noise(latent, noise, timesteps)
        prediction = self.unet(noisy, timesteps, encoder_hidden_states=embedding, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def run_reference(steps: int, count: int) -> dict:
    host, report = loaded_host()
    with tempfile.TemporaryDirectory() as folder:
        data = dataset(Path(folder), count)
        cache_start = time.perf_counter()
        latents, embeddings = cached_inputs(host.pipeline, data)
        report["prep_s"] = time.perf_counter() - cache_start
    start = time.perf_counter()
    reference = ReferenceLoop(host.pipeline, latents, embeddings)
    stamps: list[float] = []
    for _ in range(steps):
        reference.step()
        stamps.append(time.perf_counter())
    report["peak_end_kib"] = peak_rss_kib()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    report.update(s_per_step=statistics.median(gaps), step_seconds=gaps, start_to_first_step_s=stamps[0] - start,
                  steps=len(stamps), lora_params=sum(p.numel() for p in reference.params))
    return report


# --- both in one process, steps alternating: the s/step ratio -----------------------------------------------------
def run_paired(steps: int, count: int) -> dict:
    """Our TrainRun with one reference step run between each two of ours (from our per-step report), so a
    drift in the machine's speed hits both alike; each side's step is timed on its own."""
    from lib_lora.train.loop import TrainRun

    host, report = loaded_host()
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = dataset(root, count)
        reference = ReferenceLoop(host.pipeline, *cached_inputs(host.pipeline, data))
        resumed: list[float] = []

        def on_step(progress) -> None:
            now = time.perf_counter()
            if resumed:
                ours.append(now - resumed[-1])
            reference.step()
            done = time.perf_counter()
            theirs.append(done - now)
            resumed.append(done)

        TrainRun(our_config(root, data, steps + 1), host, on_step=on_step).run()
    report.update(ours=ours, reference=theirs[1:])  # the first of each warms up
    return report


# --- parent ---------------------------------------------------------------------------------------------------------
def side(name: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--only", name, "--steps", str(args.steps), "--threads", str(args.threads),
               "--images", str(args.images), "--paired-steps", str(args.paired_steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {name} process failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def merged(reports: list[dict]) -> dict:
    """One side's rounds as one report: medians of the timings and the memory figures, every s/step kept."""
    report = dict(reports[0])
    for key in ("s_per_step", "start_to_first_step_s", "prep_s", "peak_end_kib", "rss_loaded_kib"):
        report[key] = statistics.median(r[key] for r in reports)
    report["round_s_per_step"] = [r["s_per_step"] for r in reports]
    report["base_weights_moved"] = max(r.get("base_weights_moved", 0) for r in reports)
    return report


def increase_mib(report: dict) -> float:
    return (report["peak_end_kib"] - report["rss_loaded_kib"]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="images in the generated dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared VM)")
    parser.add_argument("--rounds", type=int, default=1, help="own-process runs per side, alternating which first")
    parser.add_argument("--paired-steps", type=int, default=12, help="steps per side in the alternating process")
    parser.add_argument("--only", choices=("ours", "reference", "paired"), help="run one side here, print its JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        steps = args.paired_steps if args.only == "paired" else args.steps
        report = {"ours": run_ours, "reference": run_reference, "paired": run_paired}[args.only](steps, args.images)
        print(json.dumps(report))
        return

    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    for index in range(args.rounds):  # alternating, so drift on the machine hits both sides alike
        for name in (("ours", "reference") if index % 2 == 0 else ("reference", "ours")):
            runs[name].append(side(name, args))
    ours, reference = (merged(runs[name]) for name in ("ours", "reference"))
    paired = side("paired", args)
    print(f"SD1.5-size UNet (random, float32), {SIZE} px, batch 1, rank {RANK}, AdamW lr {LR}, UNet only, "
          f"cached latents + text, {args.steps} steps × {args.rounds} rounds, threads={args.threads}, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    print(f"LoRA parameters: ours {ours['lora_params']:,}, reference (peft) {reference['lora_params']:,}")
    print(f"{'':34s}{'ours':>12s}{'reference':>12s}   ratio")
    mine, theirs = statistics.median(paired["ours"]), statistics.median(paired["reference"])
    per_pair = statistics.median(r / o for o, r in zip(paired["ours"], paired["reference"]))
    print(f"{'s/step, alternating in 1 process':34s}{mine:12.3f}{theirs:12.3f}   {theirs / mine:.3f}x steps/s of the "
          f"reference (target >= 1.05x); median of the {len(paired['ours'])} step pairs {per_pair:.3f}x")
    speed = reference["s_per_step"] / ours["s_per_step"]
    print(f"{'s/step, each in its own process':34s}{ours['s_per_step']:12.3f}{reference['s_per_step']:12.3f}"
          f"   {speed:.3f}x (median, step 1 left out; rounds: "
          f"{', '.join(f'{v:.2f}' for v in ours['round_s_per_step'])} vs "
          f"{', '.join(f'{v:.2f}' for v in reference['round_s_per_step'])})")
    memory = increase_mib(ours) / increase_mib(reference)
    print(f"{'peak RSS over loaded model, MiB':34s}{increase_mib(ours):12.0f}{increase_mib(reference):12.0f}"
          f"   {memory:.3f}x the reference's increase (target <= 0.5x)")
    print(f"{'RSS of the loaded model, MiB':34s}{ours['rss_loaded_kib'] / 1024:12.0f}"
          f"{reference['rss_loaded_kib'] / 1024:12.0f}")
    print(f"{'start -> first step, s':34s}{ours['start_to_first_step_s']:12.2f}"
          f"{reference['start_to_first_step_s']:12.2f}   (caching left out)")
    print(f"{'caching (latents + text), s':34s}{ours['prep_s']:12.2f}{reference['prep_s']:12.2f}")
    print(f"base UNet weights moved during our training: {ours['base_weights_moved']} of {ours['base_params']} "
          f"parameters (0 = not copied); peak mark reset after load: ours {ours['peak_reset']}, "
          f"reference {reference['peak_reset']}")


if __name__ == "__main__":
    main()
