"""Step cost of each training mode against a plain LoRA run, same process, same tiny model and settings.

Reference: a plain lora run of the same length (seconds per optimizer step, data preparation and saving left
out: timed between the run's first and last step reports). Measured the same way: slider (one teacher call on
three prompts and one trained call per step), difference direct (one teacher call and one trained call), the
copy machine's two passes together (the merge and pass 2's preparation between them included) and rounds (three
rounds; the merges between them included). "After the last step" is the saving (and, for rounds, the SVD of the
total change) until the run returns. Every run is checked to leave the host bit-identical.

    .venv/bin/python bench/bench_modes.py [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_lora.hosts.diffusers import load_diffusers_host  # noqa: E402
from lib_lora.tiny.images import generate_dataset  # noqa: E402
from lib_lora.train.config import TrainConfig  # noqa: E402
from lib_lora.train.loop import TrainRun  # noqa: E402


def _weights(host) -> dict[str, torch.Tensor]:
    roots = {"unet": host.unet, **{f"te{i}": te for i, te in enumerate(host.text_encoders)}}
    return {f"{name}.{key}": t.detach().clone() for name, root in roots.items() for key, t in root.state_dict().items()}


def timed(host, config: TrainConfig) -> tuple[float, float, int]:
    """(seconds per step between the first and the last step report, seconds after the last report, steps)."""
    marks: list[float] = []
    before = _weights(host)
    result = TrainRun(config, host, on_step=lambda progress: marks.append(time.perf_counter())).run()
    ended = time.perf_counter()
    after = _weights(host)
    assert all(torch.equal(before[k], after[k]) for k in before), "the host changed"
    per_step = (marks[-1] - marks[0]) / max(1, len(marks) - 1) if len(marks) > 1 else float("nan")
    return per_step, ended - marks[-1], result.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = load_diffusers_host("tiny")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_dataset(root / "data", count=4, repeats=1, sizes=((64, 64),))
        original = np.full((64, 64, 3), 128, np.uint8)
        target = original.copy()
        target[:32, :32] = (230, 30, 30)
        Image.fromarray(original).save(root / "a.png")
        Image.fromarray(target).save(root / "a_target.png")
        base = {"pretrained_model_name_or_path": "tiny", "train_data_dir": str(root / "data"),
                "output_dir": str(root / "out"), "caption_extension": ".txt", "resolution": "64",
                "train_batch_size": 2, "network_dim": 4, "network_alpha": 4, "learning_rate": 1e-3, "seed": 0,
                "max_train_steps": args.steps, "network_train_unet_only": True}
        pairs = {"difference_original": str(root / "a.png"), "difference_target": str(root / "a_target.png")}
        runs = {
            "lora (reference)": {},
            "slider": {"training_mode": "slider", "slider_prompt": "red hair", "slider_target": "blue hair"},
            "difference direct": {"training_mode": "difference", "difference_method": "direct", **pairs},
            "difference two_pass (both passes)": {"training_mode": "difference", "copy_max_train_steps": args.steps,
                                                  **pairs},
            "rounds (3 rounds of 2 epochs)": {"training_mode": "rounds", "max_train_steps": 1,
                                              "rounds": ["learning_rate=1e-3,epochs=2,merge=0.7"] * 3},
        }
        reference = None
        print(f"{'mode':36} {'s/step':>8} {'× lora':>7} {'after last step (s)':>20}")
        for number, (name, extra) in enumerate(runs.items()):
            per_step, tail, steps = timed(host, TrainConfig.from_dict({**base, **extra, "output_name": f"m{number}"}))
            reference = reference or per_step
            print(f"{name:36} {per_step:8.3f} {per_step / reference:7.2f} {tail:20.2f}   ({steps} steps)")


if __name__ == "__main__":
    main()
