"""The Block Weight tab's renders: one image, the XY grid and the effective-block analyzer.

One LoraSession per host (`session_for`: a new host object gets a new session). Each render runs as a `jobs.Job` in
a thread while a generator event polls it and yields a progress bar with its ETA (gradio 3.41 and 4.x alike, no
timer); its Cancel button stops it within the image (per sampling step; on a WebUI through its own interrupt).
Every render holds the context's GPU gate under a name and a way to stop it, so a tab refused meanwhile says what
holds the model and which Cancel stops it. The block weights come from the vector box (`read_box`): R, U and X
are drawn with the random seed (-1: a new one) and recorded in the image's parameters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ...blocks.analyze import AnalyzeSpec, analyze_blocks
from ...blocks.apply import LoraLibrary
from ...blocks.grid import Axis, GridSpec, check_plan, new_output_path, plan_grid, run_grid
from ...blocks.presets import FAMILY_TITLES, FULL_LENGTH, family_of
from ...blocks.recipe import RANDOM_FIELD, with_field
from ...blocks.rendering import render_image
from ...blocks.session import LoraSession, session_for
from ...blocks.syntax import format_call
from ...jobs import Job, JobControl, JobSnapshot
from ...wording import escape_markdown
from ..context import StudioContext
from ..jobs_ui import POLL_SECONDS, follow, progress_line
from .editor import BlockEditor, block_spec, code_span, copy_tag, read_box
from .settings import BlocksUIError, Settings, fitting_settings, model_key, random_seed, whole

__all__ = ["BlockRuns", "BlocksUIError", "JobSlot", "Settings", "follow", "warning_lines"]

Updates = dict[str, Any]
GRIDS_FOLDER = "grids"
PLACE = "in the Block Weight tab"


def warning_lines(warnings: list[str]) -> str:
    """Markdown lines after a status: one ⚠️ line per warning (each once), or "" when there are none."""
    return "".join(f"\n\n⚠️ {escape_markdown(warning)}" for warning in dict.fromkeys(warnings))


class JobSlot:
    """At most one background job of a kind; `cancel()` asks it to stop (within the current image)."""

    def __init__(self, what: str, *, button: str) -> None:
        self.what = what
        self.button = button
        self._job: Job[Any] | None = None
        self._lock = threading.Lock()

    @property
    def holder(self) -> str:
        """The GPU gate's name for this slot's job."""
        return f"{self.what} {PLACE}"

    @property
    def stop_hint(self) -> str:
        return f"press Cancel beside {self.button} there to stop it, or wait for it"

    def start(self, work: Callable[[JobControl], Any]) -> Job[Any]:
        with self._lock:
            if self._job is not None and self._job.snapshot().active:
                raise BlocksUIError(f"{self.what} is still running ({self._job.snapshot().describe()}); "
                                    "cancel it or wait")
            self._job = Job(self.what, work).start()
            return self._job

    def cancel(self) -> Updates:
        job = self._job
        if job is None or not job.snapshot().active:
            return {"status": f"Nothing to cancel: no {self.what.removeprefix('an ').removeprefix('a ')} is running."}
        job.cancel()
        return {"status": f"Cancelling {self.what}…"}


@dataclass(frozen=True)
class BoxWeights:
    """The vector box as a tag takes it (a preset name or numbers; None when it holds no LoRA's weights) and, when
    R, U or X were drawn, `Lora random weights`' value."""

    spec: str
    record: str | None = None


class BlockRuns:
    """Renders for the tab: generate, XY grid and analyzer (each a handler over the page's inputs)."""

    def __init__(self, context: StudioContext, editor: BlockEditor, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.context = context
        self.editor = editor
        self.poll_seconds = poll_seconds
        self.image_slot = JobSlot("an image", button="Generate")
        self.grid_slot = JobSlot("an XY grid", button="Run grid")
        self.analyzer_slot = JobSlot("a block analysis", button="Analyze blocks")

    def session(self, arch: str) -> LoraSession:
        """The loaded host's session; BlocksUIError without a model or when its family is not the page's."""
        host = self.context.host_provider()
        if host is None:
            raise BlocksUIError("No model is loaded. Load a checkpoint, then press Refresh.")
        if family_of(host.arch) != family_of(arch):
            raise BlocksUIError(f"The loaded model is {host.arch.name.upper()} now; press Refresh to show its blocks.")
        return session_for(host, lambda: LoraLibrary(self.context.lora_dirs()), self.editor.book)

    def fit_settings(self, shown_for: str | None) -> Updates:
        """Steps and size that fit the loaded model, when it is not the one the page's settings were fitted to."""
        host = self.context.host_provider()
        if host is None or model_key(host) == shown_for:
            return {}
        fitting = fitting_settings(host)
        return {"steps": fitting.steps, "width": fitting.width, "height": fitting.height,
                "settings_for": model_key(host),
                "settings_note": f"Steps and size set for this model: {escape_markdown(fitting.why)} "
                                 f"({fitting.width}×{fitting.height}, {fitting.steps} steps)."}

    def _weights(self, vector: str, arch: str, preset: str | None, seed: int) -> BoxWeights:
        """The box for a tag: a preset's name, the sliders' preset name, or numbers (R, U, X drawn with `seed`)."""
        book = self.editor.book()
        box = read_box(vector, arch, book)
        if box.preset is not None:
            return BoxWeights(box.preset)
        if box.recipe.plain:
            values = [float(v) for v in box.recipe.weights]
            return BoxWeights(block_spec(box.layout, values, preset, book))
        numbers = box.recipe.resolve(seed=seed)
        return BoxWeights(",".join(f"{value:g}" for value in numbers), box.recipe.record(seed=seed))

    def _spec(self, vector: str, arch: str, preset: str | None, seed: int = 0) -> str:
        return self._weights(vector, arch, preset, seed).spec

    def generate(self, lora: str | None, weight: float, vector: str, preset: str | None, arch: str,
                 random_value: Any, *settings_inputs: Any) -> Iterator[Updates]:
        """One image (the prompt with the picked LoRA's tag appended) as a job; yields progress, then the image."""
        settings = Settings.read(*settings_inputs)
        weights = self._weights(vector, arch, preset, random_seed(random_value)) if lora else None
        tag = copy_tag(lora, weight, weights.spec) if lora and weights else ""
        prompt = f"{settings.prompt.rstrip()} {tag}".strip()
        session = self.session(arch)
        warnings = session.warnings(prompt)
        request = settings.request(prompt)
        slot = self.image_slot

        def work(control: JobControl) -> Any:
            with self.context.gpu.hold(slot.holder, stop=slot.stop_hint):
                generated = render_image(session, request, control, done=0, total=1, what="sampling")
            if weights is not None and weights.record is not None:
                generated = replace(generated, parameters=with_field(generated.parameters, RANDOM_FIELD,
                                                                     weights.record))
            return generated

        job = slot.start(work)
        what = f"with {code_span(tag)}" if tag else "without a LoRA (none picked)"
        yield {"status": f"Generating {what}…", "image_progress": ""}
        for snapshot in follow(job, self.poll_seconds):
            if snapshot.active:
                yield {"image_progress": progress_line(snapshot)}
            elif snapshot.state == "done":
                generated = snapshot.result
                yield {"image_progress": progress_line(snapshot), "image": generated.image,
                       "infotext": generated.parameters,
                       "status": f"Generated {what}.{warning_lines(warnings + generated.warnings)}"}
            else:
                yield self._ended(snapshot, "image_progress")

    def run_grid(self, x_text: str, y_text: str, lora: str | None, weight: float, vector: str,
                 preset: str | None, arch: str, random_value: Any, *settings_inputs: Any) -> Iterator[Updates]:
        """Plan and check the grid (errors before any image), run it as a job, yield progress, show the grid."""
        settings = Settings.read(*settings_inputs)
        x = Axis.parse(x_text) if (x_text or "").strip() else None
        y = Axis.parse(y_text) if (y_text or "").strip() else None
        box = read_box(vector, arch, self.editor.book())
        sweeps = any(axis.kind in ("block-only", "block-off", "x") for axis in (x, y) if axis)
        base = box.recipe.text() if sweeps or not box.recipe.plain else self._spec(vector, arch, preset)
        spec = GridSpec(prompt=settings.prompt, x=x, y=y, lora=lora or None, strength=float(weight), preset=base,
                        seed=settings.seed, negative_prompt=settings.negative, steps=settings.steps,
                        cfg_scale=settings.cfg, width=settings.width, height=settings.height,
                        random_seed=random_seed(random_value))
        plan = plan_grid(spec, presets=self.editor.book(), arch=arch)
        session = self.session(arch)
        check_plan(plan, session)
        loras = {cell.call.name: cell.call for cell in plan.cells}  # a match depends on the LoRA only
        warnings = [warning for call in loras.values() for warning in session.warnings(format_call(call))]
        target = new_output_path(self.context.work_dir() / GRIDS_FOLDER, "xy")
        slot = self.grid_slot

        def work(control: JobControl) -> Any:
            with self.context.gpu.hold(slot.holder, stop=slot.stop_hint):
                return run_grid(plan, session, control, model_name=session.model_name, save_to=target)

        job = slot.start(work)
        yield {"status": f"XY grid of {plan.columns}×{plan.rows} images started.{warning_lines(warnings)}"}
        for snapshot in follow(job, self.poll_seconds):
            if snapshot.active:
                yield {"grid_progress": progress_line(snapshot)}
            elif snapshot.state == "done":
                result = snapshot.result
                yield {"grid_progress": progress_line(snapshot), "grid_image": result.image,
                       "grid_path": str(result.path),
                       "status": f"XY grid saved to {code_span(result.path)}."}
            else:
                yield self._ended(snapshot, "grid_progress")

    def run_analyzer(self, lora: str | None, weight: float, threshold: Any, arch: str, full: bool,
                     *settings_inputs: Any) -> Iterator[Updates]:
        """Rank the picked LoRA's blocks (each switched off in turn) as a job; yield progress, show grid and table."""
        settings = Settings.read(*settings_inputs)
        if not lora:
            raise BlocksUIError("pick a LoRA to analyze")
        spec = AnalyzeSpec(lora=lora, weight=float(weight), prompt=settings.prompt, negative_prompt=settings.negative,
                           seed=settings.seed, steps=settings.steps, cfg_scale=settings.cfg, width=settings.width,
                           height=settings.height, threshold=whole(threshold, "threshold", 0),
                           length=FULL_LENGTH[family_of(arch)] if full else None)
        session = self.session(arch)
        spec.blocks(session.host.arch)
        warnings = session.warnings(spec.prompt_with(spec.tag([1.0] * len(spec.blocks(session.host.arch)))))
        target = new_output_path(self.context.work_dir() / GRIDS_FOLDER, "blocks")
        slot = self.analyzer_slot

        def work(control: JobControl) -> Any:
            with self.context.gpu.hold(slot.holder, stop=slot.stop_hint):
                return analyze_blocks(spec, session, control, arch=session.host.arch,
                                      model_name=session.model_name, save_to=target)

        job = slot.start(work)
        family = FAMILY_TITLES[family_of(arch)]
        yield {"status": f"Analyzing {escape_markdown(lora)} on {family} blocks…{warning_lines(warnings)}"}
        for snapshot in follow(job, self.poll_seconds):
            if snapshot.active:
                yield {"analyzer_progress": progress_line(snapshot)}
            elif snapshot.state == "done":
                result = snapshot.result
                yield {"analyzer_progress": progress_line(snapshot), "analyzer_image": result.image,
                       "analyzer_table": result.table(), "analyzer_path": str(result.path),
                       "status": f"{escape_markdown(result.summary())} Saved to {code_span(result.path)}."}
            else:
                yield self._ended(snapshot, "analyzer_progress")

    @staticmethod
    def _ended(snapshot: JobSnapshot, progress_key: str) -> Updates:
        if snapshot.state == "cancelled":
            what = snapshot.name[0].upper() + snapshot.name[1:]
            count = f" after {snapshot.done} of {snapshot.total} images" if (snapshot.total or 0) > 1 else ""
            message = f"{what} was cancelled{count}."
        else:
            message = f"**Error:** {escape_markdown(snapshot.error or snapshot.name + ' failed')}"
        return {progress_key: progress_line(snapshot), "status": message}
