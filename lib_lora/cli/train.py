"""`python -m lib_lora train CONFIG.toml [--set key=value ...]`: a training run on a diffusers host, headless.

The config is ours or an sd-scripts config file (same option names); `pretrained_model_name_or_path` picks the
model ("tiny", "tiny-sdxl", a diffusers folder, a .safetensors checkpoint). Progress goes to stderr, the result to
stdout as one line; a bad config is reported by cli.main as one `lora-studio: error: …` line with exit code 2.
Under `accelerate launch` or `torchrun` (WORLD_SIZE > 1) every process trains on its share of the batches, the
gradients are averaged, and only rank 0 prints and writes. The first Ctrl+C stops after the current step and
saves what was learned; a second one interrupts at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..backups import BACKUP_DIR_NAME

if TYPE_CHECKING:
    from ..train.config import TrainConfig
    from ..train.loop import TrainRun
    from ..train.progress import TrainProgress

PROGRESS_EVERY_S = 1.0
"""Progress lines at most this often (plus the first and last step)."""


def add_train_parser(commands: argparse._SubParsersAction, *, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `train` on the top-level command list."""
    parser = commands.add_parser(
        "train",
        parents=list(parents),
        help="train a LoRA from a TOML config (sd-scripts option names)",
        description="Train a LoRA headless. The config is a TOML file of sd-scripts options (flat, or in "
        "sd-scripts' [sections]); pretrained_model_name_or_path = \"tiny\" uses the built-in tiny model. Run it "
        "under `accelerate launch` or `torchrun` to train on several processes.",
        epilog="A bad config prints one line `lora-studio: error: …` naming the option, and exits with 2; so does "
        "an existing LoRA of the same name without --force, and a LoRA that could not be written where asked (the "
        "line says where its weights went instead).",
    )
    parser.add_argument("config", type=Path, help="the TOML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change one option (TOML value syntax: 1e-4, true, \"text\", [\"conv_dim=4\"]; bare "
                        "words are text); repeatable")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available; under a "
                        "launcher, each process's own)")
    parser.add_argument("--dtype", default=None, help="load the model as float32, float16 or bfloat16")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective config as TOML (with --set applied) and exit")
    parser.add_argument("--vram", action="store_true", help="print the GPU-memory estimate and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing LoRA of the same output_name (the old one is kept in "
                        f"{BACKUP_DIR_NAME}/ beside it)")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as a TOML value, else kept as text; ConfigError for a missing `=`."""
    from ..train.errors import ConfigError

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected key=value, e.g. --set max_train_steps=200")
    return key.strip(), toml_literal(raw.strip())


def toml_literal(raw: str) -> Any:
    """A TOML value (number, boolean, string, array) or, when it is none, the text itself."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10 (A1111's)
        import tomli as tomllib
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def load_config(path: Path, overrides: Sequence[str]) -> TrainConfig:
    """The config file with the `--set` overrides applied (validated together)."""
    from ..train.config import TrainConfig

    config = TrainConfig.from_toml(path)
    if not overrides:
        return config
    changes = dict(parse_override(item) for item in overrides)
    return TrainConfig.from_dict({**config.to_dict(), **changes}).with_notes(*config.notes)


def run_train_command(args: argparse.Namespace, out: TextIO, err: TextIO | None = None) -> None:
    """Load the config and the model, train, print the result; core errors propagate to cli.main."""
    from ..train.errors import ConfigError, TrainingError

    err = err or sys.stderr
    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(config.to_toml(), file=out, end="")
        return
    model = config.run.pretrained_model_name_or_path
    if model is None:
        raise ConfigError("pretrained_model_name_or_path", None,
                          "set the model to train on: tiny, tiny-sdxl, a diffusers folder or a .safetensors file")
    if not args.vram:
        from ..train.optim import check_optimizer

        _check_outputs(config, force=args.force)
        check_optimizer(config.optimizer)  # a package not installed, or arguments it does not take: before the model
    distributed = _distributed(args.device)
    host = _load_host(model, args, distributed)
    if args.vram:
        from ..train.vram import estimate_vram

        print(estimate_vram(config, host).describe(), file=out)
        return
    say = _Printer(err, enabled=distributed.is_main and not args.quiet)
    if config.run.v_parameterization and host.prediction_type != "v_prediction":
        # standalone we loaded the model ourselves: its scheduler learns what the config says it predicts
        host.pipeline.scheduler.register_to_config(prediction_type="v_prediction")
        say.line("v_parameterization: the model's scheduler is set to v-prediction for training and samples")
    from ..train.loop import TrainRun

    for note in config.notes:
        say.line(f"note: {note}")
    run = TrainRun(config, host, distributed=distributed, on_step=say.progress)
    say.line(f"training {config.run.output_name} on {host.info().model_name} ({host.arch.name}, {host.device}"
             + (f", {distributed.world_size} processes" if distributed.active else "") + ")")
    with _stop_on_interrupt(run, say):
        result = run.run()
    if distributed.is_main:
        for note in result.notes[len(config.notes):]:
            say.line(f"note: {note}")
        print(f"train: {result.summary()}", file=out, flush=True)
        if result.save_problem:
            raise TrainingError(f"the LoRA was {result.save_problem}")


def _check_outputs(config: TrainConfig, *, force: bool) -> None:
    """Before any work: every name the run writes fits its file system, the folder can be written, and an existing
    LoRA of the same name is replaced only with --force."""
    from ..train.errors import ConfigError
    from ..train.outputs import check_run_outputs, existing_output

    folder = check_run_outputs(config, config.run.output_dir)
    existing = existing_output(config, folder)
    if existing is not None and not force:
        raise ConfigError("output_name", config.run.output_name,
                          f"{existing} already exists; pass --force to replace it (the old file is kept in "
                          f"{BACKUP_DIR_NAME}/ beside it) or choose another output_name")


def _distributed(device: str | None) -> Any:
    import torch

    from ..train.distributed import Distributed

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    return Distributed.from_environment(cpu=cpu)


def _load_host(model: str, args: argparse.Namespace, distributed: Any) -> Any:
    import torch

    from ..hosts.diffusers import load_diffusers_host

    device = args.device
    if device is None:
        device = str(distributed.device) if distributed.active else ("cuda" if torch.cuda.is_available() else None)
    return load_diffusers_host(model, device=device, dtype=args.dtype)


class _Printer:
    """Progress lines on stderr, at most one a second (first and last step always)."""

    def __init__(self, err: TextIO, *, enabled: bool) -> None:
        self.err = err
        self.enabled = enabled
        self._last = 0.0

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"train: {text}", file=self.err, flush=True)

    def progress(self, progress: TrainProgress) -> None:
        now = time.monotonic()
        edge = progress.step in (1, progress.total_steps)
        if edge or now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self.line(progress.message)


@contextmanager
def _stop_on_interrupt(run: TrainRun, say: _Printer) -> Iterator[None]:
    """First SIGINT: stop after this step and save; the second: the usual KeyboardInterrupt."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        say.line("stopping after this step (Ctrl+C again to interrupt at once)")
        run.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
