"""Resumable training state: a folder with the network, optimizer, scheduler, position and every RNG, atomically.

Layout of `<name>-step00000050-state/` (sd-scripts names its state folders the same way):
`train_state.json` (step, epoch, batch within the epoch, seed, loss history), `network.safetensors-state`
(the network's parameters as safetensors; a suffix A1111 does not list as a LoRA), `optimizer.bin`,
`scheduler.bin`, `rng.bin` (torch CPU/CUDA, the run's noise generator, Python `random`, NumPy) and, with fp16,
`scaler.bin`. The .bin files are `torch.save` dicts of tensors and plain values, read back with
`weights_only=True` (no code runs on load). The folder is written beside its final place and renamed into it.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import TrainingError

STATE_VERSION = 1
STATE_FILE = "train_state.json"
NETWORK_FILE = "network.safetensors-state"


@dataclass
class TrainPosition:
    """Where a run stands: optimizer steps done, the epoch, and the next batch of that epoch to train."""

    step: int
    epoch: int
    batch_in_epoch: int
    seed: int
    session_id: int
    started_at: float
    loss_history: list[float] = field(default_factory=list)
    world_size: int = 1


def save_state(folder: Path, *, position: TrainPosition, network: torch.nn.Module, optimizer: Any, scheduler: Any,
               noise_generator: torch.Generator, scaler: Any | None = None) -> Path:
    """Write the state folder `folder` (replacing an older one only once the new one is complete)."""
    folder = Path(folder)
    temp = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    try:
        temp.mkdir(parents=True)
        (temp / STATE_FILE).write_text(json.dumps({"version": STATE_VERSION, **asdict(position)}, indent=1),
                                       encoding="utf-8")
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in network.state_dict().items()}
        save_file(tensors, str(temp / NETWORK_FILE))
        torch.save(optimizer.state_dict(), temp / "optimizer.bin")
        torch.save(scheduler.state_dict(), temp / "scheduler.bin")
        torch.save(_rng_states(noise_generator), temp / "rng.bin")
        if scaler is not None:
            torch.save(scaler.state_dict(), temp / "scaler.bin")
        _replace_folder(temp, folder)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        raise TrainingError(f"cannot write the training state {folder}: {error.strerror or error}") from error
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return folder


def _replace_folder(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_position(folder: Path) -> TrainPosition:
    """The position recorded in a state folder; TrainingError when it is not one of ours."""
    path = Path(folder) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TrainingError(f"resume: {folder} is not a training state folder ({error.strerror or error})") \
            from error
    except ValueError as error:
        raise TrainingError(f"resume: {path} is not valid JSON ({error})") from error
    if not isinstance(data, dict) or data.pop("version", None) != STATE_VERSION:
        raise TrainingError(f"resume: {path} was written by another version (expected version {STATE_VERSION})")
    try:
        return TrainPosition(**data)
    except TypeError as error:
        raise TrainingError(f"resume: {path} is incomplete or damaged ({error})") from error


def load_state(folder: Path, *, network: torch.nn.Module, optimizer: Any, scheduler: Any,
               noise_generator: torch.Generator, scaler: Any | None = None) -> TrainPosition:
    """Put a state folder's network, optimizer, scheduler and RNG states back; returns its position."""
    folder = Path(folder)
    position = read_position(folder)
    try:
        tensors = load_file(str(folder / NETWORK_FILE))
        device = next((p.device for p in network.parameters()), torch.device("cpu"))
        network.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=True)
        optimizer.load_state_dict(_load(folder / "optimizer.bin"))
        scheduler.load_state_dict(_load(folder / "scheduler.bin"))
        _restore_rng(_load(folder / "rng.bin"), noise_generator)
        if scaler is not None and (folder / "scaler.bin").is_file():
            scaler.load_state_dict(_load(folder / "scaler.bin"))
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        raise TrainingError(f"resume: cannot load {folder} into this run (a different network or optimizer "
                            f"setting?): {error}") from error
    return position


def _load(path: Path) -> Any:
    """A weights-only pickle of the state folder. torch.save stores its members uncompressed, so what the file
    unpacks to may not exceed its size on disk; that is checked before torch reads it (pickle_limits)."""
    from ..networks.pickle_limits import load_weights_only

    return load_weights_only(path, max_bytes=path.stat().st_size)


def _rng_states(noise_generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "noise": noise_generator.get_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
    }


def _restore_rng(states: dict[str, Any], noise_generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    noise_generator.set_state(states["noise"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
