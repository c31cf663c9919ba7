"""The Train tab's "Choose an epoch" panel: compare saved LoRA files, see the recommendation, keep one.

**Use the finished run** fills the panel from the tab's last run (its saved files, dataset, sample prompts,
resolution; the validation losses are the ones the run wrote) and shows each file's loader check at once (any key
a program would not load). **Compare** renders the grid (files × prompts × strengths) on the loaded model as a
background job holding the GPU gate, then shows each file's validation loss, its samples' similarity to the
training images, the analyzer's top blocks, every file's loader check (unmatched keys listed) and the recommended
file and strength with the reason. **Keep** keeps the chosen file under the run's name and moves the others into
`epochs/` (train/compare/keep.py). Handlers return {name: value} dicts (wiring.wire), so they run without a
browser; the work itself is train/compare.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from ...errors import LoraStudioError
from ...jobs import Job, JobControl
from ...train.compare import (
    COMPARE_HELP,
    DEFAULT_STRENGTHS,
    CompareResult,
    CompareSpec,
    apply_keep,
    common_run_name,
    describe_files,
    parse_strengths,
    plan_keep,
    run_comparison,
    strengths_text,
)
from ...train.compare.files import run_name_of
from ...train.compare.run import FileRow
from ...train.compare.spec import ANALYZE_CHOICES
from ...train.errors import ConfigError
from ...wording import escape_markdown
from ..jobs_ui import POLL_SECONDS, follow, progress_line
from ..wiring import wire
from .session import TrainSession, TrainUIError

Updates = dict[str, Any]
Component = Any
PREFIX = "lora_studio_train_compare"
GRIDS_FOLDER = "grids"
HOLDER = "an epoch comparison in the Train tab"
STOP_HINT = "press Cancel in the Train tab's Choose an epoch panel to stop it, or wait for it"
INTRO = ("Compare saved LoRA files (a run's epochs, or any others) on the loaded model and keep the best. "
         "Press **Use the finished run** after a run, or choose files, then **Compare**.")
SHOWN_KEYS = 10


class ComparePanel:
    """The panel's handlers over the tab's TrainSession (its context, its last run); one comparison at a time."""

    def __init__(self, session: TrainSession, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.session = session
        self.poll_seconds = poll_seconds
        self.job: Job[CompareResult] | None = None
        self.result: CompareResult | None = None
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        return self.session.context.trained_dir()

    def file_choices(self) -> list[str]:
        """The .safetensors files under the folder trained LoRAs go to, as paths relative to it."""
        folder = self.folder
        return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.safetensors") if path.is_file())

    def refresh(self, chosen: Sequence[str] | None = None) -> Updates:
        choices = self.file_choices()
        return {"files": gr.update(choices=choices, value=[name for name in chosen or [] if name in choices])}

    def use_run(self) -> Updates:
        """The finished run's saves, dataset, prompts, validation folder and size, put in the panel's fields."""
        run = self.session.run
        if run is None or self.session.active:
            raise TrainUIError("No finished run here yet: train one first, or choose the files yourself.")
        config = run.config
        name = config.run.output_name
        folder = self.folder
        files = [path for path in sorted(folder.glob(f"{name}*.safetensors")) if run_name_of(path.stem) == name]
        if not files:
            raise TrainUIError(f"The run {name!r} left no LoRA file in {folder}.")
        prompts = config.run.activation_text or name
        if config.run.sample_prompts and Path(config.run.sample_prompts).suffix.lower() == ".txt":
            try:
                prompts = Path(config.run.sample_prompts).read_text(encoding="utf-8").strip() or prompts
            except OSError:
                pass  # the trigger word then
        width, height = config.data.resolution
        names = [path.relative_to(folder).as_posix() for path in files]
        checks = [FileRow(file, None, (), loaders=_loader_check(file.path)) for file in describe_files(files)]
        return {"files": gr.update(choices=self.file_choices(), value=names), "result": "\n".join(loader_lines(checks)),
                "data": config.data.train_data_dir or "", "validation": "",  # the losses the run wrote are used
                "prompts": prompts, "width": str(width), "height": str(height),
                "status": f"The files of the run **{escape_markdown(name)}**: {len(names)}. Press Compare."}

    def _paths(self, names: Sequence[str] | None) -> list[Path]:
        choices = set(self.file_choices())
        unknown = [name for name in names or [] if name not in choices]
        if unknown:
            raise TrainUIError(f"{unknown[0]!r} is not a LoRA file in {self.folder}; press Refresh.")
        return [self.folder / name for name in names or []]

    def compare(self, names: Sequence[str] | None, data: str | None, validation: str | None, prompts: str | None,
                strengths: str | None, seed: Any, width: Any, height: Any, analyze: str | None) -> Iterator[Updates]:
        """Check the inputs, run the comparison as a job holding the GPU gate, yield progress, then the result."""
        paths = self._paths(names)
        spec = CompareSpec(prompts=prompts or "", strengths=parse_strengths(strengths or ""), seed=_whole("seed", seed),
                           width=_whole("width", width), height=_whole("height", height),
                           analyze=analyze or "best")
        files = describe_files(paths)
        spec.check_size(len(files))
        data_dir = self._folder("data", data)
        if data_dir is None:
            raise ConfigError("data", data, "choose the training images' folder")
        validation_path = self._folder("validation_dir", validation)
        validation_dir = str(validation_path) if validation_path is not None else None
        host = self.session.host()
        job = self._start(host, paths, spec, data_dir, validation_dir)
        yield {"status": f"Comparing {len(files)} files…", "progress": "", "keep": gr.update(interactive=False)}
        for snapshot in follow(job, self.poll_seconds):
            if snapshot.active:
                yield {"progress": progress_line(snapshot)}
            elif snapshot.state == "done":
                self.result = snapshot.result
                yield self._shown(snapshot.result, progress_line(snapshot))
            else:
                what = "cancelled" if snapshot.state == "cancelled" else "failed"
                error = f": {escape_markdown(snapshot.error)}" if snapshot.error and what == "failed" else ""
                yield {"progress": progress_line(snapshot), "status": f"**The comparison {what}**{error}."}

    def _folder(self, key: str, value: str | None) -> Path | None:
        """The folder `value` inside the allowed data roots (None when empty); ConfigError naming `key`."""
        if not (value or "").strip():
            return None
        try:
            return self.session.check_dataset(value or "")
        except ConfigError as error:
            raise ConfigError(key, value, error.reason) from None

    def _start(self, host: Any, paths: list[Path], spec: CompareSpec, data: Path, validation: str | None) -> Job[Any]:
        from ...blocks.apply import LoraLibrary
        from ...blocks.grid import new_output_path
        from ...blocks.presets import PresetBook
        from ...blocks.session import session_for

        context = self.session.context
        busy = context.gpu.busy_message()
        if busy:
            raise TrainUIError(f"{busy[0].upper()}{busy[1:]}; then compare.")
        renderer = session_for(host, lambda: LoraLibrary(context.lora_dirs()), PresetBook.builtin())
        target = new_output_path(context.work_dir() / GRIDS_FOLDER, "epochs")
        run = self.session.run  # a validation folder is measured at the last run's resolution, else the width's
        resolution = ",".join(map(str, run.config.data.resolution)) if run is not None else None

        def work(control: JobControl) -> CompareResult:
            with context.gpu.hold(HOLDER, stop=STOP_HINT):
                return run_comparison(host, renderer, paths, spec, control, data=data, validation_dir=validation,
                                      resolution=resolution, save_to=target)

        with self._lock:
            if self.job is not None and self.job.snapshot().active:
                raise TrainUIError("A comparison is already running: cancel it or wait for it.")
            self.result = None
            self.job = Job("epoch comparison", work).start()
            return self.job

    def cancel(self) -> Updates:
        job = self.job
        if job is None or not job.snapshot().active:
            return {"status": "No comparison is running."}
        job.cancel()
        return {"status": "Cancelling the comparison…"}

    def _shown(self, result: CompareResult, progress: str) -> Updates:
        choices = [row.file.path.relative_to(self.folder).as_posix() for row in result.rows]
        best = result.best.file.path.relative_to(self.folder).as_posix()
        return {"progress": progress, "grid": result.grid, "result": result_markdown(result),
                "keep_pick": gr.update(choices=choices, value=best), "keep": gr.update(interactive=True),
                "status": f"**Recommended: {escape_markdown(result.best.file.path.name)} at strength "
                          f"{result.best_strength:g}.** Grid saved to `{result.path}`."}

    def keep(self, name: str | None) -> Updates:
        """Keep `name` (one of the compared files) under the run's name; the others go to `epochs/`."""
        result = self.result
        if result is None:
            raise TrainUIError("Compare the files first; then keep one.")
        if self.session.active or (self.job is not None and self.job.snapshot().active):
            raise TrainUIError("A run or a comparison is going: keep a file once it has ended (files are moved).")
        files = [row.file for row in result.rows]
        chosen = next((f for f in files if f.path.relative_to(self.folder).as_posix() == name), None)
        if chosen is None:
            raise TrainUIError("Choose one of the compared files to keep.")
        run_name = common_run_name(files)
        if run_name is None:
            raise TrainUIError("These files are not the saves of one run, so there is no run name to keep one "
                               "under; rename the file yourself.")
        plan = apply_keep(plan_keep(chosen, files, run_name))
        self.result = None  # the files have moved: a second keep needs a new comparison
        moved = "\n".join(f"- `{move.source.name}` → `{move.target.relative_to(self.folder).as_posix()}`"
                          for move in plan.moves)
        return {**self.refresh(), "keep": gr.update(interactive=False), "keep_pick": gr.update(choices=[], value=None),
                "status": f"**{escape_markdown(plan.describe())}.** Nothing was deleted.\n\n{moved}"}


def _loader_check(path: Path) -> Any:
    """The file's loader check, or why it could not run (shown in its place)."""
    from ...networks.loaders import check_file

    try:
        return check_file(path)
    except (LoraStudioError, OSError, RuntimeError, ValueError) as error:
        return str(error)


def _whole(key: str, value: Any) -> int:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(key, value, "a whole number") from None
    if not number.is_integer():
        raise ConfigError(key, value, "a whole number")
    return int(number)


def result_markdown(result: CompareResult) -> str:
    """The recommendation and its reason, the table of files, the blocks and every file's loader check."""
    strengths = result.spec.strengths
    best = result.recommendation.best
    lines = [f"**Recommended:** `{result.best.file.path.name}` at strength {result.best_strength:g} — "
             f"{escape_markdown(result.recommendation.reason)}", ""]
    header = ["file", "validation loss", *(f"similarity @{s:g}" for s in strengths), "best score", "top blocks"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    scores: dict[int, float] = {}
    for scored in result.recommendation.scored:
        scores[scored.candidate.file] = max(scores.get(scored.candidate.file, 0.0), scored.score)
    for index, row in enumerate(result.rows):
        mark = " ★" if index == best.candidate.file else ""
        loss = f"{row.validation_loss:.5f}" if row.validation_loss is not None else "–"
        blocks = ", ".join(row.top_blocks) if row.top_blocks else ("–" if row.top_blocks is None else "none")
        cells = [f"`{row.file.path.name}` ({escape_markdown(row.file.label)}){mark}", loss,
                 *(f"{value:.4f}" for value in row.similarities), f"{scores[index]:.3f}", escape_markdown(blocks)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Similarity: {result.embedder}. Validation loss: {escape_markdown(result.loss_source)}. "
                  f"Strengths {strengths_text(strengths)}; {result.seconds:.1f} s."]
    if result.best.analysis:
        lines += ["", f"**Blocks:** {escape_markdown(result.best.analysis)}"]
    lines += ["", *loader_lines(result.rows)]
    return "\n".join(lines)


def loader_lines(rows: Sequence[FileRow]) -> list[str]:
    """Markdown: one line when every file loads whole everywhere; otherwise each file's loaders, unmatched keys."""
    checks = [(row.file.path.name, row.loaders) for row in rows if row.loaders is not None]
    if checks and all(not isinstance(check, str) and check.complete and not check.skipped for _, check in checks):
        titles = ", ".join(report.title for report in checks[0][1].reports)  # type: ignore[union-attr]
        return [f"**Loader check:** every key of every file applies in {titles}."]
    lines = ["**Loader check:**"]
    for name, check in checks:
        if isinstance(check, str):
            lines.append(f"- `{name}`: not checked ({escape_markdown(check)})")
            continue
        for report in check.reports:
            lines.append(f"- `{name}`: {escape_markdown(report.summary())}")
            for failure in report.failures[:SHOWN_KEYS]:
                lines.append(f"  - `{failure.key}`: {escape_markdown(failure.reason)}")
            if len(report.failures) > SHOWN_KEYS:
                lines.append(f"  - … and {len(report.failures) - SHOWN_KEYS} more")
        lines += [f"- `{name}`: {escape_markdown(why)}" for why in check.skipped]
    return lines


def build_compare_panel(session: TrainSession, tab: Any) -> ComparePanel:
    """Add the "Choose an epoch" accordion to the current layout and wire it; returns its handlers."""
    panel = ComparePanel(session)
    c: dict[str, Component] = {}
    with gr.Accordion("Choose an epoch", open=False, elem_id=f"{PREFIX}_panel"):
        c["status"] = gr.Markdown(INTRO, elem_id=f"{PREFIX}_status")
        with gr.Row(equal_height=True):
            c["use_run"] = gr.Button("Use the finished run", elem_id=f"{PREFIX}_use_run", scale=1)
            c["files"] = gr.Dropdown(label="LoRA files", choices=[], value=[], multiselect=True, scale=4,
                                     info=COMPARE_HELP["files"], elem_id=f"{PREFIX}_files")
            c["refresh"] = gr.Button("Refresh", size="sm", scale=0, min_width=80, elem_id=f"{PREFIX}_refresh")
        with gr.Row():
            c["data"] = gr.Textbox(label="Training images", max_lines=1, info=COMPARE_HELP["data"],
                                   elem_id=f"{PREFIX}_data")
            c["validation"] = gr.Textbox(label="Validation folder", max_lines=1, info=COMPARE_HELP["validation_dir"],
                                         elem_id=f"{PREFIX}_validation")
        c["prompts"] = gr.Textbox(label="Prompts", lines=2, info=COMPARE_HELP["prompts"], elem_id=f"{PREFIX}_prompts")
        with gr.Row():
            c["strengths"] = gr.Textbox(label="Strengths", value=strengths_text(DEFAULT_STRENGTHS), max_lines=1,
                                        info=COMPARE_HELP["strengths"], elem_id=f"{PREFIX}_strengths")
            c["seed"] = gr.Textbox(label="Seed", value="0", max_lines=1, info=COMPARE_HELP["seed"],
                                   elem_id=f"{PREFIX}_seed")
            c["width"] = gr.Textbox(label="Width", value="512", max_lines=1, info=COMPARE_HELP["size"],
                                    elem_id=f"{PREFIX}_width")
            c["height"] = gr.Textbox(label="Height", value="512", max_lines=1, elem_id=f"{PREFIX}_height")
            c["analyze"] = gr.Radio(label="Block analysis", choices=list(ANALYZE_CHOICES), value="best",
                                    info=COMPARE_HELP["analyze"], elem_id=f"{PREFIX}_analyze")
        with gr.Row():
            c["run"] = gr.Button("Compare", variant="primary", elem_id=f"{PREFIX}_run")
            c["cancel"] = gr.Button("Cancel", elem_id=f"{PREFIX}_cancel")
        c["progress"] = gr.Markdown("", elem_id=f"{PREFIX}_progress")
        c["grid"] = gr.Image(label="Epochs × strengths × prompts", type="pil", interactive=False,
                             elem_id=f"{PREFIX}_grid")
        c["result"] = gr.Markdown("", elem_id=f"{PREFIX}_result")
        with gr.Row(equal_height=True):
            c["keep_pick"] = gr.Dropdown(label="File to keep", choices=[], value=None, scale=3,
                                         info=COMPARE_HELP["keep"], elem_id=f"{PREFIX}_keep_pick")
            c["keep"] = gr.Button("Keep this file, move the others to epochs/", interactive=False, scale=1,
                                  elem_id=f"{PREFIX}_keep")
    _wire_panel(c, panel, tab)
    return panel


def _wire_panel(c: dict[str, Component], panel: ComparePanel, tab: Any) -> None:
    def pick(*names: str) -> dict[str, Component]:
        return {name: c[name] for name in names}

    def on(listener: Any, fn: Any, inputs: list[Component], outputs: dict[str, Component], **options: Any) -> Any:
        return wire(listener, fn, inputs, outputs, tab="Train", **options)

    for listener in (tab.select, c["refresh"].click):
        on(listener, panel.refresh, [c["files"]], pick("files", "status"))
    on(c["use_run"].click, panel.use_run, [],
       pick("files", "data", "validation", "prompts", "width", "height", "result", "status"))
    inputs = [c[name] for name in ("files", "data", "validation", "prompts", "strengths", "seed", "width", "height",
                                   "analyze")]
    on(c["run"].click, panel.compare, inputs, pick("progress", "grid", "result", "keep_pick", "keep", "status"))
    on(c["cancel"].click, panel.cancel, [], pick("status"), queue=False)
    on(c["keep"].click, panel.keep, [c["keep_pick"]], pick("files", "keep", "keep_pick", "status"))


__all__ = ["ComparePanel", "build_compare_panel", "loader_lines", "result_markdown"]
