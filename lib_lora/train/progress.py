"""What a running training reports after each step: loss, its curve, speed, ETA, memory, the last sample and save.

Pure bookkeeping: `ProgressTracker.step(...)` turns one optimizer step into a `TrainProgress`, which the run
hands to `JobControl.progress(...)` (its fields as `extra`, so the Train tab can poll them) and to listeners.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CURVE_POINTS = 200
"""The loss curve sent to the UI has at most this many points (means of consecutive steps)."""


@dataclass(frozen=True)
class TrainProgress:
    """One step's report. `epoch` counts from 1; speeds and ETA are None until measured."""

    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    loss: float
    loss_avg: float
    lr: float | None
    it_per_s: float | None
    eta_s: float | None
    memory_bytes: int | None
    sample: str | None = None
    saved: str | None = None
    loss_curve: tuple[tuple[int, float], ...] = ()

    @property
    def message(self) -> str:
        parts = [f"step {self.step}/{self.total_steps}", f"epoch {self.epoch}/{self.total_epochs}",
                 f"loss {self.loss_avg:.4f}"]
        if self.it_per_s:
            parts.append(f"{self.it_per_s:.2f} it/s")
        if self.eta_s is not None:
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        return " · ".join(parts)

    def as_extra(self) -> dict[str, Any]:
        """The fields as JobControl.progress keywords (paths as strings, the curve as a list of pairs)."""
        extra = asdict(self)
        extra["loss_curve"] = [list(point) for point in self.loss_curve]
        return extra


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class ProgressTracker:
    """Loss average (exponential, like sd-scripts' progress bar), steps per second over the recent steps, ETA."""

    total_steps: int
    total_epochs: int
    smoothing: float = 0.9
    losses: list[float] = field(default_factory=list)
    _avg: float | None = None
    _times: list[float] = field(default_factory=list)
    _curve: tuple[tuple[int, float], ...] = ()
    _curve_at: int = -1
    sample: str | None = None
    saved: str | None = None

    def restore(self, losses: list[float]) -> None:
        """Continue a resumed run's history."""
        self.losses = list(losses)
        for loss in losses:
            self._average(loss)

    def _average(self, loss: float) -> float:
        self._avg = loss if self._avg is None else self.smoothing * self._avg + (1 - self.smoothing) * loss
        return self._avg

    def step(self, *, step: int, epoch: int, loss: float, lr: float | None, memory_bytes: int | None,
             now: float | None = None) -> TrainProgress:
        now = time.monotonic() if now is None else now
        self.losses.append(loss)
        avg = self._average(loss)
        self._times = (self._times + [now])[-21:]
        speed = None
        if len(self._times) >= 2 and self._times[-1] > self._times[0]:
            speed = (len(self._times) - 1) / (self._times[-1] - self._times[0])
        eta = (self.total_steps - step) / speed if speed else None
        return TrainProgress(step=step, total_steps=self.total_steps, epoch=epoch, total_epochs=self.total_epochs,
                             loss=loss, loss_avg=avg, lr=lr, it_per_s=speed, eta_s=eta, memory_bytes=memory_bytes,
                             sample=self.sample, saved=self.saved, loss_curve=self.curve(step))

    def curve(self, step: int) -> tuple[tuple[int, float], ...]:
        """(step, mean loss) points, at most CURVE_POINTS; rebuilt every total/CURVE_POINTS steps and at the end."""
        every = max(1, self.total_steps // CURVE_POINTS)
        if step != self._curve_at and (step % every == 0 or step >= self.total_steps or not self._curve):
            self._curve = downsample(self.losses, CURVE_POINTS)
            self._curve_at = step
        return self._curve


def downsample(losses: list[float], points: int) -> tuple[tuple[int, float], ...]:
    """Means of consecutive runs of `losses` (step numbers from 1), at most `points` of them."""
    if not losses:
        return ()
    width = max(1, -(-len(losses) // points))
    out = []
    for start in range(0, len(losses), width):
        chunk = losses[start:start + width]
        out.append((start + len(chunk), sum(chunk) / len(chunk)))
    return tuple(out)


def path_text(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclass(frozen=True)
class PrepProgress:
    """One report of a preparation phase (scanning images, caching latents or text-encoder outputs)."""

    phase: str
    done: int
    total: int
    per_s: float | None
    eta_s: float | None

    @property
    def message(self) -> str:
        parts = [f"{self.phase} {self.done:,}/{self.total:,}"]
        if self.total:
            parts[0] += f" ({100 * self.done // self.total}%)"
        if self.per_s:
            parts.append(f"{self.per_s:,.0f}/s" if self.per_s >= 10 else f"{self.per_s:.1f}/s")
        if self.eta_s is not None and self.done < self.total:
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        return " · ".join(parts)

    def as_extra(self) -> dict[str, Any]:
        """JobControl.progress keywords; prefixed so that they never stand for a training step's fields."""
        return {"prep_phase": self.phase, "prep_per_s": self.per_s, "prep_eta_s": self.eta_s}


@dataclass
class PrepMeter:
    """Rate and ETA of one phase over its recent updates (a window, so a slow start does not skew the ETA)."""

    phase: str
    total: int
    window: int = 20
    _points: list[tuple[float, int]] = field(default_factory=list)

    def update(self, done: int, *, now: float | None = None) -> PrepProgress:
        now = time.monotonic() if now is None else now
        self._points = (self._points + [(now, done)])[-self.window:]
        (start, first), (end, last) = self._points[0], self._points[-1]
        per_s = (last - first) / (end - start) if end > start and last > first else None
        eta = (self.total - done) / per_s if per_s else None
        return PrepProgress(self.phase, done, self.total, per_s, eta)
