"""WD14 tagging: the onnxruntime session with its run plan (the options and scores to tags: tag_captions).

`Tagger` wraps one `InferenceSession`, reading the input name, side and batch dimension from it and saying which
execution provider really runs (a requested GPU provider that fell back to CPU is a warning, never silent), and
`Tagger.plan` says how a folder is run on that provider (`tag_run.tag_folder` runs it). The names of
tag_captions are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..preprocess import prepare_image
from .models import (
    MAX_FIXED_BATCH,
    MAX_INPUT_SIDE,
    MAX_MODEL_BYTES,
    MAX_TAGS_BYTES,
    TaggerFiles,
    TaggerModelError,
    check_file_size,
)
from .selection import (
    CHARACTER,
    EXISTING_POLICIES,
    GENERAL,
    OPTION_HELP,
    RATING,
    RUN_HELP,
    ExistingPolicy,
    TaggerOptionError,
    TaggerOptions,
    mcut_threshold,
    merge_caption,
    tags_from_scores,
)

if TYPE_CHECKING:
    from types import ModuleType

    import onnxruntime as ort
    from PIL import Image

__all__ = [
    "CHARACTER",
    "EXISTING_POLICIES",
    "GENERAL",
    "OPTION_HELP",
    "RATING",
    "RUN_HELP",
    "ExistingPolicy",
    "RunPlan",
    "TagLabels",
    "Tagger",
    "TaggerOptionError",
    "TaggerOptions",
    "TaggerUnavailableError",
    "mcut_threshold",
    "merge_caption",
    "tags_from_scores",
]


class TaggerUnavailableError(TaggerModelError):
    """onnxruntime, which runs every tagger model, is not installed in this Python or cannot be loaded."""


def _onnxruntime() -> ModuleType:
    """The onnxruntime module; TaggerUnavailableError saying why not and what to do."""
    try:
        import onnxruntime
    except ImportError as error:
        where = f"this Python ({sys.executable})"
        if isinstance(error, ModuleNotFoundError) and error.name == "onnxruntime":
            raise TaggerUnavailableError(
                f"tagging is unavailable: onnxruntime is not installed in {where}. In a WebUI, LoRA Studio's lines "
                "in the start-up log say why (for example: no onnxruntime release fits the packages the WebUI "
                "has); elsewhere: pip install onnxruntime") from error
        raise TaggerUnavailableError(f"tagging is unavailable: onnxruntime is installed in {where} but cannot "
                                     f"be loaded: {error}") from error
    return onnxruntime


@dataclass(frozen=True)
class TagLabels:
    """The rows of selected_tags.csv: names[i] and categories[i] belong to output column i."""

    names: tuple[str, ...]
    categories: np.ndarray

    @classmethod
    def from_csv(cls, path: Path) -> TagLabels:
        """Read `tag_id,name,category,count` rows; TaggerModelError when the file is not such a table."""
        check_file_size(path, MAX_TAGS_BYTES)
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise TaggerModelError(f"{path}: cannot read the tag list: {error}") from error
        try:
            names = tuple(row["name"] for row in rows)
            categories = np.array([int(row["category"]) for row in rows], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as error:
            raise TaggerModelError(f"{path}: not a WD14 tag list (needs name and category columns): {error}") from None
        if not names or not (categories == GENERAL).any():
            raise TaggerModelError(f"{path}: the tag list has no general tags")
        return cls(names, categories)


@dataclass(frozen=True)
class RunPlan:
    """How a folder is run: images per model call, model runs at once (each decoding its own images when
    decode_workers is 0), decoding threads feeding them otherwise, onnxruntime intra-op threads per run
    (0: onnxruntime's default, one per physical core)."""

    batch_size: int
    model_runs: int
    decode_workers: int
    intra_op_threads: int

    def describe(self) -> str:
        runs = f", {self.model_runs} runs at once" if self.model_runs > 1 else ""
        return f"batch {self.batch_size}{runs}"


def _cpu_count() -> int:
    """Logical CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _physical_cores() -> int:
    """Cores this process may run on, the hyper-threads of one core counted once; 0 where the topology is not
    readable (then onnxruntime picks, which is also one thread per physical core)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        return 0
    cores = set()
    for cpu in allowed:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return 0
    return len(cores)


PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
_AUTO_GPU_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")
MAX_CPU_RUNS = 8


class Tagger:
    """One loaded WD14 model: `predict` on preprocessed NHWC batches, `tag_images` on PIL images."""

    def __init__(self, session: ort.InferenceSession, labels: TagLabels, files: TaggerFiles,
                 warnings: Sequence[str], threads: int) -> None:
        self.session = session
        self.labels = labels
        self.files = files
        self.warnings = tuple(warnings)
        self.threads = threads
        inp = session.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_size: int = int(inp.shape[1])
        self.fixed_batch: int | None = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        self.provider_in_use: str = session.get_providers()[0]

    @classmethod
    def load(cls, files: TaggerFiles, *, providers: Sequence[str] | None = None,
             threads: int | None = None, device_id: int | None = None) -> Tagger:
        """Open the model with the given execution providers (None: the best available GPU one, then CPU) and
        intra-op threads per run (None: 1 on the CPU, onnxruntime's default with a GPU provider; 0: default),
        a GPU provider on GPU `device_id` (None: its default, the first; one process per GPU passes its local
        rank); TaggerUnavailableError when onnxruntime is missing."""
        ort = _onnxruntime()
        check_file_size(files.model_path, MAX_MODEL_BYTES)
        labels = TagLabels.from_csv(files.tags_path)
        available = ort.get_available_providers()
        if providers is None:
            requested = [p for p in _AUTO_GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
        else:
            requested = [PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in providers]
        usable = [p for p in requested if p in available] or ["CPUExecutionProvider"]
        if threads is None:  # on the CPU one single-threaded run per core (see plan); elsewhere the default
            threads = 1 if usable == ["CPUExecutionProvider"] else 0
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; a provider that failed to start is reported below
        # Idle intra-op threads sleep instead of spinning, so they leave the cores to the decoding threads.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = _session(files, options, _with_device(usable, device_id))
        except TaggerModelError:
            if usable == ["CPUExecutionProvider"]:
                raise
            session = _session(files, options, ["CPUExecutionProvider"])  # a GPU provider that raised
        in_use = session.get_providers()
        running = in_use[0].removesuffix("ExecutionProvider")
        warnings = [
            f"{name} requested but "
            f"{'failed to start' if name in available else 'not available in this onnxruntime'}: running on {running}"
            for name in requested if name not in in_use and name != "CPUExecutionProvider"
        ]
        _check_contract(session, labels, files)
        return cls(session, labels, files, warnings, threads)

    @property
    def gpu(self) -> bool:
        return self.provider_in_use != "CPUExecutionProvider"

    def plan(self, batch_size: int | Literal["auto"] = "auto", *, processes: int = 1) -> RunPlan:
        """Batch, concurrent runs and threads for this provider.

        CPU: the model takes ~20x the decoding time, and a decoding thread beside a model that uses every core
        slows it more than the decoding costs (a stalled core holds up each parallel step). So each core runs
        its own single-threaded model run over batch-1 inputs and decodes its own next image: on 2 cores
        that matched the model alone and beat one-at-a-time tagging (bench_tagger.py, bench/RESULTS.md).
        At most 8 runs (each holds its own activations); a session opened with more intra-op threads gets
        fewer runs, and with onnxruntime's default (all cores) one run with a decoding thread beside it.
        GPU: the model is fast and decoding is the limit, so several decoding threads feed batches of 16.
        `processes` tagging processes on this machine (a sharded run) share its cores evenly.
        """
        cpus = max(1, _cpu_count() // max(1, processes))
        if self.gpu:
            runs, decoders, auto_batch = 1, max(2, min(8, cpus - 1)), 16
        else:
            cores = max(1, (_physical_cores() or _cpu_count()) // max(1, processes))
            runs = max(1, min(MAX_CPU_RUNS, cores // self.threads)) if self.threads else 1
            decoders, auto_batch = (0, 1) if runs > 1 else (1, 2)
        if batch_size == "auto":
            batch_size = auto_batch
        if self.fixed_batch is not None:
            batch_size = self.fixed_batch
        return RunPlan(batch_size=batch_size, model_runs=runs, decode_workers=decoders,
                       intra_op_threads=self.threads)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores [n, tags] for a float32 [n, S, S, 3] batch; split or padded to a fixed batch size as needed."""
        n = len(batch)
        step = self.fixed_batch or n or 1
        out = []
        for start in range(0, n, step):
            chunk = batch[start:start + step]
            if self.fixed_batch and len(chunk) < self.fixed_batch:  # pad the last chunk of a fixed-batch model
                pad = np.zeros((self.fixed_batch - len(chunk), *chunk.shape[1:]), dtype=np.float32)
                chunk = np.concatenate([chunk, pad])
            scores = self.session.run(None, {self.input_name: chunk})[0]
            out.append(scores[: min(step, n - start)])
        return np.concatenate(out) if out else np.zeros((0, len(self.labels.names)), np.float32)

    def tag_images(self, images: Sequence[Image.Image], options: TaggerOptions) -> list[list[str]]:
        """Tags for each PIL image, batched per the plan."""
        step = self.plan(options.batch_size).batch_size
        result: list[list[str]] = []
        for start in range(0, len(images), step):
            batch = np.stack([prepare_image(im, self.input_size) for im in images[start:start + step]])
            result.extend(tags_from_scores(row, self.labels, options) for row in self.predict(batch))
        return result


_DEVICE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                     "DmlExecutionProvider")
"""The providers that take a `device_id` option."""


def _with_device(providers: list[str], device_id: int | None) -> list[str | tuple[str, dict[str, Any]]]:
    """The providers as onnxruntime takes them, the GPU ones with their device_id when one is given."""
    if device_id is None:
        return list(providers)
    return [(name, {"device_id": int(device_id)}) if name in _DEVICE_PROVIDERS else name for name in providers]


def _session(files: TaggerFiles, options: ort.SessionOptions,
             providers: Sequence[str | tuple[str, dict[str, Any]]]) -> ort.InferenceSession:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(files.model_path), sess_options=options, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise TaggerModelError(f"{files.model_path}: onnxruntime {ort.__version__} cannot load it: {reason} "
                               "(WD14 v3 models need onnxruntime 1.17 or newer)") from error


def _check_contract(session: ort.InferenceSession, labels: TagLabels, files: TaggerFiles) -> None:
    """The WD14 I/O contract: one NHWC float input [batch, S, S, 3], one output [batch, len(tags)]."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else None
    if (shape is None or len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int)
            or shape[1] != shape[2] or inputs[0].type != "tensor(float)"):
        raise TaggerModelError(f"{files.model_path}: not a WD14 tagger (expects one float input "
                               f"[batch, S, S, 3], has {[(i.name, i.shape) for i in inputs]})")
    side, batch = shape[1], shape[0]
    if side > MAX_INPUT_SIDE or (isinstance(batch, int) and batch > MAX_FIXED_BATCH):
        raise TaggerModelError(f"{files.model_path}: input [batch, S, S, 3] = {shape} is larger than a tagger's "
                               f"(S at most {MAX_INPUT_SIDE}, a fixed batch at most {MAX_FIXED_BATCH}; WD14 takes "
                               "448 pixels)")
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if isinstance(width, int) and width != len(labels.names):
        raise TaggerModelError(f"{files.model_path}: the model has {width} outputs but {files.tags_path} lists "
                               f"{len(labels.names)} tags; use the tag list that came with the model")
