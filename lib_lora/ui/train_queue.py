"""The Train tab's queue: add the form's run, list, remove, run them all one after another.

The queue is the trainer's TrainQueue, saved to `<work dir>/train/queue.toml` after every change so it outlives a
restart. Runs are taken from it one at a time inside one background job; each is an ordinary TrainRun that the
tab's Stop and Save now act on. Stop ends the current run (saving what it learned) and leaves the rest queued; a
run that fails is reported and the next one starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LoraStudioError
from ..jobs import Job, JobCancelled, JobControl
from ..train.loop import TrainResult, TrainRun
from ..train.queue import TrainQueue
from .common import escape_markdown

if TYPE_CHECKING:
    from .train_session import OwnFields, TrainSession

QUEUE_FILE = "queue.toml"


@dataclass
class QueueResult:
    """What a queue job did: one line per run (done, stopped, failed), and the runs left queued after a stop."""

    lines: list[str] = field(default_factory=list)
    results: list[TrainResult] = field(default_factory=list)
    left: int = 0

    def summary(self) -> str:
        text = "\n".join(f"- {escape_markdown(line)}" for line in self.lines) or "- nothing was queued"
        if self.left:
            text += f"\n\n{self.left} run(s) left in the queue."
        return f"**Queue finished:**\n{text}"


class QueuePanel:
    """Queue handlers over a TrainSession (its job slot, so Stop and Save now work on queued runs too)."""

    def __init__(self, session: TrainSession) -> None:
        self.session = session
        self._queue: TrainQueue | None = None

    @property
    def path(self) -> Path:
        return self.session.context.work_dir() / "train" / QUEUE_FILE

    def queue(self) -> TrainQueue:
        """The queue, read from its file on first use (a file that cannot be read is an error shown once)."""
        if self._queue is None:
            self._queue = TrainQueue.load(self.path) if self.path.is_file() else TrainQueue()
        return self._queue

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.queue().save(self.path)

    def listing(self) -> dict[str, Any]:
        """The queued runs as a list, and the remove picker's choices."""
        import gradio as gr

        runs = self.queue().runs
        lines = [f"{index}. **{escape_markdown(run.name)}** — {escape_markdown(_describe(run.config))}"
                 for index, run in enumerate(runs, start=1)]
        return {"queue_list": "\n".join(lines) or "The queue is empty.",
                "queue_pick": gr.update(choices=[run.name for run in runs], value=None)}

    def add(self, own: OwnFields, values: Mapping[str, Any]) -> dict[str, Any]:
        """Queue the form's run (checked as Start checks it; its sample prompt file is written now)."""
        config = self.session.prepare(own, values)
        self.queue().add(config)
        self._save()
        return {**self.listing(), "status": f"Queued **{escape_markdown(config.run.output_name)}**."}

    def remove(self, name: str | None) -> dict[str, Any]:
        if not name:
            raise LoraStudioError("Pick a queued run to remove.")
        try:
            self.queue().remove(name)
        except KeyError:
            raise LoraStudioError(f"{name} is not queued (any more).") from None
        self._save()
        return {**self.listing(), "status": f"Removed **{escape_markdown(name)}** from the queue."}

    def start(self) -> Job[Any]:
        """Run the queue in one background job (refused while a run goes or the model is busy)."""
        if not self.queue().runs:
            raise LoraStudioError("The queue is empty: add runs with “Add to queue” first.")
        return self.session.start_job("training queue", self._work)

    def _work(self, control: JobControl) -> QueueResult:
        session = self.session
        outcome = QueueResult()
        total = len(self.queue())
        while self.queue().runs:
            queued = self.queue().runs[0]
            self.queue().remove(queued.name)
            self._save()
            control.progress(message=f"run {len(outcome.lines) + 1}/{total}: {queued.name}", queue_name=queued.name)
            try:
                run = TrainRun(queued.config, session.host(), output_dir=session.context.trained_dir(),
                               gpu=session.context.gpu, cache_dir=session.cache_dir())
                session.run = run
                session.release_host_loras()
                result = run.run(control)
            except JobCancelled:
                outcome.lines.append(f"{queued.name}: stopped before its first step, nothing written")
                break
            except LoraStudioError as error:
                outcome.lines.append(f"{queued.name}: failed — {error}")
                continue
            outcome.results.append(result)
            outcome.lines.append(f"{queued.name}: {result.summary()}")
            if result.cancelled:
                break
        outcome.left = len(self.queue())
        return outcome


def _describe(config: Any) -> str:
    run, data, network, optimizer = config.run, config.data, config.network, config.optimizer
    length = f"{run.max_train_epochs} epochs" if run.max_train_epochs else f"{run.max_train_steps} steps"
    return (f"{data.train_data_dir}, dim {network.network_dim}/{network.network_alpha:g}, "
            f"{optimizer.optimizer_type} {optimizer.learning_rate:g}, {length}")
