"""The plain LoRA mode: images and captions from train_data_dir, the noise-prediction loss of steps.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..data import TrainBatch, TrainData
from ..step_loss import batch_loss
from ..validation_run import training_selection
from .base import DataSource, TrainingMode

if TYPE_CHECKING:
    from ..loop import TrainRun
    from ..outputs import PreparedRun


class LoraMode(TrainingMode):
    """Images and captions (TrainData), each batch's loss by `steps.batch_loss`."""

    name = "lora"

    def data(self, trainer: TrainRun, *, seed: int) -> DataSource:
        config, dist = trainer.config, trainer.dist
        run_cfg = config.run
        return TrainData(config.data, trainer.host, seed=seed,
                         cache_text_encoder_outputs=run_cfg.cache_text_encoder_outputs, cache_dir=trainer.cache_dir,
                         rank=dist.rank, world_size=dist.world_size, sync=dist.barrier, share=dist.broadcast_int,
                         cache_text_encoder_outputs_to_disk=run_cfg.cache_text_encoder_outputs_to_disk,
                         select=training_selection(config, seed))

    def loss(self, trainer: TrainRun, run: PreparedRun, batch: TrainBatch) -> torch.Tensor:
        return batch_loss(trainer.host, batch, settings=run.settings, alphas_cumprod=run.alphas_cumprod,
                          generator=run.generator, precision=run.precision, encode_with_grad=run.encode_with_grad)
