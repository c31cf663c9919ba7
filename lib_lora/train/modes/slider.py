"""The slider mode (iLECO): a LoRA that moves a concept, learned from prompts alone, with the loaded model as its
own teacher.

Each step draws noise latents at random timesteps (the run's generator, min_timestep..max_timestep) and asks the
model with the LoRA off (multiplier 0) for its predictions on a prompt set's positive, unconditional and neutral
prompts; with the LoRA on, the target prompt must predict neutral ± guidance · (positive − unconditional)
(slider_prompts.py). No image is read. With slider_both_ways every other step trains the opposite change at
multiplier −1, so the LoRA is a symmetric slider. An epoch is one batch per prompt set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...hosts.base import Conditioning
from ...networks.metadata import DatasetRecord, ModeRecord
from .. import noise
from ..errors import ConfigError, TrainingError
from .base import TrainingMode
from .slider_prompts import PromptSet, prompt_sets

if TYPE_CHECKING:
    from ...hosts.base import Host
    from ...jobs import JobControl
    from ..loop import TrainRun
    from ..network.trainable import TrainableNetwork
    from ..outputs import PreparedRun

LATENT_CHANNELS = 4


@dataclass(frozen=True)
class SliderBatch:
    """One step of a slider: which prompt set, how many noise samples, their size in pixels (height, width)."""

    index: int
    size: int
    height: int
    width: int


class SliderData:
    """The prompt sets as batches: one per set and epoch, in the sets' order."""

    def __init__(self, sets: list[PromptSet], *, resolution: tuple[int, int], batch_size: int) -> None:
        if not sets:
            raise ConfigError("slider_prompt", None, "set the prompt whose concept the slider changes (or a "
                                                     "slider_prompts_file)")
        self.sets = sets
        self.ignored: list[str] = []
        width, height = resolution
        self._batches = [SliderBatch(index, s.batch_size or batch_size, s.resolution or height, s.resolution or width)
                         for index, s in enumerate(sets)]

    def prepare(self, control: JobControl | None = None) -> None:
        """Nothing to read: the targets come from the model as it trains."""

    def __len__(self) -> int:
        return len(self._batches)

    def batches(self, epoch: int) -> Iterator[SliderBatch]:
        return iter(self._batches)

    def metadata(self) -> dict[str, str]:
        counts = DatasetRecord(num_train_images=0, num_batches_per_epoch=len(self))
        mode = ModeRecord("slider", slider_prompts=[s.as_dict() for s in self.sets])
        return {**counts.to_metadata(), **mode.to_metadata()}


@contextmanager
def network_multiplier(network: TrainableNetwork, value: float) -> Iterator[None]:
    """The network at multiplier `value` for the block (restored after, also on errors)."""
    previous = network.multiplier
    network.multiplier = value
    try:
        yield
    finally:
        network.multiplier = previous


class SliderMode(TrainingMode):
    """LECO's loss on iLECO's inputs: noise latents, no generated images."""

    name = "slider"

    def __init__(self) -> None:
        self._data: SliderData | None = None
        self._conditions: dict[tuple[str, int, int], Conditioning] = {}
        self._steps = 0

    def data(self, trainer: TrainRun, *, seed: int) -> SliderData:
        config = trainer.config
        self._data = SliderData(prompt_sets(config.mode), resolution=config.data.resolution,
                                batch_size=config.data.train_batch_size)
        self._conditions.clear()
        return self._data

    def loss(self, trainer: TrainRun, run: PreparedRun, batch: SliderBatch) -> torch.Tensor:
        if self._data is None:
            raise TrainingError("the slider's prompt sets were not read before its first step")
        host, network, count = trainer.host, run.network, batch.size
        prompts = self._data.sets[batch.index]
        latents = torch.randn((count, LATENT_CHANNELS, batch.height // 8, batch.width // 8),
                              generator=run.generator, dtype=torch.float32)
        low, high = run.settings.timestep_range
        timesteps = noise.sample_timesteps(count, min_timestep=low, max_timestep=high, generator=run.generator)
        device = host.device
        size = (batch.height, batch.width)
        with torch.no_grad(), network_multiplier(network, 0.0), run.precision.autocast(device):
            texts = (prompts.positive, prompts.unconditional, prompts.neutral)
            cond = Conditioning.cat([self._fixed(host, text, size) for text in texts for _ in range(count)])
            teacher = host.apply_unet(latents.repeat(3, 1, 1, 1).to(device, host.dtype),
                                      timesteps.repeat(3).to(device), cond.to(device)).float()
        positive, unconditional, neutral = teacher.chunk(3)
        direction = -1.0 if trainer.config.mode.slider_both_ways and self._steps % 2 else 1.0
        self._steps += 1
        goal = neutral + direction * prompts.sign * prompts.guidance_scale * (positive - unconditional)
        with run.precision.autocast(device), network_multiplier(network, direction):
            if network.trains_text_encoder:
                own = host.encode_prompts([prompts.target], with_grad=True, size=size)
            else:
                own = self._fixed(host, prompts.target, size)  # no LoRA on the text encoder: the same with or without
            prediction = host.apply_unet(latents.to(device, host.dtype), timesteps.to(device),
                                         Conditioning.cat([own] * count).to(device))
        return torch.nn.functional.mse_loss(prediction.float(), goal)

    def _fixed(self, host: Host, text: str, size: tuple[int, int]) -> Conditioning:
        """`text` encoded once by the host with the LoRA off (the caller sets the multiplier), kept for the run."""
        key = (text, *size)
        if key not in self._conditions:
            with torch.no_grad():
                self._conditions[key] = host.encode_prompts([text], size=size).detach()
        return self._conditions[key]
