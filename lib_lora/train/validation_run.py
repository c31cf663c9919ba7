"""Validation inside a training run: which images train and which validate, when to measure, where values go.

`training_selection` gives TrainData the training part of a `validation_split`; `prepare_run_validation` builds
the validation images (the held-out part, or `validation_dir`) and a `RunValidation`, which the loop asks after
every step and epoch and the saves ask before writing. Each measurement goes to the run's record
(`TrainResult.validation_history`), to the UI (`validation_loss`, `validation_step`, `validation_curve` progress
fields) and, through RunFacts, into the next saved file's metadata (ss_validation_loss, ss_validation_step).
Measuring is done by rank 0 only (it needs no other process) and never twice for one step. The measurements
are kept in the run's position, so a state folder holds them and a resumed run goes on with them (`restore`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .data_scan import ImageItem
from .errors import ConfigError, TrainingError
from .validation import ValidationSet, held_out_selection, measure

if TYPE_CHECKING:
    from ..hosts.base import Host
    from ..jobs import JobControl
    from .config import TrainConfig
    from .outputs import PreparedRun, TrainResult
    from .runtime import Precision
    from .validation_config import ValidationConfig


def validation_seed(config: TrainConfig, run_seed: int) -> int:
    """The seed of the split and the fixed draws: validation_seed, else the run's seed (as sd-scripts)."""
    seed = config.validation.validation_seed
    return run_seed if seed is None else seed


def training_selection(config: TrainConfig, run_seed: int) -> Callable[[list[ImageItem]], list[ImageItem]] | None:
    """TrainData's `select` for the training images: all but the held-out ones with a split; None otherwise."""
    fraction = config.validation.validation_split
    if not fraction:
        return None
    return held_out_selection(fraction, validation_seed(config, run_seed), training=True)


class RunValidation:
    """The validation of one run: its images, its schedule, and the values measured so far."""

    def __init__(self, config: ValidationConfig, host: Host, images: ValidationSet, *, seed: int,
                 precision: Precision | None = None, control: JobControl | None = None, active: bool = True) -> None:
        self.config = config
        self.host = host
        self.images = images
        self.seed = seed
        self.precision = precision
        self.control = control
        self.active = active
        """Whether this process measures (rank 0 of a multi-process run)."""
        self.history: list[tuple[int, float]] = []
        """(step, validation loss) of every measurement, in order."""

    def restore(self, history: list[tuple[int, float]], result: TrainResult) -> None:
        """Continue a resumed run's measurements (from its state): the curve, the record and the metadata go on."""
        if not self.active or not history:
            return
        self.history = [(int(step), float(value)) for step, value in history]
        result.validation_history = list(self.history)
        self._report()

    def after_step(self, run: PreparedRun, result: TrainResult, step: int) -> None:
        every = self.config.validate_every_n_steps
        if every and step % every == 0:
            self.measure(run, result, step)

    def after_epoch(self, run: PreparedRun, result: TrainResult, epoch: int, step: int) -> None:
        """After `epoch` (counted from 1) has ended at `step`."""
        every = self.config.validate_every_n_epochs
        if every and epoch % every == 0:
            self.measure(run, result, step)

    def before_save(self, run: PreparedRun, result: TrainResult, step: int) -> None:
        """Measure (unless done at this step already) and hand the value to the metadata of the save."""
        self.measure(run, result, step)
        if self.history:
            run.facts.validation_step, run.facts.validation_loss = self.history[-1]
            run.facts.validation_seed = self.seed
            run.facts.validation_timesteps = self.config.validation_timesteps

    def measure(self, run: PreparedRun, result: TrainResult, step: int) -> float | None:
        """The validation loss of the network as it is at `step` (None on ranks that do not measure)."""
        if not self.active:
            return None
        if self.history and self.history[-1][0] == step:
            return self.history[-1][1]
        autocast = None
        if self.precision is not None:
            precision, device = self.precision, self.host.device
            autocast = lambda: precision.autocast(device)  # noqa: E731
        value = measure(self.host, self.images.batches(), seed=self.seed, timesteps=self.config.validation_timesteps,
                        modules=[run.network], autocast=autocast).loss
        self.history.append((step, value))
        result.validation_history = list(self.history)
        run.position.validation_history = list(self.history)  # saved with the run's state, restored on resume
        self._report()
        return value

    def _report(self) -> None:
        if self.control is not None and self.history:
            step, value = self.history[-1]
            self.control.progress(validation_loss=value, validation_step=step,
                                  validation_curve=[list(point) for point in self.history])


def prepare_run_validation(config: TrainConfig, host: Host, *, run_seed: int, precision: Precision | None = None,
                           control: JobControl | None = None, active: bool = True) -> RunValidation | None:
    """The run's validation (its images prepared), or None when it has none."""
    validation = config.validation
    if not validation.enabled:
        return None
    seed = validation_seed(config, run_seed)
    if validation.validation_dir is not None:
        folder: str | Path | None = validation.validation_dir
        select = None
    else:
        folder, select = None, held_out_selection(validation.validation_split, seed, training=False)
    try:
        images = ValidationSet.prepare(config.data, host, seed=seed, folder=folder, select=select,
                                       cache_text_encoder_outputs=config.run.cache_text_encoder_outputs,
                                       control=control)
    except TrainingError as error:
        if folder is None or "no training images found" not in str(error):
            raise
        raise ConfigError("validation_dir", folder, "holds no image in a <repeats>_<name> subfolder or directly in "
                                                    "it") from None
    except ConfigError as error:
        if folder is None or error.key != "train_data_dir":
            raise
        raise ConfigError("validation_dir", folder, error.reason) from None
    return RunValidation(validation, host, images, seed=seed, precision=precision, control=control, active=active)
