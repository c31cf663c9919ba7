"""Resumable training state: a folder with the network, optimizer, scheduler, position and every RNG, atomically.

Layout of `<name>-step00000050-state/` (sd-scripts names its state folders the same way):
`train_state.json` (step, epoch, batch within the epoch, seed, loss history), `network.safetensors-state`
(the network's parameters as safetensors; a suffix A1111 does not list as a LoRA), `optimizer.bin`,
`scheduler.bin`, `rng.bin` (torch CPU/CUDA, the run's noise generator, Python `random`, NumPy) and, with fp16,
`scaler.bin`. The .bin files are `torch.save` dicts of tensors and plain values, read back with
`weights_only=True` (no code runs on load). The folder is written beside its final place, every file synced, and
renamed into it (swapped with an older one in one step where the platform can). `manifest.json`, written last,
holds each file's size and SHA-256: `check_state` finds a folder torn by a crash or a full disk, and `load_state`
refuses one (a folder without a manifest, written before manifests existed, is loaded as it is).
"""

from __future__ import annotations

import hashlib
import json
import os
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
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = (STATE_FILE, NETWORK_FILE, "optimizer.bin", "scheduler.bin", "rng.bin")
MAX_MANIFEST_BYTES = 64 * 1024
"""A manifest lists a handful of files; anything longer is not one of ours."""
MAX_STATE_FILE_BYTES = 64 * 1024 * 1024
"""train_state.json holds the loss and validation histories: 1,000,000 steps of losses are about 20 MB of JSON."""


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
    validation_history: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss) of every measurement so far (JSON keeps each pair as a list)."""


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
        _write_manifest(temp)
        _replace_folder(temp, folder)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        raise TrainingError(f"cannot write the training state {folder}: {error.strerror or error}") from error
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return folder


def _replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`: swapped in one step where the platform can, so `target` always names a folder."""
    from ..atomic import exchange, sync_directory

    if target.exists() and exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now the old folder
    else:
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
            target.rename(old)
        new.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    sync_directory(target.parent)


def _write_manifest(folder: Path) -> None:
    """Sync every file of `folder` and write the manifest of their sizes and hashes (synced too) last."""
    from ..atomic import sync_directory, write_new

    files = {}
    for path in sorted(folder.iterdir()):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        files[path.name] = {"size": path.stat().st_size, "sha256": _digest(path)}
    write_new(folder / MANIFEST_FILE, [json.dumps({"version": STATE_VERSION, "files": files}, indent=1).encode()])
    sync_directory(folder)


def _digest(path: Path) -> str:
    """SHA-256 of a file, read in chunks (hashlib.file_digest needs Python 3.11; A1111 runs 3.10)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_state(folder: Path, *, require_manifest: bool = True) -> None:
    """TrainingError unless every file the manifest of `folder` lists is there with its size and hash (a folder
    torn by a crash, a full disk or a copy cut short). Without a manifest: an error when `require_manifest`."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise TrainingError(f"resume: {path} is larger than a manifest can be")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if require_manifest:
            raise TrainingError(f"resume: {folder} has no {MANIFEST_FILE}: it was not written to the end") from None
        return
    except (OSError, ValueError) as error:
        raise TrainingError(f"resume: {path} cannot be read ({error})") from error
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not set(REQUIRED_FILES) <= set(files):
        raise TrainingError(f"resume: {path} does not list the files of a state folder")
    for name, entry in files.items():
        _check_file(folder, name, entry)


def _check_file(folder: Path, name: object, entry: object) -> None:
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith(".") or not isinstance(entry, dict):
        raise TrainingError(f"resume: the manifest of {folder} names {name!r}, not a file of a state folder")
    path = folder / name
    try:
        size = path.stat().st_size
    except OSError:
        raise TrainingError(f"resume: {path} is missing: the state folder is incomplete") from None
    if size != entry.get("size"):
        raise TrainingError(f"resume: {path} has {size} bytes, {entry.get('size')} were written: it is damaged")
    if _digest(path) != entry.get("sha256"):
        raise TrainingError(f"resume: {path} is not the file that was written (its SHA-256 differs): it is damaged")


def read_position(folder: Path) -> TrainPosition:
    """The position recorded in a state folder; TrainingError when it is not one of ours."""
    path = Path(folder) / STATE_FILE
    try:
        if path.stat().st_size > MAX_STATE_FILE_BYTES:
            raise TrainingError(f"resume: {path} is larger than {MAX_STATE_FILE_BYTES // 1024**2} MiB: not ours")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TrainingError(f"resume: {folder} is not a training state folder ({error.strerror or error})") \
            from error
    except ValueError as error:
        raise TrainingError(f"resume: {path} is not valid JSON ({error})") from error
    if not isinstance(data, dict) or data.pop("version", None) != STATE_VERSION:
        raise TrainingError(f"resume: {path} was written by another version (expected version {STATE_VERSION})")
    try:
        position = TrainPosition(**data)
        position.validation_history = [(int(step), float(value)) for step, value in position.validation_history]
        return position
    except (TypeError, ValueError) as error:
        raise TrainingError(f"resume: {path} is incomplete or damaged ({error})") from error


def load_state(folder: Path, *, network: torch.nn.Module, optimizer: Any, scheduler: Any,
               noise_generator: torch.Generator, scaler: Any | None = None) -> TrainPosition:
    """Put a state folder's network, optimizer, scheduler and RNG states back; returns its position."""
    folder = Path(folder)
    check_state(folder, require_manifest=False)
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
