"""What a run produces besides the weights in memory: its result record, sample images, saved files and states.

`RunOutputs` writes for one run (only on rank 0 when there are several processes, the others wait): samples
through the host, the LoRA file with its metadata, the Lora card files, and state folders to resume from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import LoraStudioError
from ..wording import plural
from .progress import ProgressTracker, path_text
from .sampling import SamplePrompt, render_samples
from .saving import (
    SAVE_DTYPES,
    RunFacts,
    build_metadata,
    card_sidecar,
    lora_path,
    read_sidecar,
    save_network_file,
    write_card_files,
)
from .state import TrainPosition, save_state

if TYPE_CHECKING:
    from ..hosts.base import Host
    from .config import TrainConfig
    from .data import TrainData
    from .distributed import Distributed
    from .network import TrainableNetwork
    from .runtime import Precision
    from .steps import LossSettings


@dataclass
class TrainResult:
    """What a run produced. `output` is the final LoRA (or, after a stop, the save of what was learned)."""

    output: Path | None
    steps: int
    epochs: int
    cancelled: bool = False
    saved: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    state_dirs: list[Path] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        loss = f", loss {sum(self.loss_history[-10:]) / len(self.loss_history[-10:]):.4f}" if self.loss_history else ""
        verb = "stopped; saved" if self.cancelled else "wrote"
        where = self.output if self.output is not None else "nothing"
        return (f"{verb} {where} ({plural(self.steps, 'step')}, {plural(self.epochs, 'full epoch')}{loss}, "
                f"{self.seconds:.1f} s)")


@dataclass
class PreparedRun:
    """Everything the first stages build, for the training stage and the saves."""

    data: TrainData
    network: TrainableNetwork
    optimizer: Any
    scheduler: Any
    scaler: Any
    params: list[torch.nn.Parameter]
    precision: Precision
    settings: LossSettings
    alphas_cumprod: torch.Tensor
    generator: torch.Generator
    position: TrainPosition
    batches_per_epoch: int
    total_steps: int
    total_epochs: int
    facts: RunFacts
    prompts: list[SamplePrompt]
    encode_with_grad: bool


class RunOutputs:
    """The files of one run under `output_dir`: samples, LoRA saves with their card, state folders."""

    def __init__(self, config: TrainConfig, host: Host, output_dir: Path, dist: Distributed) -> None:
        self.config = config
        self.host = host
        self.output_dir = output_dir
        self.dist = dist

    def samples(self, run: PreparedRun, result: TrainResult, tracker: ProgressTracker, *, step: int) -> None:
        """Render the sample prompts with the network as it is at `step`; the first image becomes the preview.

        A failing sample does not end the run (the weights matter more than a preview): it is noted in the result
        and sampling stops for the rest of the run.
        """
        failed = False
        if self.dist.is_main:
            try:
                paths = render_samples(self.host, run.prompts, modules=[run.network], output_dir=self.output_dir,
                                       output_name=self.config.run.output_name, step=step,
                                       run_seed=run.position.seed, default_size=self.config.data.resolution)
            except LoraStudioError as error:
                result.notes.append(f"samples stopped at step {step}: {error}")
                failed = True
            else:
                result.samples.extend(paths)
                tracker.sample = path_text(paths[0]) if paths else tracker.sample
        if self.dist.any_true(failed):  # every rank stops sampling, so they keep meeting at the same points
            run.prompts = []
        self.dist.barrier()

    def save(self, run: PreparedRun, result: TrainResult, tracker: ProgressTracker, stem: str, *, step: int, epoch: int,
             card: bool = False, finished: bool = False, with_state: bool | None = None) -> Path:
        """Save `<stem>.safetensors` (and its card files, and a state folder when asked or save_state is on)."""
        cfg = self.config.run
        path = lora_path(self.output_dir, stem)
        if self.dist.is_main:
            metadata = build_metadata(self.config, run.facts, step=step, epoch=epoch, finished=finished)
            tensors = run.network.kohya_state_dict(SAVE_DTYPES[cfg.save_precision])
            save_network_file(path, tensors, metadata)
            result.saved.append(path)
            tracker.saved = str(path)
            if card:
                sidecar = card_sidecar(run.facts.arch, activation_text=run.facts.activation_text,
                                       preferred_weight=cfg.preferred_weight, notes=cfg.notes,
                                       existing=read_sidecar(path))
                preview = Path(tracker.sample) if tracker.sample else None
                write_card_files(path, sidecar, preview)
            if with_state if with_state is not None else cfg.save_state:
                run.position.loss_history = list(tracker.losses)
                folder = self.output_dir / f"{stem}-state"
                save_state(folder, position=run.position, network=run.network, optimizer=run.optimizer,
                           scheduler=run.scheduler, noise_generator=run.generator, scaler=run.scaler)
                result.state_dirs.append(folder)
        self.dist.barrier()
        return path
