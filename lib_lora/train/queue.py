"""A queue of training runs, executed one after another in one job, each with its own result or error.

Runs are named by their output name: two queued runs that would write the same file are refused when added. A
run stays in the queue while it trains and leaves it when it is done or has failed (a failure is recorded and the
next run starts). A stop ends the current run (saving what it learned, as a single run does) and the queue; the
runs after it stay queued.

A queue opened on a file (`TrainQueue.open`) writes the file atomically on every change and survives a restart:
each run writes state checkpoints as it trains (checkpoints.py, into `checkpoints/<name>/` beside the file), so a
run cut off by a crash or a closed WebUI, or stopped, continues from its newest whole checkpoint with the same
step, epoch, scheduler and random states, and ends with the weights it would have had. Nothing starts by itself:
`run_all` is called when the user asks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import LoraStudioError
from ..jobs import JobCancelled
from .checkpoints import (
    DEFAULT_EVERY_N_STEPS,
    DEFAULT_KEEP,
    CheckpointPolicy,
    clear_checkpoints,
    latest_checkpoint,
    list_checkpoints,
)
from .config import TrainConfig
from .errors import ConfigError
from .loop import TrainResult, TrainRun
from .outputs import check_run_outputs
from .queue_store import MAX_QUEUED_RUNS, QueuedRun, RunStatus, check_run_name, read_queue_file, write_queue_file

if TYPE_CHECKING:
    from ..hosts.base import Host
    from ..jobs import GpuGate, JobControl

__all__ = ["QueueBusyError", "QueueOutcome", "QueuedRun", "TrainQueue"]

OutcomeStatus = Literal["done", "stopped", "failed", "skipped"]
CHECKPOINT_FOLDER = "checkpoints"


class QueueBusyError(LoraStudioError):
    """The queue cannot do that to the run that is training now."""


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
    """Runs waiting to train; thread-safe to change while `run_all` works through it."""

    def __init__(self, runs: list[QueuedRun] | None = None, *, path: Path | None = None) -> None:
        self._lock = threading.RLock()
        self._runs: list[QueuedRun] = []
        self.path = path
        """The file the queue is kept in (None: in memory only, and no checkpoints)."""
        self.running: str | None = None
        """The name of the run `run_all` is training now."""
        for run in runs or []:
            self._insert(run)

    @classmethod
    def open(cls, path: str | Path) -> TrainQueue:
        """The queue kept in `path` (empty when there is no file yet); ConfigError when the file is unreadable."""
        path = Path(path)
        runs = read_queue_file(path) if path.is_file() else []
        return cls(runs, path=path)

    @property
    def runs(self) -> list[QueuedRun]:
        with self._lock:
            return list(self._runs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def _changed(self) -> None:
        if self.path is not None:
            write_queue_file(self.path, self._runs)

    def _insert(self, run: QueuedRun) -> None:
        check_run_name(run.name)
        if len(self._runs) >= MAX_QUEUED_RUNS:
            raise ConfigError("queue", run.name, f"the queue is full ({MAX_QUEUED_RUNS} runs): run or remove some")
        for queued in self._runs:
            if queued.name == run.name:
                raise ConfigError("output_name", run.name, "a run of that name is already queued")
            if _same_output(queued.config, run.config):
                raise ConfigError("output_name", run.config.run.output_name,
                                  f"the queued run {queued.name!r} writes the same file")
        self._runs.append(run)

    def add(self, config: TrainConfig, *, name: str | None = None) -> QueuedRun:
        """Queue `config` under `name` (its output name by default); a name or output already queued is refused, and
        so is an output name its output_dir's file system cannot hold (checked again, with the folder, at its start)."""
        name = name or config.run.output_name
        if config.run.output_dir is not None:
            check_run_outputs(config, config.run.output_dir, writable=False)
        with self._lock:
            run = QueuedRun(name, config)
            self._insert(run)
            try:
                self._changed()
            except BaseException:
                self._runs.remove(run)
                raise
            return run

    def remove(self, name: str) -> QueuedRun:
        """Take the run `name` off the queue with its checkpoints (KeyError if it is not queued; QueueBusyError
        while it trains)."""
        with self._lock:
            if name == self.running:
                raise QueueBusyError(f"{name} is training now: stop it first, then remove it.")
            index = self._index(name)
            run = self._runs.pop(index)
            try:
                self._changed()
            except BaseException:
                self._runs.insert(index, run)
                raise
        folder = self.checkpoint_folder(name)
        if folder is not None:
            clear_checkpoints(folder)
        return run

    def move(self, name: str, offset: int) -> int:
        """Move the run `name` `offset` places (negative: earlier), kept inside the queue; its new index."""
        with self._lock:
            index = self._index(name)
            target = max(0, min(len(self._runs) - 1, index + offset))
            if target != index:
                self._runs.insert(target, self._runs.pop(index))
                self._changed()
            return target

    def _index(self, name: str) -> int:
        for index, run in enumerate(self._runs):
            if run.name == name:
                return index
        raise KeyError(name)

    def _set_status(self, name: str, status: RunStatus) -> None:
        with self._lock:
            index = self._index(name)
            if self._runs[index].status != status:
                self._runs[index] = replace(self._runs[index], status=status)
                self._changed()

    def _finish(self, name: str) -> None:
        """A run that is done or failed leaves the queue, its checkpoints deleted."""
        with self._lock:
            self._runs.pop(self._index(name))
            self._changed()
        folder = self.checkpoint_folder(name)
        if folder is not None:
            clear_checkpoints(folder)

    # --- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_folder(self, name: str) -> Path | None:
        """Where the run `name` keeps its checkpoints (None for a queue in memory only)."""
        return None if self.path is None else self.path.parent / CHECKPOINT_FOLDER / name

    def progress_of(self, name: str) -> int | None:
        """The step of the run's newest checkpoint (not checked to be whole), None when it has none."""
        folder = self.checkpoint_folder(name)
        found = list_checkpoints(folder) if folder is not None else []
        return found[-1][0] if found else None

    def _config_to_run(self, queued: QueuedRun) -> TrainConfig:
        """The run's config, resuming from its newest whole checkpoint when it was started before."""
        folder = self.checkpoint_folder(queued.name)
        if folder is None:
            return queued.config
        if queued.status == "queued":
            clear_checkpoints(folder)  # left by an earlier run of the same name: not this one's
            return queued.config
        latest, notes = latest_checkpoint(folder)
        if latest is None:
            notes.append("no checkpoint was left to continue from: trained again from the start")
            clear_checkpoints(folder)
            return queued.config.with_notes(*notes)
        notes.append(f"continued from its checkpoint {latest.name}")
        return queued.config.with_values(resume=str(latest)).with_notes(*queued.config.notes, *notes)

    # --- running ---------------------------------------------------------------------------------------------------
    def run_all(self, host_provider: Callable[[], Host], control: JobControl | None = None, *,
                output_dir: Path | None = None, gpu: GpuGate | None = None, cache_dir: Path | None = None,
                before_run: Callable[[TrainRun], None] | None = None,
                checkpoint_every_n_steps: int = DEFAULT_EVERY_N_STEPS,
                checkpoint_keep: int = DEFAULT_KEEP) -> list[QueueOutcome]:
        """Train the queued runs in order (runs added meanwhile too), each on the host the provider gives at its
        start, until the queue is empty or a run is stopped; one outcome per run, "skipped" for those left."""
        outcomes: list[QueueOutcome] = []
        while (queued := self._next(exclude={outcome.name for outcome in outcomes})) is not None:
            if control is not None:
                control.progress(queue_name=queued.name, queue_done=len(outcomes),
                                 queue_total=len(outcomes) + len(self))
            policy = None
            folder = self.checkpoint_folder(queued.name)
            if folder is not None:
                policy = CheckpointPolicy(folder, every_n_steps=checkpoint_every_n_steps, keep=checkpoint_keep)
            try:
                host = host_provider()
            except LoraStudioError as error:  # no model: nothing can train, every run stays as it was
                outcomes.append(QueueOutcome(queued.name, "failed", error=f"not started: {error}"))
                break
            else:
                outcomes.append(self._train_one(queued, host, control, policy=policy, output_dir=output_dir,
                                                gpu=gpu, cache_dir=cache_dir, before_run=before_run))
            finally:
                self.running = None
            if outcomes[-1].status == "stopped" or (control is not None and control.cancelled):
                break
        done = {outcome.name for outcome in outcomes}
        return outcomes + [QueueOutcome(run.name, "skipped") for run in self.runs if run.name not in done]

    def _next(self, exclude: set[str]) -> QueuedRun | None:
        """The first run not tried yet in this call (a failed run with progress stays queued), now `running`."""
        with self._lock:
            for run in self._runs:
                if run.name not in exclude:
                    self.running = run.name
                    return run
            return None

    def _train_one(self, queued: QueuedRun, host: Host, control: JobControl | None, *,
                   policy: CheckpointPolicy | None, output_dir: Path | None, gpu: GpuGate | None,
                   cache_dir: Path | None, before_run: Callable[[TrainRun], None] | None) -> QueueOutcome:
        try:
            config = self._config_to_run(queued)
            self._set_status(queued.name, "started")  # on disk before the first step: a kill leaves "started"
            run = TrainRun(config, host, output_dir=output_dir, gpu=gpu, cache_dir=cache_dir, checkpoints=policy)
            if before_run is not None:
                before_run(run)
            result = run.run(control)
        except JobCancelled:  # stopped before its first step: nothing learned, it stays as it was
            self._set_status(queued.name, queued.status)
            return QueueOutcome(queued.name, "stopped")
        except LoraStudioError as error:
            return self._failed(queued, str(error))
        except Exception as error:  # a bug in one run must not lose the others: recorded with its type
            return self._failed(queued, f"{type(error).__name__}: {error}")
        if not result.cancelled:
            self._finish(queued.name)
            return QueueOutcome(queued.name, "done", result=result)
        if policy is not None and latest_checkpoint(policy.folder)[0] is not None:
            self._set_status(queued.name, "stopped")  # stays first: continuing the queue continues it
        else:
            self._finish(queued.name)
        return QueueOutcome(queued.name, "stopped", result=result)

    def _failed(self, queued: QueuedRun, error: str) -> QueueOutcome:
        """A run this call started afresh leaves the queue; one it continued stays, with its checkpoints (another
        model may be loaded than the one it trained on), until the user removes it."""
        if queued.status == "queued":
            self._finish(queued.name)
        else:
            self._set_status(queued.name, queued.status)
            error += "; it stays in the queue with its checkpoints (remove it to drop them)"
        return QueueOutcome(queued.name, "failed", error=error)

    # --- files -----------------------------------------------------------------------------------------------------
    def to_toml(self) -> str:
        from .queue_store import encode_queue

        return encode_queue(self.runs).decode("utf-8")

    def save(self, path: str | Path) -> None:
        """Write the queue to a TOML file atomically."""
        write_queue_file(Path(path), self.runs)

    @classmethod
    def load(cls, path: str | Path) -> TrainQueue:
        """A queue in memory from a file written by `save`; ConfigError names the run and the option that is wrong."""
        return cls(read_queue_file(Path(path)))


def _same_output(a: TrainConfig, b: TrainConfig) -> bool:
    return a.run.output_name == b.run.output_name and a.run.output_dir == b.run.output_dir
