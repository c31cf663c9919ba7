"""Training-step cost of TrainRun against the bare step it wraps, same run, same model.

Reference: inside `host.training_mode()` with the same network attached, a hand-written step — noise the
cached-size latents, `host.apply_unet`, MSE, backward, AdamW step — with nothing else. Measured: TrainRun's
steps (timed between its per-step reports, so data preparation and saving are left out) with the same settings,
plain and with gradient checkpointing. The ratio is the trainer's own overhead (data batches, loss weighting,
progress, stop checks); target ≤ 1.15× plain.

    .venv/bin/python bench/bench_train.py [--steps 30] [--rounds 3] [--sdxl]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_lora.hosts.diffusers import load_diffusers_host  # noqa: E402
from lib_lora.tiny.images import generate_dataset  # noqa: E402
from lib_lora.train.config import TrainConfig  # noqa: E402
from lib_lora.train.loop import TrainRun  # noqa: E402
from lib_lora.train.network.trainable import TrainableNetwork  # noqa: E402


def config(data: Path, out: Path, steps: int, **extra) -> TrainConfig:
    return TrainConfig.from_dict({
        "train_data_dir": str(data), "output_dir": str(out), "caption_extension": ".txt", "resolution": "64",
        "train_batch_size": 2, "network_dim": 4, "learning_rate": 1e-3, "max_train_steps": steps, "seed": 0,
        "network_train_unet_only": True, "cache_text_encoder_outputs": True, **extra})


def reference_step_seconds(host, cfg: TrainConfig, steps: int) -> float:
    """Seconds per bare step: the UNet forward/backward through the attached network and an AdamW update."""
    cond = host.encode_prompts(["tinychar, 1girl"] * 2, size=(64, 64))
    schedule = host.alphas_cumprod()
    with host.training_mode():
        network = TrainableNetwork.create(cfg.network, host, seed=0)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
        with network.attached():
            times = []
            for index in range(steps + 1):
                start = time.perf_counter()
                latents = torch.randn(2, 4, 8, 8)
                noise = torch.randn_like(latents)
                t = torch.randint(0, 1000, (2,))
                a = schedule[t].view(-1, 1, 1, 1)
                noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
                loss = torch.nn.functional.mse_loss(host.apply_unet(noisy, t, cond), noise)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if index:  # the first step warms up
                    times.append(time.perf_counter() - start)
    return statistics.median(times)


def trainer_step_seconds(host, cfg: TrainConfig) -> float:
    stamps: list[float] = []
    TrainRun(cfg, host, on_step=lambda progress: stamps.append(time.perf_counter())).run()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sdxl", action="store_true", help="the tiny SDXL model instead of the tiny SD1 one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = load_diffusers_host("tiny-sdxl" if args.sdxl else "tiny")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_dataset(root / "data", count=8, repeats=1, sizes=((64, 64),))
        plain = config(root / "data", root / "out", args.steps)
        checkpointed = config(root / "data", root / "out", args.steps, gradient_checkpointing=True)
        rows = {"reference": [], "TrainRun": [], "TrainRun + checkpointing": []}
        for _ in range(args.rounds):  # alternate, so drift on a shared machine hits all alike
            rows["reference"].append(reference_step_seconds(host, plain, args.steps))
            rows["TrainRun"].append(trainer_step_seconds(host, plain))
            rows["TrainRun + checkpointing"].append(trainer_step_seconds(host, checkpointed))
    reference = statistics.median(rows["reference"])
    print(f"{'tiny-sdxl' if args.sdxl else 'tiny'}, batch 2, 64 px, rank 4, {args.steps} steps × {args.rounds} rounds")
    for name, values in rows.items():
        value = statistics.median(values)
        print(f"{name:26s} {value * 1000:8.1f} ms/step   {value / reference:5.2f}× reference")


if __name__ == "__main__":
    main()
