"""A queue of training runs, executed one after another in one job, each with its own result or error.

Runs are named by their output name: two queued runs that would write the same file are refused when added.
A failed run is recorded and the next one starts; a stop ends the current run (saving what it learned, as a
single run does) and skips the rest. The queue can be saved to and loaded from a TOML file (`[[run]]` tables
holding each config's options), so it outlives a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import LoraStudioError
from ..jobs import JobCancelled
from .config import TrainConfig
from .errors import ConfigError
from .loop import TrainResult, TrainRun
from .outputs import check_run_outputs

if TYPE_CHECKING:
    from ..hosts.base import Host
    from ..jobs import GpuGate, JobControl

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (A1111's): the same parser from PyPI
    import tomli as tomllib

OutcomeStatus = Literal["done", "stopped", "failed", "skipped"]


@dataclass(frozen=True)
class QueuedRun:
    name: str
    config: TrainConfig


@dataclass(frozen=True)
class QueueOutcome:
    """How one queued run ended: its result (done/stopped) or its error (failed), or skipped after a stop."""

    name: str
    status: OutcomeStatus
    result: TrainResult | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.status in ("done", "stopped") and self.result is not None:
            return f"{self.name}: {self.result.summary()}"
        return f"{self.name}: {self.status}" + (f" — {self.error}" if self.error else "")


class TrainQueue:
    """Runs waiting to train; thread-safe to add to and remove from while `run_all` works through it."""

    def __init__(self, runs: list[QueuedRun] | None = None) -> None:
        self._lock = threading.Lock()
        self._runs: list[QueuedRun] = []
        for run in runs or []:
            self.add(run.config, name=run.name)

    @property
    def runs(self) -> list[QueuedRun]:
        with self._lock:
            return list(self._runs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def add(self, config: TrainConfig, *, name: str | None = None) -> QueuedRun:
        """Queue `config` under `name` (its output name by default); a name or output already queued is refused, and
        so is an output name its output_dir's file system cannot hold (checked again, with the folder, at its start)."""
        name = name or config.run.output_name
        if config.run.output_dir is not None:
            check_run_outputs(config, config.run.output_dir, writable=False)
        with self._lock:
            for queued in self._runs:
                if queued.name == name:
                    raise ConfigError("output_name", name, "a run of that name is already queued")
                if _same_output(queued.config, config):
                    raise ConfigError("output_name", config.run.output_name,
                                      f"the queued run {queued.name!r} writes the same file")
            run = QueuedRun(name, config)
            self._runs.append(run)
            return run

    def remove(self, name: str) -> None:
        """Take the run `name` off the queue (KeyError if it is not queued)."""
        with self._lock:
            for index, run in enumerate(self._runs):
                if run.name == name:
                    del self._runs[index]
                    return
        raise KeyError(name)

    def _pop(self) -> QueuedRun | None:
        with self._lock:
            return self._runs.pop(0) if self._runs else None

    def run_all(self, host_provider: Callable[[], Host], control: JobControl | None = None, *,
                output_dir: Path | None = None, gpu: GpuGate | None = None) -> list[QueueOutcome]:
        """Train every queued run in order (runs added meanwhile too) on the host the provider gives at each
        run's start; one outcome per run."""
        outcomes: list[QueueOutcome] = []
        stopped = False
        while (queued := self._pop()) is not None:
            if stopped:
                outcomes.append(QueueOutcome(queued.name, "skipped"))
                continue
            if control is not None:
                control.progress(queue_name=queued.name, queue_done=len(outcomes),
                                 queue_total=len(outcomes) + 1 + len(self))
            try:
                run = TrainRun(queued.config, host_provider(), output_dir=output_dir, gpu=gpu)
                result = run.run(control)
            except JobCancelled:  # stopped before its first step: nothing to save
                outcomes.append(QueueOutcome(queued.name, "stopped"))
            except LoraStudioError as error:
                outcomes.append(QueueOutcome(queued.name, "failed", error=str(error)))
            except Exception as error:  # a bug in one run must not lose the others: recorded with its type
                outcomes.append(QueueOutcome(queued.name, "failed", error=f"{type(error).__name__}: {error}"))
            else:
                status: OutcomeStatus = "stopped" if result.cancelled else "done"
                outcomes.append(QueueOutcome(queued.name, status, result=result))
            stopped = stopped or (control is not None and control.cancelled)
        return outcomes

    # --- persistence -----------------------------------------------------------------------------------------------
    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({"run": [{"name": run.name, **run.config.to_toml_dict()} for run in self.runs]})

    def save(self, path: str | Path) -> None:
        """Write the queue to a TOML file atomically."""
        from ..atomic import write_atomically

        write_atomically(Path(path), [self.to_toml().encode("utf-8")])

    @classmethod
    def load(cls, path: str | Path) -> TrainQueue:
        """A queue from a file written by `save`; ConfigError names the run and the option that is wrong."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError("queue file", str(path), f"cannot read it: {error.strerror or error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError("queue file", str(path), f"not valid TOML: {error}") from None
        entries = data.get("run", [])
        if not isinstance(entries, list) or set(data) - {"run"}:
            raise ConfigError("queue file", str(path), "expected only [[run]] tables")
        queue = cls()
        for number, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"queue run {number}", entry, "needs a name")
            values = {k: v for k, v in entry.items() if k != "name"}
            try:
                config = TrainConfig.from_dict(values)
            except ConfigError as error:
                raise ConfigError(f"queue run {entry['name']!r}: {error.key}", error.value, error.reason) from None
            queue.add(config, name=entry["name"])
        return queue


def _same_output(a: TrainConfig, b: TrainConfig) -> bool:
    return a.run.output_name == b.run.output_name and a.run.output_dir == b.run.output_dir
