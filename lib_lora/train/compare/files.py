"""The LoRA files of one comparison: where each lies, which epoch and step it holds, what its metadata measured.

A run names its saves `<name>-000003` (epoch 3), `<name>-step00000120` (step 120) and `<name>` (the end); the run's
name is what is left of every stem once those endings are taken off. Epoch and step come from the metadata
(`ss_epoch`, `ss_steps`) where it has them, else from the name. Files are told apart by their stem, as the LoRA
folders name them, so two files with one stem are refused.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import LoraStudioError
from ...networks.files import read_header

MAX_FILES = 16
"""The most files one comparison takes (each is rendered at every strength and prompt)."""
LORA_SUFFIX = ".safetensors"
_ENDING = re.compile(r"-(?:(\d{6})|step(\d{8}))$")


class CompareError(LoraStudioError):
    """A comparison cannot run as asked (no files, too many, two with one name, ...) or a keep cannot be done."""


@dataclass(frozen=True)
class CompareFile:
    """One saved LoRA: its path, epoch and step (None when unknown) and the validation loss its run measured."""

    path: Path
    epoch: int | None = None
    step: int | None = None
    validation_loss: float | None = None
    validation_step: int | None = None
    validation_seed: int | None = None
    validation_timesteps: int | None = None

    @property
    def name(self) -> str:
        """The name a prompt's `<lora:name:…>` tag gives it (the file's stem)."""
        return self.path.stem

    @property
    def label(self) -> str:
        """How the grid and the tables name it: "epoch 3", "step 120", or its name."""
        if self.epoch is not None:
            return f"epoch {self.epoch}"
        if self.step is not None:
            return f"step {self.step}"
        return self.name

    @property
    def validation_key(self) -> tuple[int | None, int | None] | None:
        """(seed, timesteps) its validation loss was measured with (values compare only under equal keys)."""
        if self.validation_loss is None:
            return None
        return self.validation_seed, self.validation_timesteps


def run_name_of(stem: str) -> str:
    """`stem` without a run's epoch (`-000003`) or step (`-step00000120`) ending."""
    return _ENDING.sub("", stem)


def describe_file(path: str | os.PathLike[str]) -> CompareFile:
    """The CompareFile of a saved .safetensors LoRA (its header only is read); CompareError for another kind."""
    path = Path(path)
    if path.suffix.lower() != LORA_SUFFIX:
        raise CompareError(f"{path}: only .safetensors LoRA files can be compared")
    metadata = read_header(path).metadata
    ending = _ENDING.search(path.stem)
    epoch = _int(metadata.get("ss_epoch"))
    step = _int(metadata.get("ss_steps"))
    if epoch is None and ending is not None and ending.group(1):
        epoch = int(ending.group(1))
    if step is None and ending is not None and ending.group(2):
        step = int(ending.group(2))
    if ending is not None and ending.group(2):
        epoch = None  # a step save is named by its step, even within an epoch
    return CompareFile(path, epoch=epoch, step=step, validation_loss=_float(metadata.get("ss_validation_loss")),
                       validation_step=_int(metadata.get("ss_validation_step")),
                       validation_seed=_int(metadata.get("ss_validation_seed")),
                       validation_timesteps=_int(metadata.get("ss_validation_timesteps")))


def describe_files(paths: Sequence[str | os.PathLike[str]]) -> list[CompareFile]:
    """The files in training order (epoch, step, then name); CompareError for none, too many, a repeat or two
    files with one name."""
    if not paths:
        raise CompareError("choose the LoRA files to compare")
    if len(paths) > MAX_FILES:
        raise CompareError(f"{len(paths)} files: a comparison takes at most {MAX_FILES}")
    files = [describe_file(path) for path in paths]
    seen: dict[str, Path] = {}
    for file in files:
        other = seen.setdefault(file.name, file.path)
        if other != file.path:
            raise CompareError(f"{other} and {file.path} are both named {file.name!r}; LoRAs are told apart by "
                               "name, so rename one or compare them apart")
        if sum(f.path == file.path for f in files) > 1:
            raise CompareError(f"{file.path} is listed twice")
    return sorted(files, key=_training_order)


def common_run_name(files: Sequence[CompareFile]) -> str | None:
    """The run's name when every file is a save of one run (`<name>`, `<name>-000003`, ...); None otherwise."""
    names = {run_name_of(file.name) for file in files}
    return names.pop() if len(names) == 1 else None


def comparable_losses(files: Sequence[CompareFile]) -> bool:
    """Whether every file carries a validation loss measured with the same seed and timesteps."""
    keys = {file.validation_key for file in files}
    return len(keys) == 1 and None not in keys


def _training_order(file: CompareFile) -> tuple[float, float, str]:
    final = file.name == run_name_of(file.name)  # the run's own name: the end, after every numbered save
    epoch = math.inf if file.epoch is None and final else (file.epoch if file.epoch is not None else -1)
    step = math.inf if file.step is None and final else (file.step if file.step is not None else -1)
    return epoch, step, file.name


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
