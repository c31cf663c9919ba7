"""How much does entering and leaving training_mode() cost on full-size models, against a weight backup?

training_mode() restores the host by recording flags, hooks and attention implementations (no weight copy);
the reference is what an extension that backs up weights to be safe would do: clone every tensor to CPU, then
copy it back. Both run here, in one process, on the same random full-size UNet and text encoders.

    .venv/bin/python bench/bench_training_mode.py [--arch sd1|sdxl] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_lora.hosts.snapshot import freeze_for_training, preserved_state  # noqa: E402
from lib_lora.tiny.full_size import build_full_text_encoders, build_full_unet, parameter_count  # noqa: E402


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd1", choices=("sd1", "sdxl"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    unet = build_full_unet(args.arch, dtype=torch.float16)
    encoders = build_full_text_encoders(args.arch, dtype=torch.float16)
    roots = [unet, *encoders]
    parameters = sum(parameter_count(m) for m in roots)

    def ours() -> None:
        with preserved_state(roots):
            freeze_for_training(roots)

    def weight_backup() -> None:
        backups = [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()} for m in roots]
        freeze_for_training(roots)
        with torch.no_grad():
            for module, backup in zip(roots, backups):
                for key, value in module.state_dict().items():
                    value.copy_(backup[key])

    before = [p.detach().clone() for p in unet.parameters()][:8]
    t_ours = best_of(args.repeats, ours)
    t_ref = best_of(args.repeats, weight_backup)
    assert all(torch.equal(a, b) for a, b in zip(before, unet.parameters()))
    print(f"arch={args.arch} parameters={parameters / 1e6:.1f}M repeats={args.repeats} (best of)")
    print(f"training_mode enter+exit (flags, hooks, attention): {t_ours * 1e3:9.1f} ms")
    print(f"reference: weight backup to CPU + copy back:        {t_ref * 1e3:9.1f} ms")
    print(f"ratio reference / ours: {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
