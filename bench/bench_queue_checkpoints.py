"""What the queue's automatic checkpoints cost: step time on the tiny model with and without them, and the time to
write one state of a real LoRA's size.

1. The tiny SD1 model trains `--steps` steps in this process without checkpoints (the reference) and with one
   every 10 steps, alternating, `--repeats` times. Prints the median step time of each, the median of the steps
   that wrote a checkpoint, their ratios to the reference, and what one checkpoint every 100 steps (the
   default) adds to the step time.
2. A state folder (network weights and AdamW's two moments, safetensors + torch.save, synced, hashed, renamed) of
   an SD1 and an SDXL rank-32 LoRA's parameter count, written `--repeats` times: median seconds, and that time
   spread over 100 steps as a share of a step of 0.25 s and 1 s.

    .venv/bin/python bench/bench_queue_checkpoints.py [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from train_run_helpers import make_pattern_dataset, tiny_config  # noqa: E402

from lib_lora.hosts.diffusers import load_diffusers_host  # noqa: E402
from lib_lora.train.checkpoints import DEFAULT_EVERY_N_STEPS, CheckpointPolicy  # noqa: E402
from lib_lora.train.loop import TrainRun  # noqa: E402
from lib_lora.train.resume_state import TrainPosition, save_state  # noqa: E402

LORA_PARAMETERS = {"SD1 rank 32": 9_437_184, "SDXL rank 32": 23_040_000}
"""The trainable parameters of kohya LoRAs of rank 32 on the UNet and text encoders (as their files hold them)."""


@functools.lru_cache(maxsize=1)
def _tiny_host():
    return load_diffusers_host("tiny")


def step_durations(steps: int, every: int | None) -> list[float]:
    """Seconds of steps 2..`steps` of a tiny run, each from the end of the step before to its own end (so a
    checkpoint written between two steps counts in the second), with a checkpoint every `every` steps or none."""
    host = _tiny_host()
    root = Path(tempfile.mkdtemp(prefix="bench-checkpoints-"))
    data = make_pattern_dataset(root / "data", count=4)
    config = tiny_config(data, root / "out", max_train_steps=steps, train_batch_size=1, network_train_unet_only=True)
    policy = CheckpointPolicy(root / "checkpoints", every_n_steps=every) if every else None
    ends: list[float] = []
    TrainRun(config, host, checkpoints=policy, on_step=lambda progress: ends.append(time.perf_counter())).run()
    return [later - earlier for earlier, later in zip(ends, ends[1:])]


def time_runs(steps: int, repeats: int) -> dict[str, float]:
    """Median ms of a step without checkpoints and, with one every 10 steps, of the steps without and with one;
    medians, so the other jobs on a shared machine weigh little. Runs alternate, `repeats` times."""
    plain: list[float] = []
    ordinary: list[float] = []
    written: list[float] = []
    for _ in range(repeats):
        plain += step_durations(steps, None)
        for index, seconds in enumerate(step_durations(steps, 10), start=2):
            (written if (index - 1) % 10 == 0 else ordinary).append(seconds)
    return {"no checkpoints": statistics.median(plain) * 1000, "every 10, other steps": statistics.median(ordinary)
            * 1000, "every 10, step after one": statistics.median(written) * 1000}


def time_state_write(parameters: int, repeats: int) -> float:
    """Median seconds to write a state folder of a LoRA with `parameters` trainable weights and AdamW."""
    network = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(parameters // 64, 64))])
    optimizer = torch.optim.AdamW(network.parameters())
    network[0].grad = torch.randn_like(network[0])
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    position = TrainPosition(step=100, epoch=1, batch_in_epoch=3, seed=1, session_id=2, started_at=3.0,
                             loss_history=[0.1] * 100)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="bench-state-") as folder:
        for repeat in range(repeats):
            started = time.perf_counter()
            save_state(Path(folder) / f"step{repeat:08d}-state", position=position, network=network,
                       optimizer=optimizer, scheduler=scheduler, noise_generator=torch.Generator())
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    per_step = time_runs(args.steps, args.repeats)
    reference = per_step["no checkpoints"]
    print(f"tiny SD1, {args.steps} steps, batch 1, 64 px, {args.repeats} runs each, median ms per step:")
    for name, ms in per_step.items():
        print(f"  {name:>26}: {ms:7.2f} ms  ratio {ms / reference:.3f}")
    extra = per_step["every 10, step after one"] - per_step["every 10, other steps"]
    print(f"  one tiny checkpoint: {extra:.2f} ms; every {DEFAULT_EVERY_N_STEPS} steps (the default): "
          f"{extra / DEFAULT_EVERY_N_STEPS / reference:.2%} of the step time")
    print("one state folder written (weights + AdamW moments, synced and hashed):")
    for name, parameters in LORA_PARAMETERS.items():
        seconds = time_state_write(parameters, args.repeats)
        share = ", ".join(f"{seconds / (100 * step):.1%} of a {step:g} s step" for step in (0.25, 1.0))
        print(f"  {name} ({parameters * 12 / 1e6:.0f} MB): {seconds:.2f} s; every 100 steps: {share}")


if __name__ == "__main__":
    main()
