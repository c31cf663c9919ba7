"""The Train tab's queue: add the form's run, list, reorder, remove, and run or continue them all in turn.

The queue is the trainer's TrainQueue kept in `<work dir>/train/queue.toml`, written after every change, so it
outlives a restart of the WebUI or the app. Runs are trained one at a time inside one background job; each is an
ordinary TrainRun that the tab's Stop and Save now act on, writing checkpoints as it goes. A run cut off by a
restart, or stopped, stays first in the queue and continues from its last checkpoint when the queue is continued.
Nothing starts by itself: the page only shows what is waiting. A queue file that cannot be read is set aside under
a new name (kept) and an empty queue starts; the tab says where the file went.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import LoraStudioError
from ...jobs import Job, JobControl
from ...train.checkpoints import DEFAULT_EVERY_N_STEPS
from ...train.errors import ConfigError
from ...train.loop import TrainResult, TrainRun
from ...train.queue import QueueOutcome, TrainQueue
from ...train.queue_store import QueuedRun, set_aside
from ...wording import escape_markdown

if TYPE_CHECKING:
    from .session import OwnFields, TrainSession

QUEUE_FILE = "queue.toml"
RUN_LABEL = "Run the queue"
CONTINUE_LABEL = "Continue the queue"
WAITING = ("Nothing starts by itself when the WebUI or the app starts: press **{label}** to train these runs. "
           f"A run writes a checkpoint every {DEFAULT_EVERY_N_STEPS} steps and when stopped, so one cut off by a "
           "restart continues from there.")


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
        self._notice: str | None = None

    @property
    def path(self) -> Path:
        return self.session.context.work_dir() / "train" / QUEUE_FILE

    def queue(self) -> TrainQueue:
        """The queue, read from its file on first use; an unreadable file is set aside (kept) and noted once."""
        if self._queue is None:
            try:
                self._queue = TrainQueue.open(self.path)
            except ConfigError as error:
                kept = set_aside(self.path)
                if kept is None:
                    raise
                self._notice = (f"The queue file could not be read ({escape_markdown(str(error))}); it is kept as "
                                f"`{kept}` and the queue starts empty.")
                self._queue = TrainQueue(path=self.path)
        return self._queue

    def listing(self) -> dict[str, Any]:
        """The queued runs with how far each got, the picker's choices, and the run button's label."""
        import gradio as gr

        queue = self.queue()
        runs = queue.runs
        lines = [f"{index}. **{escape_markdown(run.name)}** — {self._state(queue, run)}; "
                 f"{escape_markdown(_describe(run.config))}" for index, run in enumerate(runs, start=1)]
        resumable = any(run.status != "queued" for run in runs)
        label = CONTINUE_LABEL if resumable else RUN_LABEL
        text = "\n".join(lines) or "The queue is empty."
        if runs and queue.running is None:
            text += "\n\n" + WAITING.format(label=label)
        if self._notice:
            text = f"{self._notice}\n\n{text}"
        return {"queue_list": text, "queue_pick": gr.update(choices=[run.name for run in runs], value=None),
                "queue_run": gr.update(value=label)}

    @staticmethod
    def _state(queue: TrainQueue, run: QueuedRun) -> str:
        if run.name == queue.running:
            return "training now"
        step = queue.progress_of(run.name)
        at = f" at step {step}" if step is not None else ""
        if run.status == "started":
            return f"interrupted{at}, continues from its checkpoint" if step else "interrupted before a checkpoint"
        if run.status == "stopped":
            return f"stopped{at}, continues from there"
        return "waiting"

    def add(self, own: OwnFields, values: Mapping[str, Any]) -> dict[str, Any]:
        """Queue the form's run (checked as Start checks it; its sample prompt file is written now)."""
        config = self.session.prepare(own, values)
        self.queue().add(config)
        return {**self.listing(), "status": f"Queued **{escape_markdown(config.run.output_name)}**."}

    def remove(self, name: str | None) -> dict[str, Any]:
        """Take the picked run off the queue (its checkpoints go too; LoRA files it saved stay)."""
        name = self._picked(name)
        self.queue().remove(name)
        return {**self.listing(), "status": f"Removed **{escape_markdown(name)}** from the queue."}

    def move(self, name: str | None, offset: int) -> dict[str, Any]:
        """Move the picked run up (offset -1) or down (+1); it stays picked."""
        import gradio as gr

        name = self._picked(name)
        index = self.queue().move(name, offset)
        return {**self.listing(), "queue_pick": gr.update(choices=[run.name for run in self.queue().runs],
                                                          value=name),
                "status": f"**{escape_markdown(name)}** is number {index + 1} in the queue."}

    def _picked(self, name: str | None) -> str:
        if not name:
            raise LoraStudioError("Pick a queued run first.")
        if name not in {run.name for run in self.queue().runs}:
            raise LoraStudioError(f"{name} is not queued (any more).")
        return name

    def start(self) -> Job[Any]:
        """Run (or continue) the queue in one background job (refused while a run goes or the model is busy)."""
        if not self.queue().runs:
            raise LoraStudioError("The queue is empty: add runs with “Add to queue” first.")
        return self.session.start_job("training queue", self._work)

    def _work(self, control: JobControl) -> QueueResult:
        session = self.session

        def before_run(run: TrainRun) -> None:
            session.run = run
            session.release_host_loras()
            control.progress(message=f"queue: {run.config.run.output_name}")

        outcomes = self.queue().run_all(session.host, control, output_dir=session.context.trained_dir(),
                                        gpu=session.context.gpu, cache_dir=session.cache_dir(), before_run=before_run)
        outcome = QueueResult(lines=[_line(item, self.queue()) for item in outcomes if item.status != "skipped"])
        outcome.results = [item.result for item in outcomes if item.result is not None]
        outcome.left = len(self.queue())
        return outcome


def _line(outcome: QueueOutcome, queue: TrainQueue) -> str:
    name = outcome.name
    if outcome.status == "failed":
        return f"{name}: failed — {outcome.error}"
    if outcome.result is None:
        return f"{name}: stopped before its first step, nothing written"
    kept = outcome.status == "stopped" and any(run.name == name for run in queue.runs)
    return f"{name}: {outcome.result.summary()}" + ("; it stays first in the queue and continues from there"
                                                      if kept else "")


def _describe(config: Any) -> str:
    run, data, network, optimizer = config.run, config.data, config.network, config.optimizer
    length = f"{run.max_train_epochs} epochs" if run.max_train_epochs else f"{run.max_train_steps} steps"
    return (f"{data.train_data_dir}, dim {network.network_dim}/{network.network_alpha:g}, "
            f"{optimizer.optimizer_type} {optimizer.learning_rate:g}, {length}")
