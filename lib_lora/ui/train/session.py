"""The Train tab's controller: form → TrainConfig, VRAM estimate, start / stop / save now, progress, TOML.

No gradio here: handlers take the form's values and return {output name: value} dicts (generators while a run
is followed), so they are tested without a browser. One run at a time per tab; it runs as a `jobs.Job` in its
own thread holding the context's GPU gate, so the page stays responsive and generation elsewhere is refused.
The session outlives the page: a page opened (or reloaded) while a run goes reattaches to it (`reattach`).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ...atomic import write_atomically
from ...dataset.roots import AllowedRoots
from ...errors import LoraStudioError
from ...jobs import Job, JobControl
from ...train.config import TrainConfig
from ...train.errors import ConfigError
from ...train.loop import TrainRun
from ...train.outputs import check_run_outputs
from ...train.saving import lora_path
from ...train.vram import estimate_vram
from ...wording import escape_markdown
from ..context import StudioContext
from ..dataset.folders import dataset_folder_choices
from ..jobs_ui import follow
from . import form as train_form
from .view import gib, loss_curve_image, progress_text, result_text

Updates = dict[str, Any]
POLL_SECONDS = 1.0
TRAIN_FOLDER = "train"
CACHE_FOLDER = "cache"
EXPORT_FOLDER = "lora_studio_exports"  # under the system temp folder, which gradio 3.41 and 4.x both serve


class TrainUIError(LoraStudioError):
    """The tab cannot do what was asked (no model, a run already going, a file in the way, ...)."""


@dataclass(frozen=True)
class OwnFields:
    """The fields the tab handles itself: dataset folder, output name (+ overwrite), trigger word, sample prompts."""

    dataset: str = ""
    output_name: str = ""
    overwrite: bool = False
    trigger: str = ""
    prompts: str = ""

    @property
    def sample_text(self) -> str:
        """The sample prompt file's text: the prompts as written, else the trigger word alone."""
        return self.prompts.strip() or self.trigger.strip()


class TrainSession:
    """One Train tab's state: the run it started (at most one going) and its job."""

    def __init__(self, context: StudioContext, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.context = context
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self.run: TrainRun | None = None
        self.job: Job[Any] | None = None
        self._serial = 0
        self._token: str | None = None  # the current job's, for the page that started it
        self._unfollowed: str | None = None  # the token no page has followed yet

    # --- folders and checks --------------------------------------------------------------------------------------
    def dataset_choices(self) -> list[str]:
        return dataset_folder_choices(self.context.data_roots())

    def check_dataset(self, folder: str) -> Path:
        """The dataset folder resolved inside the allowed roots; ConfigError naming train_data_dir otherwise."""
        if not (folder or "").strip():
            raise ConfigError("train_data_dir", folder, "choose a dataset folder")
        resolved = AllowedRoots(self.context.data_roots()).locate(folder.strip())
        if not resolved.is_dir():
            raise ConfigError("train_data_dir", folder, "no such folder")
        return resolved

    def describe_dataset(self, folder: str, caption_extension: str) -> str:
        """Markdown: what training will use of `folder` (images × repeats per subfolder, captions found)."""
        if not (folder or "").strip():
            return ""
        from ...train.data_scan import scan_images

        extension = (caption_extension or "").strip() or ".txt"
        try:
            path = self.check_dataset(folder)
            scanned = scan_images(path, caption_extension=extension, is_reg=False)
        except LoraStudioError as error:
            return f"**Dataset:** {escape_markdown(str(error))}"
        if not scanned.items:
            return f"**Dataset:** no images in `{path}` or in `<repeats>_<name>` folders inside it."
        subsets: dict[str, list[Any]] = {}
        for item in scanned.items:
            subsets.setdefault(item.subset, []).append(item)
        lines = []
        for subset, items in subsets.items():
            repeats = items[0].repeats
            lines.append(f"- `{subset}`: {len(items)} images × {repeats} repeats = {len(items) * repeats} per epoch")
        missing = sum(not item.path.with_suffix(extension).is_file() for item in scanned.items)
        if missing:
            lines.append(f"- {missing} of {len(scanned.items)} images have no `{extension}` caption (they are "
                         "captioned with their folder's name): is caption_extension right?")
        lines += [f"- {escape_markdown(note)}" for note in scanned.ignored]
        return "\n".join(lines)

    def prompt_file(self, output_name: str) -> Path:
        return self.context.work_dir() / TRAIN_FOLDER / f"{output_name}-prompts.txt"

    def config(self, own: OwnFields, values: Mapping[str, Any], *, check_dataset: bool = True) -> TrainConfig:
        """The validated config of the form; the dataset is checked against the allowed roots when asked."""
        if str(values.get("training_mode") or "lora").strip().lower() in ("slider", "difference"):
            check_dataset = bool(own.dataset.strip())  # none needed: trained from prompts, or the mode's images
        dataset = str(self.check_dataset(own.dataset)) if check_dataset else (own.dataset.strip() or None)
        values = {**values, **train_form.data_paths_checked(values, AllowedRoots(self.context.data_roots()))}
        name = own.output_name.strip()
        if not name:
            raise ConfigError("output_name", own.output_name, "give the LoRA a file name")
        sample_text = own.sample_text
        samples_asked = any(train_form.from_form(train_form.FIELD_BY_NAME[key], values.get(key))
                            for key in train_form.SAMPLES)
        if samples_asked and not sample_text:
            raise ConfigError("sample_prompts", "", "samples are asked for: write a sample prompt or a trigger word")
        return train_form.config_from(
            values, train_data_dir=dataset, output_name=name, activation_text=own.trigger.strip() or None,
            output_dir=str(self.context.trained_dir()),
            sample_prompts=str(self.prompt_file(name)) if sample_text else None)

    def host(self) -> Any:
        """The loaded model; TrainUIError when there is none."""
        host = self.context.host_provider()
        if host is None:
            raise TrainUIError("No model is loaded. Load a checkpoint, then press Refresh.")
        return host

    def cache_dir(self) -> Path:
        return self.context.work_dir() / CACHE_FOLDER

    def release_host_loras(self) -> None:
        """Standalone: take out the LoRAs the Block Weight tab keeps merged between generations."""
        if self.context.standalone:
            from ...blocks.session import unmerge_host

            unmerge_host(self.host())

    def prepare(self, own: OwnFields, values: Mapping[str, Any]) -> TrainConfig:
        """The run's config, checked as Start checks it (the file it would write too); writes its prompt file."""
        config = self.config(own, values)
        check_run_outputs(config, self.context.trained_dir(), also=[self.prompt_file(config.run.output_name)])
        target = lora_path(self.context.trained_dir(), config.run.output_name)
        if target.exists() and not own.overwrite:
            raise TrainUIError(f"{target} already exists: tick Overwrite, or choose another output_name.")
        if config.run.sample_prompts:
            _write_text(Path(config.run.sample_prompts), own.sample_text)
        return config

    # --- the VRAM estimate -----------------------------------------------------------------------------------------
    def estimate(self, own: OwnFields, values: Mapping[str, Any]) -> str:
        """The memory the form's settings need on the loaded model, and what the GPU has free (CUDA)."""
        try:
            config = self.config(own, values, check_dataset=False)
            host = self.host()
            estimate = estimate_vram(config, host)
        except LoraStudioError as error:
            return f"VRAM estimate: fix the settings first — {escape_markdown(str(error))}"
        lines = [f"**VRAM estimate** ({estimate.lora_parameters:,} LoRA parameters)",
                 *(f"- {line}" for line in estimate.describe().splitlines())]
        device = getattr(host, "device", None)
        if device is not None and device.type == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info(device)
            lines.append(f"- free on {device} now: {gib(free)} of {gib(total)}")
            if estimate.additional > free:
                lines.append("- **may not fit:** turn on gradient_checkpointing, lower train_batch_size or "
                             "resolution, or cache_text_encoder_outputs")
        else:
            lines.append("- the model runs on the CPU here: these are bytes of RAM, not VRAM")
        return "\n".join(lines)

    # --- start, stop, save now ----------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.job is not None and self.job.snapshot().active

    def describe_running(self) -> str:
        """The run that is going as "<name>, step N of M" (before its first step: what it is preparing)."""
        job, run = self.job, self.run
        if job is None:
            return "no run"
        snapshot = job.snapshot()
        extra = snapshot.extra
        name = run.config.run.output_name if run is not None else str(extra.get("queue_name") or job.name)
        if "step" in extra and extra.get("stage") in ("train", "save"):
            return f"{name}, step {extra['step']} of {extra['total_steps']}"
        return f"{name}, {snapshot.message or 'starting'}"

    def _check_free(self) -> None:
        if self.active:
            raise TrainUIError(f"A run is already running: {self.describe_running()}. Stop it, or wait for it to "
                               "finish, then start.")
        busy = self.context.gpu.busy_message()
        if busy:
            raise TrainUIError(f"{busy[0].upper()}{busy[1:]}; then start.")

    def start(self, own: OwnFields, values: Mapping[str, Any]) -> Job[Any]:
        """Check everything, write the sample prompt file, start the run in the background; TrainUIError/
        ConfigError (nothing started) when something is wrong."""
        with self._lock:
            self._check_free()
            host = self.host()
            config = self.prepare(own, values)
            run = TrainRun(config, host, output_dir=self.context.trained_dir(), gpu=self.context.gpu,
                           cache_dir=self.cache_dir())
            self.release_host_loras()
            self.run, self.job = run, run.job()
            self._new_token()
            return self.job.start()

    def start_job(self, name: str, work: Callable[[JobControl], Any]) -> Job[Any]:
        """Start other training work (the queue) in this tab's one job slot; it sets `self.run` as it goes."""
        with self._lock:
            self._check_free()
            self.host()
            self.run, self.job = None, Job(name, work)
            self._new_token()
            return self.job.start()

    def _new_token(self) -> None:
        self._serial += 1
        self._token = self._unfollowed = f"run-{self._serial}"

    def token_of(self, job: Job[Any]) -> str | None:
        """The token a page passes to `follow_started` to follow `job` (None for a job that is not the current)."""
        return self._token if job is self.job else None

    def stop(self) -> Updates:
        """Stop the run between steps; what was learned is saved (save_on_cancel)."""
        job, run = self.job, self.run
        if job is None or not job.snapshot().active:
            return {"status": "No training run is going."}
        if run is not None:
            run.request_stop()
        if job.snapshot().extra.get("stage") not in ("train", "save"):
            job.cancel()  # still preparing: nothing learned yet, so stop at the next check
            return {"status": "Stopping: no step has run yet, so nothing will be saved."}
        return {"status": "Stopping after the current step; what was learned is saved."}

    def save_now(self) -> Updates:
        """Save a LoRA of the current step and go on training."""
        job, run = self.job, self.run
        if job is None or run is None or not job.snapshot().active:
            return {"status": "No training run is going."}
        run.request_save()
        return {"status": "Saving a LoRA of the current step after it; training goes on."}

    # --- following a run -------------------------------------------------------------------------------------------
    def follow_started(self, token: str | None) -> Iterator[Updates]:
        """Follow the run whose start gave `token`, once, even if it has already ended; nothing for any other token
        (a start that failed leaves the page's old one): so a Start pressed again reports and follows nothing."""
        with self._lock:
            claimed = token is not None and token == self._unfollowed
            if claimed:
                self._unfollowed = None
        if claimed:
            yield from self.follow()

    def follow_active(self) -> Iterator[Updates]:
        """Follow the run that is going to its end; nothing when none is."""
        if self.active:
            yield from self.follow()

    def reattach(self) -> Iterator[Updates]:
        """A page opened while a run goes: say which, then follow it to its end; nothing when none is going."""
        if not self.active:
            return
        yield {"status": f"Training **{escape_markdown(self.describe_running())}** (started before this page was "
                         "opened): its progress follows. Stop and Save now act on it."}
        yield from self.follow()

    def follow(self) -> Iterator[Updates]:
        """Progress of the current (or last) run until it ends: text, loss curve, latest sample, saves, result."""
        job = self.job
        if job is None:
            yield {"status": "No training run has been started here."}
            return
        shown: dict[str, Any] = {}
        for snapshot in follow(job, self.poll_seconds):
            updates: Updates = {"progress": progress_text(snapshot)}
            extra = snapshot.extra
            curve = tuple(tuple(point) for point in extra.get("loss_curve", ()))
            validation = tuple(tuple(point) for point in extra.get("validation_curve", ()))
            if curve and (curve, validation) != shown.get("curve"):
                shown["curve"] = (curve, validation)
                updates["curve"] = loss_curve_image(curve, validation=validation)
            sample = extra.get("sample")
            samples = getattr(snapshot.result, "samples", None)
            if samples:  # the run's last sample is rendered after its last progress report
                sample = str(samples[-1])
            if sample and sample != shown.get("sample"):
                image = _open_image(sample)
                if image is not None:
                    shown["sample"] = sample
                    updates["sample"] = image
            saved = extra.get("saved")
            if saved and saved != shown.get("saved"):
                shown["saved"] = updates["output"] = saved
            if not snapshot.active:
                updates["status"] = result_text(snapshot)
                output = _final_output(snapshot.result)
                if output is not None:
                    updates["output"] = str(output)
            yield updates

    # --- TOML ---------------------------------------------------------------------------------------------------
    def import_toml(self, text: str, upload: Any = None) -> Updates:
        """Fill the form from a TOML config (an uploaded file wins over pasted text); the notes say what was left."""
        if upload is not None:
            path = Path(upload if isinstance(upload, str) else getattr(upload, "name", ""))
            config = TrainConfig.from_toml(path)
        elif (text or "").strip():
            config = TrainConfig.from_toml_text(text, source="pasted config")
        else:
            raise TrainUIError("Paste a TOML config or choose a .toml file first.")
        updates: Updates = dict(train_form.values_of(config))
        notes = list(config.notes)
        run = config.run
        updates["dataset"] = config.data.train_data_dir or ""
        updates["output_name"] = run.output_name
        updates["trigger"] = run.activation_text or ""
        if run.sample_prompts:
            prompt_path = Path(run.sample_prompts).expanduser()
            if prompt_path.suffix.lower() == ".txt" and prompt_path.is_file():
                updates["prompts"] = prompt_path.read_text(encoding="utf-8").strip()
            else:
                notes.append(f"sample_prompts = {run.sample_prompts!r} not read (only a .txt file here); write the "
                             "prompts in the Samples box")
        trained_dir = self.context.trained_dir()
        if run.output_dir and Path(run.output_dir).expanduser().resolve() != trained_dir.resolve():
            notes.append(f"output_dir = {run.output_dir!r} not used: LoRAs go to {trained_dir}")
        if run.pretrained_model_name_or_path:
            notes.append(f"pretrained_model_name_or_path = {run.pretrained_model_name_or_path!r} not used: the "
                         "loaded model is trained")
        message = "Config loaded into the form."
        if notes:
            message += "\n\n" + "\n".join(f"- {escape_markdown(note)}" for note in notes)
        updates["status"] = message
        return updates

    def export_toml(self, own: OwnFields, values: Mapping[str, Any]) -> Updates:
        """The form as a TOML config (text and a file to download); the sample prompt file is written beside it."""
        config = self.config(own, values, check_dataset=False)
        name = config.run.output_name
        text = config.to_toml()
        saved = self.context.work_dir() / TRAIN_FOLDER / f"{name}.toml"
        download = Path(tempfile.gettempdir()) / EXPORT_FOLDER / f"{name}.toml"
        prompts = [Path(config.run.sample_prompts)] if config.run.sample_prompts else []
        check_run_outputs(config, self.context.trained_dir(), writable=False, also=[saved, download, *prompts])
        if config.run.sample_prompts:
            _write_text(Path(config.run.sample_prompts), own.sample_text)
        for path in (saved, download):
            _write_text(path, text.rstrip("\n"))
        return {"toml": text, "toml_file": str(download),
                "status": f"Config written to `{saved}` (and offered for download)."}


def _final_output(result: Any) -> Path | None:
    """The LoRA a finished job wrote last: a run's output, or the last output of a queue."""
    if result is None:
        return None
    if hasattr(result, "results"):
        outputs = [r.output for r in result.results if r.output is not None]
        return outputs[-1] if outputs else None
    return result.output


def _write_text(path: Path, text: str) -> None:
    """`text` and a final line break to `path` atomically, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, [text.encode("utf-8") + b"\n"])


def _open_image(path: str) -> Image.Image | None:
    """The sample at `path`, loaded (gradio 4 serves only files under its allowed folders, so it gets pixels)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError:
        return None
