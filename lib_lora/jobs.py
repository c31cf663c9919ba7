"""Long work (grids, tagging, training) run in a background thread that the UI polls: progress, cancel, one GPU.

Pure core, no gradio: a `Job` runs `work(control)` in a thread; the work reports through `control.progress(...)`
and calls `control.check()` between units, which raises `JobCancelled` once `cancel()` was asked. The UI polls
`Job.snapshot()` (a frozen copy, safe to read from any thread); `partial` is the share of the current unit done
(a sampling step of an image), so the percentage and the ETA move within a unit. `GpuGate` is the one lock on the
loaded model: a training run holds it for its whole length, and generation asked for meanwhile is refused with a
message naming the holder and how to stop it, instead of waiting behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Iterator, Literal, TypeVar

from .errors import LoraStudioError

__all__ = ["GpuBusyError", "GpuGate", "Job", "JobCancelled", "JobControl", "JobSnapshot", "JobState"]

T = TypeVar("T")
JobState = Literal["idle", "running", "cancelling", "done", "cancelled", "failed"]


class JobCancelled(LoraStudioError):
    """The user cancelled the job; raised by `JobControl.check()` inside the work."""


class GpuBusyError(LoraStudioError):
    """The loaded model is in use by another job (a training run); the message says which."""


@dataclass(frozen=True)
class JobSnapshot:
    """What a job is doing, as the UI shows it. `fraction` is None while the total is unknown; `partial` (0..1)
    is how far the unit after `done` has got."""

    name: str
    state: JobState = "idle"
    done: int = 0
    total: int | None = None
    partial: float = 0.0
    message: str = ""
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.progressed / self.total)

    @property
    def progressed(self) -> float:
        """Units done, the current one's share included."""
        return self.done + (self.partial if self.active else 0.0)

    @property
    def active(self) -> bool:
        return self.state in ("running", "cancelling")

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    @property
    def eta(self) -> float | None:
        """Seconds left at the average pace so far, or None before anything (a unit, or a step of one) is done."""
        if not self.active or not self.total or self.progressed <= 0:
            return None
        return self.elapsed / self.progressed * max(self.total - self.progressed, 0.0)

    def describe(self) -> str:
        """One line: state, `done/total`, percent, ETA, message, error."""
        parts = [self.state]
        if self.total:
            parts.append(f"{self.done}/{self.total} ({100 * (self.fraction or 0):.0f}%)")
        if self.eta is not None:
            parts.append(f"ETA {self.eta:.0f}s")
        if self.message:
            parts.append(self.message)
        if self.error:
            parts.append(self.error)
        return " · ".join(parts)


class JobControl:
    """Handed to the work: report progress, check for cancel."""

    def __init__(self, job: Job[Any]) -> None:
        self._job = job

    @property
    def cancelled(self) -> bool:
        return self._job._cancel.is_set()

    def check(self) -> None:
        """Raise JobCancelled if cancel was asked; call it between units of work."""
        if self._job._cancel.is_set():
            raise JobCancelled(f"{self._job.name} cancelled")

    def progress(self, done: int | None = None, total: int | None = None, message: str | None = None, *,
                 partial: float | None = None, **extra: Any) -> None:
        """Update what the UI shows; arguments left out keep their value (`partial` drops to 0 when `done` is
        given without it), `extra` items are merged."""
        self._job._update(done=done, total=total, message=message, partial=partial, extra=extra)


class Job(Generic[T]):
    """One background run of `work(control) -> T`; start it once, poll `snapshot()`, `cancel()` any time."""

    def __init__(self, name: str, work: Callable[[JobControl], T]) -> None:
        self.name = name
        self._work = work
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._snapshot = JobSnapshot(name=name)
        self._thread: threading.Thread | None = None

    def start(self) -> Job[T]:
        """Run the work in a daemon thread; a job starts once."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"job {self.name!r} was already started")
            self._snapshot = replace(self._snapshot, state="running", started=time.monotonic())
            self._thread = threading.Thread(target=self._run, name=f"lora-studio-{self.name}", daemon=True)
        self._thread.start()
        return self

    def run_here(self) -> T:
        """Run the work in this thread (CLI, tests); re-raises its error after recording it."""
        with self._lock:
            self._snapshot = replace(self._snapshot, state="running", started=time.monotonic())
        self._run()
        snapshot = self.snapshot()
        if snapshot.state == "failed":
            raise self._error  # type: ignore[misc]
        if snapshot.state == "cancelled":
            raise JobCancelled(f"{self.name} cancelled")
        return snapshot.result

    def cancel(self) -> None:
        """Ask the work to stop at its next `check()`."""
        self._cancel.set()
        with self._lock:
            if self._snapshot.state == "running":
                self._snapshot = replace(self._snapshot, state="cancelling")

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        """Block until the thread ends (or `timeout`); returns the snapshot."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return self._snapshot

    def _update(self, *, done: int | None, total: int | None, message: str | None, partial: float | None,
                extra: dict[str, Any]) -> None:
        with self._lock:
            s = self._snapshot
            if partial is None:
                partial = s.partial if done is None else 0.0
            self._snapshot = replace(
                s,
                done=s.done if done is None else done,
                partial=min(max(float(partial), 0.0), 1.0),
                total=s.total if total is None else total,
                message=s.message if message is None else message,
                extra={**s.extra, **extra} if extra else s.extra,
            )

    def _run(self) -> None:
        control = JobControl(self)
        state: JobState
        error: str | None = None
        result: Any = None
        self._error: BaseException | None = None
        try:
            result = self._work(control)
            state = "done"
        except JobCancelled:
            state = "cancelled"
        except LoraStudioError as exc:
            state, error, self._error = "failed", str(exc), exc
        except Exception as exc:  # a bug: keep the type in the message, the traceback in _error
            state, error, self._error = "failed", f"{type(exc).__name__}: {exc}", exc
        with self._lock:
            self._snapshot = replace(self._snapshot, state=state, error=error, result=result,
                                     finished=time.monotonic())


class GpuGate:
    """One holder of the loaded model at a time; others are refused at once with the holder's name and how to
    stop it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: str | None = None
        self._stop = ""

    @property
    def holder(self) -> str | None:
        return self._holder

    def busy_message(self) -> str:
        """What holds the model and how to stop it ("" when nothing does)."""
        holder, stop = self._holder, self._stop
        if holder is None:
            return ""
        return f"the model is busy with {holder}; {stop or 'wait for it or stop it'}"

    @contextmanager
    def hold(self, purpose: str, *, stop: str = "") -> Iterator[None]:
        """Hold the model for `purpose` ("training", "an XY grid in the Block Weight tab"); `stop` tells others how
        to stop it ("press Cancel under the XY grid"). GpuBusyError if someone else holds it."""
        if not self._lock.acquire(blocking=False):
            raise GpuBusyError(self.busy_message() or "the model is busy with another job; wait for it or stop it")
        self._holder, self._stop = purpose, stop
        try:
            yield
        finally:
            self._holder, self._stop = None, ""
            self._lock.release()
