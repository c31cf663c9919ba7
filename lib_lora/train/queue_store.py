"""The training queue's file: one `[[run]]` table per run (its name, its status and its config's options), written
atomically, read with bounds.

A run's status is `queued` (never started), `started` (training began and did not end: after a restart, an
interrupted run) or `stopped` (stopped by the user with a checkpoint to continue from). A file that cannot be read
is set aside under a new name, never overwritten, so nothing in it is lost.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from ..atomic import write_atomically
from .bounds import read_bounded
from .config import TrainConfig
from .errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (A1111's): the same parser from PyPI
    import tomli as tomllib

RunStatus = Literal["queued", "started", "stopped"]
STATUSES: tuple[RunStatus, ...] = ("queued", "started", "stopped")
MAX_QUEUED_RUNS = 100
"""The most runs a queue holds (each one is a full training run: hours of work on a GPU)."""
MAX_QUEUE_FILE_BYTES = 8 * 1024 * 1024
"""The largest queue file read: a run's options are a few kilobytes of TOML, text options at most 64 KiB each."""
MAX_NAME_CHARS = 200
_BAD_NAME_CHARACTERS = '/\\:*?"<>|'


@dataclass(frozen=True)
class QueuedRun:
    """A run in the queue: its name (its checkpoint folder's too), its config and how far it got."""

    name: str
    config: TrainConfig
    status: RunStatus = "queued"


def check_run_name(name: object) -> str:
    """`name` when it can name a queued run and its checkpoint folder; ConfigError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("queue name", name, "expected a name")
    if len(name) > MAX_NAME_CHARS or name.startswith(".") or name != name.strip() \
            or any(c in name for c in _BAD_NAME_CHARACTERS) or any(ord(c) < 32 for c in name):
        raise ConfigError("queue name", name, f"expected a plain name of at most {MAX_NAME_CHARS} characters, not "
                                              f"starting with a dot, without any of {' '.join(_BAD_NAME_CHARACTERS)}")
    return name


def encode_queue(runs: list[QueuedRun]) -> bytes:
    import tomli_w

    tables = [{"name": run.name, "status": run.status, **run.config.to_toml_dict()} for run in runs]
    return tomli_w.dumps({"run": tables}).encode("utf-8")


def write_queue_file(path: Path, runs: list[QueuedRun]) -> None:
    """Write the queue to `path` atomically (readers see the old file or the whole new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, [encode_queue(runs)])


def read_queue_file(path: Path) -> list[QueuedRun]:
    """The runs of a queue file; ConfigError names the file, the run and the option that is wrong."""
    data = read_bounded(path, option="queue file", limit=MAX_QUEUE_FILE_BYTES,
                        hint="not a queue this program wrote")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError("queue file", str(path), f"not valid TOML: {error}") from None
    entries = document.get("run", [])
    if not isinstance(entries, list) or set(document) - {"run"}:
        raise ConfigError("queue file", str(path), "expected only [[run]] tables")
    if len(entries) > MAX_QUEUED_RUNS:
        raise ConfigError("queue file", str(path), f"{len(entries)} runs; a queue holds at most {MAX_QUEUED_RUNS}")
    return [_decode_run(number, entry) for number, entry in enumerate(entries, start=1)]


def _decode_run(number: int, entry: object) -> QueuedRun:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"queue run {number}", entry, "needs a name")
    name = check_run_name(entry["name"])
    status = entry.get("status", "queued")
    if status not in STATUSES:
        raise ConfigError(f"queue run {name!r}: status", status, f"expected one of {list(STATUSES)}")
    values = {key: value for key, value in entry.items() if key not in ("name", "status")}
    try:
        config = TrainConfig.from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"queue run {name!r}: {error.key}", error.value, error.reason) from None
    return QueuedRun(name, config, cast(RunStatus, status))


def set_aside(path: Path) -> Path | None:
    """Rename an unreadable queue file to `<name>.unreadable-<time>` beside it (kept for the user); None when it
    cannot be renamed either."""
    target = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    with contextlib.suppress(OSError):
        path.rename(target)
        return target
    return None
