"""Training LoRAs on the host's loaded model: data, network, optimizer and the training loop.

The main entry points, importable from here (loaded on first use, so `lib_lora.train.errors` and friends stay
cheap to import):

- `TrainConfig` (config.py): every option under its sd-scripts name; `from_toml`, `to_toml`, `from_dict`.
- `TrainRun` (loop.py): one run on a Host; `run(control)`, `job()`, `request_stop()`, `request_save()`.
- `TrainResult`, `TrainProgress`: what a run returns and reports each step.
- `TrainQueue` (queue.py): runs one after another in one job.
- `estimate_vram` (vram.py), `RECIPES` (recipes.py), `TRAIN_HELP` (the help text of every option).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "TRAIN_HELP": "config",
    "TrainRun": "loop",
    "TrainResult": "loop",
    "TrainProgress": "progress",
    "TrainQueue": "queue",
    "QueueOutcome": "queue",
    "estimate_vram": "vram",
    "VramEstimate": "vram",
    "RECIPES": "recipes",
    "Recipe": "recipes",
    "ConfigError": "errors",
    "TrainingError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
