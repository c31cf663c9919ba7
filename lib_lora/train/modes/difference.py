"""The difference mode: a LoRA of what differs between an original and a target image, nothing else.

two_pass (copy-machine learning): pass 1 trains a copy LoRA (copy_network_dim, all blocks) on the originals until
it reproduces them; it is merged into the working weights with an exact backup (working.py); pass 2 trains the
LoRA that is saved (network_dim and network_args: usually a lower rank and its own blocks) on the targets, so it
learns only what the copy does not already give. The weights are restored bit for bit however the run ends; the
copy LoRA is never saved.

direct (ADDifT): one pass on pairs. Both images of a pair get the same noise and timestep (min_timestep ..
max_timestep); with the LoRA at 1 the noisy target must predict what the model without it predicts for the noisy
original, which makes the LoRA's denoised picture the model's own plus (target − original). Every other batch
the roles swap at multiplier −1, so the result is a slider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...hosts.base import Conditioning
from .. import noise
from ..data import TrainBatch
from ..errors import TrainingError
from ..step_loss import batch_loss, make_noise
from .base import TrainingMode, phase_run, run_phase
from .pairs import PairBatch, PairData, Side, find_pairs
from .slider import network_multiplier
from .working import working_weights

if TYPE_CHECKING:
    from ...hosts.base import Host
    from ...jobs import JobControl
    from ..config import TrainConfig
    from ..loop import TrainRun
    from ..outputs import PreparedRun, TrainResult
    from ..resume_state import TrainPosition


class PairPass(TrainingMode):
    """One pass over one side of the pairs (the originals or the targets) with the plain noise-prediction loss."""

    name = "difference"

    def __init__(self, side: Side) -> None:
        self.side = side

    def data(self, trainer: TrainRun, *, seed: int) -> PairData:
        config = trainer.config
        pairs, left_out = find_pairs(config.mode)
        data = PairData(pairs, trainer.host, resolution=config.data.resolution,
                        batch_size=config.data.train_batch_size, caption=config.mode.difference_caption or "",
                        side=self.side, ignored=left_out)
        return data

    def loss(self, trainer: TrainRun, run: PreparedRun, batch: PairBatch) -> torch.Tensor:
        latents = batch.original if self.side == "original" else batch.target
        if latents is None:
            raise TrainingError(f"the image pairs carry no {self.side} latents for this pass")
        count = len(latents)
        plain = TrainBatch(latents=latents, captions=batch.captions, conditioning=None,
                           loss_weights=torch.ones(count), sizes=[batch.size] * count,
                           keys=[f"{self.side}:{index}" for index in range(count)])
        return batch_loss(trainer.host, plain, settings=run.settings, alphas_cumprod=run.alphas_cumprod,
                          generator=run.generator, precision=run.precision, encode_with_grad=run.encode_with_grad)


class DifferenceMode(PairPass):
    """two_pass: a copy pass, a merge, the difference pass; direct: one paired pass (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("both")
        self._conditions: dict[tuple[str, int, int], Conditioning] = {}
        self._steps = 0

    def execute(self, trainer: TrainRun, control: JobControl | None, notes: list[str], *, started: float,
                seed: int, resume: TrainPosition | None) -> TrainResult:
        config = trainer.config
        if config.mode.difference_method == "direct":
            return super().execute(trainer, control, notes, started=started, seed=seed, resume=resume)
        copy = phase_run(trainer, copy_pass_config(config), PairPass("original"), keep_files=False)
        with working_weights(trainer.host) as weights:
            first = run_phase(trainer, copy, control, notes, started=started, seed=seed)
            if first.cancelled or copy.prepared is None:
                notes.append("stopped in pass 1 (the copy of the original): nothing was saved")
                first.output = None
                return first
            weights.merge(copy.prepared.network, 1.0, "copy")
            notes.append(f"pass 1: a copy LoRA of rank {config.mode.copy_network_dim} learned the original in "
                         f"{first.steps} steps and was merged into the working weights")
            second = phase_run(trainer, config, PairPass("target"), keep_files=True)
            return run_phase(trainer, second, control, notes, started=started, seed=seed + 1)

    def loss(self, trainer: TrainRun, run: PreparedRun, batch: PairBatch) -> torch.Tensor:
        host, network = trainer.host, run.network
        if batch.original is None or batch.target is None:
            raise TrainingError("the direct difference needs both images of every pair")
        mirror = self._steps % 2 == 1
        self._steps += 1
        source, moved = (batch.target, batch.original) if mirror else (batch.original, batch.target)
        eps = make_noise(source, run.settings, run.generator)
        low, high = run.settings.timestep_range
        timesteps = noise.sample_timesteps(len(source), min_timestep=low, max_timestep=high,
                                           generator=run.generator).to(host.device)
        device = host.device
        with run.precision.autocast(device):
            with torch.no_grad(), network_multiplier(network, 0.0):
                cond = self._fixed(host, batch.captions, batch.size)
                noisy = noise.add_noise(source, eps, timesteps.cpu(), run.alphas_cumprod)
                teacher = host.apply_unet(noisy.to(device, host.dtype), timesteps, cond.to(device)).float()
            with network_multiplier(network, -1.0 if mirror else 1.0):
                if network.trains_text_encoder:
                    cond = host.encode_prompts(batch.captions, with_grad=True, size=batch.size)
                noisy = noise.add_noise(moved, eps, timesteps.cpu(), run.alphas_cumprod)
                prediction = host.apply_unet(noisy.to(device, host.dtype), timesteps, cond.to(device))
        return torch.nn.functional.mse_loss(prediction.float(), teacher)

    def _fixed(self, host: Host, captions: list[str], size: tuple[int, int]) -> Conditioning:
        """The captions encoded with the LoRA off, once per caption and size."""
        parts = []
        for text in captions:
            key = (text, *size)
            if key not in self._conditions:
                self._conditions[key] = host.encode_prompts([text], size=size).detach()
            parts.append(self._conditions[key])
        return Conditioning.cat(parts)


def copy_pass_config(config: TrainConfig) -> TrainConfig:
    """Pass 1's settings: a plain LoRA of copy_network_dim on every block, copy_max_train_steps at
    copy_lr, writing nothing."""
    mode = config.mode
    return config.with_values(
        network_module="networks.lora", network_dim=mode.copy_network_dim, network_alpha=mode.copy_network_alpha,
        network_args=[], network_weights=None, dim_from_weights=False,
        learning_rate=mode.copy_lr if mode.copy_lr is not None else config.learning_rate,
        max_train_steps=mode.copy_max_train_steps, max_train_epochs=None, save_every_n_epochs=None,
        save_every_n_steps=None, save_last_n_epochs=None, save_last_n_steps=None, save_state=False,
        save_state_on_train_end=False, sample_prompts=None, sample_every_n_steps=None, sample_every_n_epochs=None,
        sample_at_first=False, output_name=f"{config.run.output_name}-copy")
