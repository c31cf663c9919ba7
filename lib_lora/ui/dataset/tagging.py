"""The Dataset tab's tagger panel: which models, the options as typed, a tagging job on the loaded dataset.

The work is lib_lora.dataset.tagging.tagger's (`tag_folder` writes each caption as soon as its image is tagged, and a
run stopped by Cancel or a crash continues where it stopped when started again with the same model and options);
this module resolves the chosen model (a folder of the tagger folder, or a known name: downloaded at its pinned
commit when missing), keeps the last loaded model for the next run, reports progress with the ETA (the job's
line: images done of those left to tag, images done earlier not counted), and turns the job's end into the tab's new
baseline: the folder is read again and the tagger's changes become one undo step.
"""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...dataset.editing import DatasetSession, DatasetUIError, code
from ...dataset.tagging.models import MODEL_FILE, REGISTRY, TAGS_FILE, TaggerFiles, known_model, resolve_model
from ...dataset.tagging.run import TagReport, prepare_tagging
from ...dataset.tagging.tagger import RATING, RUN_HELP, Tagger, TaggerOptions, TagLabels
from ...dataset.tags import underscores_to_spaces
from ...errors import LoraStudioError
from ...jobs import Job, JobControl, JobSnapshot
from ..context import StudioContext
from ..model_panel import escape_markdown

OPTION_NAMES = (
    "general_threshold", "character_threshold", "general_mcut", "character_mcut", "include_rating", "max_tags",
    "exclude", "underscores_to_spaces", "escape_brackets", "trigger", "existing", "batch_size",
)
"""The TaggerOptions fields the panel shows, in the order the page passes them."""

_loaded: dict[str, Any] = {}
_loaded_lock = threading.Lock()


def tagger_choices(tagger_dir: Path) -> list[str]:
    """Model folders in `tagger_dir` (holding model.onnx and selected_tags.csv), then the known model names."""
    try:
        local = sorted(
            entry.name for entry in os.scandir(tagger_dir)
            if entry.is_dir() and not entry.name.startswith(".")
            and (Path(entry.path) / MODEL_FILE).is_file() and (Path(entry.path) / TAGS_FILE).is_file()
        )
    except OSError:
        local = []
    return list(dict.fromkeys([*local, *REGISTRY]))


def model_target(choice: str | None, tagger_dir: Path) -> Path | str:
    """The folder `tagger_dir/choice`, or the known model name; DatasetUIError for anything else."""
    name = (choice or "").strip()
    if not name:
        raise DatasetUIError("choose a tagger model")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise DatasetUIError(f"a tagger model is chosen by name from the list, got {name!r}")
    folder = tagger_dir / name
    if folder.is_dir():
        return folder
    if known_model(name) is not None:
        return name
    raise DatasetUIError(f"unknown tagger model {name!r}: put its folder in {tagger_dir} and press ↻")


def tagger_options(session: DatasetSession, values: dict[str, Any]) -> TaggerOptions:
    """TaggerOptions from the page's values (numbers as gradio gives them), for the loaded dataset's files."""
    dataset = session.require_loaded()
    values = dict(values)
    max_tags = values.get("max_tags")
    if isinstance(max_tags, float) and max_tags.is_integer():
        values["max_tags"] = int(max_tags)
    if "batch_size" in values:
        batch = str(values["batch_size"] or "auto").strip().lower()
        values["batch_size"] = int(batch) if batch.isdigit() else batch
    return TaggerOptions(**values, caption_ext=dataset.caption_ext, recursive=dataset.recursive)


def load_tagger(files: TaggerFiles) -> Tagger:
    """The model as an onnxruntime session; the last one stays loaded for the next run (one at a time)."""
    key = f"{files.model_path}|{files.model_path.stat().st_mtime_ns}|{files.tags_path.stat().st_mtime_ns}"
    with _loaded_lock:
        if _loaded.get("key") != key:
            _loaded.clear()
            _loaded.update(key=key, tagger=Tagger.load(files))
        return _loaded["tagger"]


def unload_tagger() -> bool:
    """Free the kept model; whether one was loaded."""
    with _loaded_lock:
        had = bool(_loaded)
        _loaded.clear()
        return had


def start_tagging(session: DatasetSession, context: StudioContext, choice: str | None,
                  options: TaggerOptions) -> Job[TagReport]:
    """Tag the loaded dataset in a background job; refused while captions have unsaved edits."""
    session.require_loaded()
    session.require_idle()
    unsaved = len(session.unsaved_keys())
    if unsaved:
        raise DatasetUIError(f"save or revert the {unsaved} unsaved caption(s) first: the tagger writes the "
                             "caption files")
    tagger_dir = context.tagger_dir()
    target = model_target(choice, tagger_dir)
    dataset = session.rescan()

    def downloading(message: str, done: int, total: int | None, control: JobControl) -> None:
        size = f"{done / 2**20:.0f} of {total / 2**20:.0f} MiB" if total else f"{done / 2**20:.0f} MiB"
        control.progress(message=f"{message}: {size}")

    def work(control: JobControl) -> TagReport:
        control.progress(0, len(dataset.items), f"loading {choice}")
        files = resolve_model(target, models_dir=tagger_dir,
                              progress=lambda message, done, total: downloading(message, done, total, control))
        control.check()
        tagger = load_tagger(files)
        control.progress(provider=tagger.provider_in_use, warnings=list(tagger.warnings))
        stop = "press Cancel beside Tag the loaded dataset in the Dataset tab to stop it, or wait for it"
        with context.gpu.hold("tagging", stop=stop) if tagger.gpu else nullcontext():
            run = prepare_tagging(dataset, tagger, options)
            control.check()
            return run.run(control)

    job: Job[TagReport] = Job("tagging", work).start()
    session.start_job(job, f"tag with {choice}")
    return job


def finish_tagging(session: DatasetSession, snapshot: JobSnapshot) -> str:
    """Make what the tagger wrote the new baseline (one undo step) and say what happened."""
    changed = session.reload_as_step()
    if snapshot.state == "done":
        report: TagReport = snapshot.result
        lines = [f"Tagging finished: {escape_markdown(report.summary())}; {changed} caption(s) changed "
                 "(**Undo** takes them back, **Save** then writes that)."]
        lines += [f"⚠ {escape_markdown(warning)}" for warning in report.warnings]
        lines += [f"- {code(r.image.name)}: {escape_markdown(r.error or r.status)}"
                  for r in report.results if r.status in ("unreadable", "failed")]
        return "\n\n".join(lines)
    if snapshot.state == "cancelled":
        return (f"Tagging cancelled after {snapshot.done} of {snapshot.total or 0} images; the {changed} caption(s) "
                f"written so far are kept (**Undo** takes them back). {escape_markdown(_sentence(RUN_HELP['resume']))}")
    return f"**Tagging failed:** {escape_markdown(snapshot.error or 'unknown error')} ({changed} caption(s) changed)."


def _sentence(text: str) -> str:
    """A help text (lower case, no full stop, as the CLI's help shows it) as a sentence."""
    return text[:1].upper() + text[1:] + "."


def cancel_tagging(session: DatasetSession) -> str:
    job = session.job
    if job is None or not job.snapshot().active:
        return "No tagging is running."
    job.cancel()
    return "Cancelling after the current batch of images…"


def tagger_vocabulary(choice: str | None, tagger_dir: Path, underscores: bool) -> tuple[str, ...]:
    """The general and character tags of the chosen model (as captions will spell them); () when not at hand."""
    try:
        files = resolve_model(model_target(choice, tagger_dir), models_dir=tagger_dir, download=False)
        mtime = files.tags_path.stat().st_mtime_ns
    except (LoraStudioError, OSError):
        return ()
    return _vocabulary(str(files.tags_path), mtime, bool(underscores))


@lru_cache(maxsize=8)
def _vocabulary(path: str, mtime_ns: int, underscores: bool) -> tuple[str, ...]:
    try:
        labels = TagLabels.from_csv(Path(path))
    except LoraStudioError:
        return ()
    names = (name for name, category in zip(labels.names, labels.categories.tolist()) if category != RATING)
    return tuple(underscores_to_spaces(name) if underscores else name for name in names)
