"""The Block Weight tab's renders: one image, the XY grid and the effective-block analyzer.

One LoraSession per host (`session_for`: a new host object gets a new session). A single image renders in the
event; grids and analyses run as a `jobs.Job` in a thread while a generator event polls it and yields its
progress line (gradio 3.41 and 4.x alike, no timer), and a Cancel button stops it between images. Every render
holds the context's GPU gate; a busy model is a message.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..blocks.analyze import AnalyzeSpec, analyze_blocks
from ..blocks.apply import LoraLibrary
from ..blocks.grid import Axis, GridSpec, check_plan, new_output_path, plan_grid, run_grid
from ..blocks.presets import FAMILY_TITLES, FULL_LENGTH, family_of, parse_vector
from ..blocks.session import LoraSession, session_for
from ..blocks.syntax import format_call
from ..errors import LoraStudioError
from ..hosts.base import GenerationRequest
from ..jobs import Job, JobControl, JobSnapshot
from .blocks_editor import BlockEditor, BlockLayout, block_spec, code_span, copy_tag
from .common import escape_markdown
from .context import StudioContext
from .jobs_ui import POLL_SECONDS, follow

Updates = dict[str, Any]
GRIDS_FOLDER = "grids"


class BlocksUIError(LoraStudioError):
    """The tab cannot do what was asked (no model, model changed, a run already going, bad setting)."""


def _whole(value: Any, name: str, minimum: int) -> int:
    if value is None or value == "":
        raise BlocksUIError(f"{name} is empty")
    number = float(value)
    if not math.isfinite(number) or number != int(number) or number < minimum:
        raise BlocksUIError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return int(number)


@dataclass(frozen=True)
class Settings:
    """The generation settings the three renders share, checked as typed in the page."""

    prompt: str
    negative: str
    seed: int
    steps: int
    cfg: float
    width: int
    height: int

    @classmethod
    def read(cls, prompt: str, negative: str, seed: Any, steps: Any, cfg: Any, width: Any, height: Any) -> Settings:
        if cfg is None or not math.isfinite(float(cfg)):
            raise BlocksUIError(f"CFG scale must be a number, got {cfg!r}")
        settings = cls(prompt or "", negative or "", _whole(seed, "seed", 0), _whole(steps, "steps", 1),
                       float(cfg), _whole(width, "width", 8), _whole(height, "height", 8))
        settings.request(settings.prompt)  # sizes: multiples of 8
        return settings

    def request(self, prompt: str) -> GenerationRequest:
        try:
            return GenerationRequest(prompt=prompt, negative_prompt=self.negative, steps=self.steps,
                                     cfg_scale=self.cfg, width=self.width, height=self.height, seed=self.seed)
        except ValueError as error:
            raise BlocksUIError(str(error)) from None


def warning_lines(warnings: list[str]) -> str:
    """Markdown lines after a status: one ⚠️ line per warning (each once), or "" when there are none."""
    return "".join(f"\n\n⚠️ {escape_markdown(warning)}" for warning in dict.fromkeys(warnings))


class JobSlot:
    """At most one background job of a kind; `cancel()` asks it to stop between images."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._job: Job[Any] | None = None
        self._lock = threading.Lock()

    def start(self, work: Callable[[JobControl], Any]) -> Job[Any]:
        with self._lock:
            if self._job is not None and self._job.snapshot().active:
                raise BlocksUIError(f"the {self.what} is still running ({self._job.snapshot().describe()}); "
                                    "cancel it or wait")
            self._job = Job(self.what, work).start()
            return self._job

    def cancel(self) -> Updates:
        job = self._job
        if job is None or not job.snapshot().active:
            return {"status": f"No {self.what} is running."}
        job.cancel()
        return {"status": f"Cancelling the {self.what} after the current image…"}


class BlockRuns:
    """Renders for the tab: generate, XY grid and analyzer (each a handler over the page's inputs)."""

    def __init__(self, context: StudioContext, editor: BlockEditor, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.context = context
        self.editor = editor
        self.poll_seconds = poll_seconds
        self.grid_slot = JobSlot("XY grid")
        self.analyzer_slot = JobSlot("block analysis")

    def session(self, arch: str) -> LoraSession:
        """The loaded host's session; BlocksUIError without a model or when its family is not the page's."""
        host = self.context.host_provider()
        if host is None:
            raise BlocksUIError("No model is loaded. Load a checkpoint, then press Refresh.")
        if family_of(host.arch) != family_of(arch):
            raise BlocksUIError(f"The loaded model is {host.arch.name.upper()} now; press Refresh to show its blocks.")
        return session_for(host, lambda: LoraLibrary(self.context.lora_dirs()), self.editor.book)

    def _spec(self, vector: str, arch: str, preset: str | None) -> str:
        values = parse_vector(vector, where="block weights")
        return block_spec(BlockLayout(arch, len(values)), values, preset, self.editor.book())

    def generate(self, lora: str | None, weight: float, vector: str, preset: str | None, arch: str,
                 *settings_inputs: Any) -> Updates:
        """One image: the prompt with the picked LoRA's tag (preset or vector) appended."""
        settings = Settings.read(*settings_inputs)
        tag = copy_tag(lora, weight, self._spec(vector, arch, preset)) if lora else ""
        prompt = f"{settings.prompt.rstrip()} {tag}".strip()
        session = self.session(arch)
        with self.context.gpu.hold("Block Weight generation"):
            generated = session.generate(settings.request(prompt))
        what = f"with {code_span(tag)}" if tag else "without a LoRA (none picked)"
        return {"image": generated.image, "infotext": generated.parameters,
                "status": f"Generated {what}.{warning_lines(generated.warnings)}"}

    def run_grid(self, x_text: str, y_text: str, lora: str | None, weight: float, vector: str,
                 preset: str | None, arch: str, *settings_inputs: Any) -> Iterator[Updates]:
        """Plan and check the grid (errors before any image), run it as a job, yield progress, show the grid."""
        settings = Settings.read(*settings_inputs)
        spec = GridSpec(prompt=settings.prompt, x=Axis.parse(x_text) if (x_text or "").strip() else None,
                        y=Axis.parse(y_text) if (y_text or "").strip() else None, lora=lora or None,
                        strength=float(weight), preset=self._spec(vector, arch, preset), seed=settings.seed,
                        negative_prompt=settings.negative, steps=settings.steps, cfg_scale=settings.cfg,
                        width=settings.width, height=settings.height)
        plan = plan_grid(spec)
        session = self.session(arch)
        check_plan(plan, session)
        loras = {cell.call.name: cell.call for cell in plan.cells}  # a match depends on the LoRA only
        warnings = [warning for call in loras.values() for warning in session.warnings(format_call(call))]
        target = new_output_path(self.context.work_dir() / GRIDS_FOLDER, "xy")

        def work(control: JobControl) -> Any:
            with self.context.gpu.hold("XY grid"):
                return run_grid(plan, session, control, model_name=session.model_name, save_to=target)

        job = self.grid_slot.start(work)
        yield {"status": f"XY grid of {plan.columns}×{plan.rows} images started.{warning_lines(warnings)}"}
        for snapshot in follow(job, self.poll_seconds):
            if snapshot.active:
                yield {"grid_progress": snapshot.describe()}
            elif snapshot.state == "done":
                result = snapshot.result
                yield {"grid_progress": snapshot.describe(), "grid_image": result.image,
                       "grid_path": str(result.path),
                       "status": f"XY grid saved to {code_span(result.path)}."}
            else:
                yield self._ended(snapshot)

    def run_analyzer(self, lora: str | None, weight: float, threshold: Any, arch: str, full: bool,
                     *settings_inputs: Any) -> Iterator[Updates]:
        """Rank the picked LoRA's blocks (each switched off in turn) as a job; yield progress, show grid and table."""
        settings = Settings.read(*settings_inputs)
        if not lora:
            raise BlocksUIError("pick a LoRA to analyze")
        spec = AnalyzeSpec(lora=lora, weight=float(weight), prompt=settings.prompt, negative_prompt=settings.negative,
                           seed=settings.seed, steps=settings.steps, cfg_scale=settings.cfg, width=settings.width,
                           height=settings.height, threshold=_whole(threshold, "threshold", 0),
                           length=FULL_LENGTH[family_of(arch)] if full else None)
        session = self.session(arch)
        spec.blocks(session.host.arch)
        warnings = session.warnings(spec.prompt_with(spec.tag([1.0] * len(spec.blocks(session.host.arch)))))
        target = new_output_path(self.context.work_dir() / GRIDS_FOLDER, "blocks")

        def work(control: JobControl) -> Any:
            with self.context.gpu.hold("block analysis"):
                return analyze_blocks(spec, session, control, arch=session.host.arch,
                                      model_name=session.model_name, save_to=target)

        job = self.analyzer_slot.start(work)
        family = FAMILY_TITLES[family_of(arch)]
        yield {"status": f"Analyzing {escape_markdown(lora)} on {family} blocks…{warning_lines(warnings)}"}
        for snapshot in follow(job, self.poll_seconds):
            if snapshot.active:
                yield {"analyzer_progress": snapshot.describe()}
            elif snapshot.state == "done":
                result = snapshot.result
                yield {"analyzer_progress": snapshot.describe(), "analyzer_image": result.image,
                       "analyzer_table": result.table(), "analyzer_path": str(result.path),
                       "status": f"The LoRA changes {100 * result.lora_share:.1f}% of pixels; most effective "
                                 f"block: **{result.rows[0].block}**. Saved to "
                                 f"{code_span(result.path)}."}
            else:
                yield self._ended(snapshot, progress_key="analyzer_progress")

    @staticmethod
    def _ended(snapshot: JobSnapshot, progress_key: str = "grid_progress") -> Updates:
        if snapshot.state == "cancelled":
            message = f"The {snapshot.name} was cancelled after {snapshot.done} of {snapshot.total} images."
        else:
            message = f"**Error:** {escape_markdown(snapshot.error or 'the ' + snapshot.name + ' failed')}"
        return {progress_key: snapshot.describe(), "status": message}
