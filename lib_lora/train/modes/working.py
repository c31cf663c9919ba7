"""The host's working weights with trained LoRAs merged in, for modes that train on top of what they learned.

Merging uses the block-weight code's WeightMerger: every changed weight is backed up once (a copy of that weight
only, on the CPU) and rebuilt as backup + Σ strength·ΔW, never by subtracting, so `restore()` puts back the
loaded weights bit for bit. `working_weights(host)` restores on exit, also on errors and stops; runs enter it
inside `host.training_mode()`, so the host is exact afterwards however the run ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from ...networks.attach import AppliedLora, WeightMerger
from ...networks.formats.base import NetworkModule
from ...networks.keys import build_target_index
from ...networks.loaded import network_from_state_dict

if TYPE_CHECKING:
    from ...hosts.base import Host
    from ..network.trainable import TrainableNetwork


def network_modules(network: TrainableNetwork, name: str) -> Mapping[str, NetworkModule]:
    """The trained network as file modules (float32), as a LoRA file of it would load."""
    return network_from_state_dict(network.kohya_state_dict(torch.float32), name=name).modules


class WorkingWeights:
    """LoRAs merged into the host's weights, each at its strength; `restore()` gives the loaded weights back."""

    def __init__(self, host: Host) -> None:
        self._merger = WeightMerger(build_target_index(host))
        self._merged: list[AppliedLora] = []

    @property
    def merged(self) -> list[tuple[Mapping[str, NetworkModule], float]]:
        """What is merged, in order: (modules, strength)."""
        return [(lora.modules, lora.unet_multiplier) for lora in self._merged]

    def merge(self, network: TrainableNetwork, strength: float, name: str) -> None:
        """Merge `network` at `strength` on top of what is merged (text encoders and UNet alike)."""
        modules = network_modules(network, name)
        self._merged.append(AppliedLora(name=name, modules=modules, identity=f"{len(self._merged)}:{name}",
                                        te_multiplier=strength, unet_multiplier=strength))
        self._merger.apply(self._merged)

    def restore(self) -> None:
        """Every changed weight back from its backup (bit for bit); nothing merged afterwards."""
        self._merger.restore()
        self._merged.clear()


@contextmanager
def working_weights(host: Host) -> Iterator[WorkingWeights]:
    """WorkingWeights of `host` for the block; restored on exit, also when the block raises or is stopped."""
    weights = WorkingWeights(host)
    try:
        yield weights
    finally:
        weights.restore()
