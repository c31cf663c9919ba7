"""LoRA training on the loaded model against a diffusers + peft reference loop, same settings (issue #6).

An SD1.5-size UNet and CLIP-L with random weights (tiny VAE and tokenizer; CPU, float32), 256 px, batch 1,
rank 16 / alpha 16, AdamW lr 1e-4, grad-norm clip 1.0, UNet only, cached latents and text embeddings, N steps:
- ours: `TrainRun` on a DiffusersHost over the loaded pipeline (the network hooked onto the loaded UNet);
- reference: the loop a user writes after diffusers' `train_text_to_image_lora.py`, training on a SECOND copy
  of the UNet (`copy.deepcopy`, standing in for reading the checkpoint again as traintrain does) with peft
  adapters on the same modules ours trains (attention q/k/v/out, proj_in/proj_out, ff.net.0.proj, ff.net.2).
Each runs in its own process (peak RSS is per process), reporting JSON; the parent prints the ratios:
s/step (first step left out as warm-up), peak RSS over the RSS of the loaded model, start → first step
(data preparation / latent and text caching left out). Targets: steps/s ≥ 1.05× the reference; RSS increase
≤ 0.5× the reference's; base weights not copied (same data_ptr before and during training).

    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python bench/bench_train_reference.py [--steps 8] [--threads 1]
    ... bench/bench_train_reference.py --only ours|reference     # one side, JSON on stdout

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
"""kohya's default UNet targets (lib_lora/tiny/loras.py kohya_default_targets) spelled as peft module suffixes."""


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
    from lib_lora.train import loop

    original = loop.TrainData.prepare

    def prepare(self, control=None):
        start = time.perf_counter()
        try:
            return original(self, control)
        finally:
            seconds.append(time.perf_counter() - start)

    loop.TrainData.prepare = prepare
    try:
        yield
    finally:
        loop.TrainData.prepare = original


def run_ours(steps: int, count: int) -> dict:
    from lib_lora.train.config import TrainConfig
    from lib_lora.train.loop import TrainRun
    from lib_lora.train.network import TrainableNetwork

    host, report = loaded_host()
    pointers = {name: p.data_ptr() for name, p in host.unet.named_parameters()}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = dataset(root, count)
        config = TrainConfig.from_dict({
            "train_data_dir": str(data.root), "output_dir": str(root / "out"), "caption_extension": ".txt",
            "resolution": str(SIZE), "train_batch_size": 1, "network_dim": RANK, "network_alpha": RANK,
            "optimizer_type": "AdamW", "learning_rate": LR, "max_grad_norm": MAX_GRAD_NORM,
            "max_train_steps": steps, "seed": 0, "network_train_unet_only": True,
            "cache_text_encoder_outputs": True, "cache_latents": True})
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


def run_reference(steps: int, count: int) -> dict:
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    host, report = loaded_host()
    pipe = host.pipeline
    with tempfile.TemporaryDirectory() as folder:
        data = dataset(Path(folder), count)
        cache_start = time.perf_counter()
        latents, embeddings = cached_inputs(pipe, data)
        report["prep_s"] = time.perf_counter() - cache_start
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)

    start = time.perf_counter()
    unet = copy.deepcopy(pipe.unet)  # the second copy of the checkpoint the reference trains on
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=PEFT_TARGETS))
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    stamps: list[float] = []
    for step in range(steps):
        index = step % len(latents)
        latent = latents[index]
        noise = torch.randn(latent.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), generator=generator)
        noisy = noise_scheduler.add_noise(latent, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=embeddings[index], return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    report["peak_end_kib"] = peak_rss_kib()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    report.update(s_per_step=statistics.median(gaps), step_seconds=gaps, start_to_first_step_s=stamps[0] - start,
                  steps=len(stamps), lora_params=sum(p.numel() for p in params))
    return report


# --- parent ---------------------------------------------------------------------------------------------------------
def side(name: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--only", name, "--steps", str(args.steps), "--threads", str(args.threads),
               "--images", str(args.images)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {name} process failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def increase_mib(report: dict) -> float:
    return (report["peak_end_kib"] - report["rss_loaded_kib"]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="images in the generated dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared VM)")
    parser.add_argument("--only", choices=("ours", "reference"), help="run one side here and print its JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        report = (run_ours if args.only == "ours" else run_reference)(args.steps, args.images)
        print(json.dumps(report))
        return

    ours = side("ours", args)
    reference = side("reference", args)
    print(f"SD1.5-size UNet (random, float32), {SIZE} px, batch 1, rank {RANK}, AdamW lr {LR}, UNet only, "
          f"cached latents + text, {args.steps} steps, threads={args.threads}, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    print(f"LoRA parameters: ours {ours['lora_params']:,}, reference (peft) {reference['lora_params']:,}")
    print(f"{'':34s}{'ours':>12s}{'reference':>12s}   ratio")
    speed = reference["s_per_step"] / ours["s_per_step"]
    print(f"{'s/step (median, step 1 left out)':34s}{ours['s_per_step']:12.3f}{reference['s_per_step']:12.3f}"
          f"   {speed:.3f}x steps/s of the reference (target >= 1.05x)")
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
