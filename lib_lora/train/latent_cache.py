"""Cached VAE latents: in memory, or in shard files in a cache folder that later runs, other ranks and resumed
runs reuse (cache_shards).

A latent is keyed by what decides it: the image file (its path, size and modification time: reading every
image's bytes to hash them would cost as long as a scan of 126 GiB, and an edited file changes its time), the
resize and crop (bucket, resized size, crop offset), the flip, and the VAE's identity (a hash of a few of its
weights, its dtype, the latent scale and the host kind). Changing any of them gives a new key, so a stale latent
is never read. An entry of the wrong shape is never loaded; one that is not finite is found by `verify` and
computed again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..networks.files import TensorInfo
from .cache_shards import ShardedCache

if TYPE_CHECKING:
    from ..hosts.base import Host

CACHE_FORMAT = "lora-studio-latent-2"
"""Bumped whenever the pixels we feed the VAE change for the same key (alpha handling, resampling, ...)."""
SHARD_KIND = "latents"
LATENT_FACTOR = 8
"""Pixels per latent cell along each side for every SD1/SD2/SDXL VAE."""
MAX_LATENT_CHANNELS = 16
"""The most latent channels a cache file may hold (SD1/SD2/SDXL have 4; newer VAEs 16)."""


def derived_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on `parts` (not on PYTHONHASHSEED or the platform)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def cache_seed(run_seed: int, key: LatentKey) -> int:
    """The seed of the VAE posterior sample for a batch of latents to cache whose first latent is `key`."""
    return derived_seed(run_seed, "cache", key.digest)


def vae_identity(host: Host) -> str:
    """A short hash naming the host's VAE as it encodes: its first and last two weights, dtype, scale and host kind."""
    named = list(host.vae.named_parameters())
    digest = hashlib.sha256(f"{host.kind}|{host.arch.name}|{host.latent_scale!r}".encode())
    for name, parameter in named[:2] + named[-2:]:
        tensor = parameter.detach().to("cpu").contiguous()
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def image_identity(path: Path, file_size: int, mtime_ns: int) -> str:
    """A short hash naming one version of an image file: its absolute path, size and modification time."""
    return hashlib.sha256(f"{Path(path).resolve()}|{file_size}|{mtime_ns}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class LatentKey:
    """Everything that decides one cached latent."""

    image: str
    """image_identity() of the file."""
    bucket: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    flipped: bool
    vae: str

    @property
    def digest(self) -> str:
        fields = {"format": CACHE_FORMAT, **asdict(self)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    @property
    def latent_size(self) -> tuple[int, int]:
        """(height, width) of the latent in cells."""
        return self.bucket[1] // LATENT_FACTOR, self.bucket[0] // LATENT_FACTOR


class LatentCache(ShardedCache[LatentKey, torch.Tensor]):
    """Latents [C, h, w] (float32, CPU) by key (cache_shards.ShardedCache). A shard entry's shape is checked from
    its header before its tensor is loaded, so a damaged or planted file can never make a read allocate more than
    one latent of the key's size; a copy that is not finite is skipped."""

    KIND = SHARD_KIND
    FORMAT = CACHE_FORMAT

    def _fits(self, fields: dict[str, TensorInfo], key: LatentKey) -> bool:
        info = fields.get("latents")
        return (info is not None and len(fields) == 1 and len(info.shape) == 3
                and info.shape[1:] == key.latent_size and 0 < info.shape[0] <= MAX_LATENT_CHANNELS)

    def _on_cpu(self, value: torch.Tensor) -> torch.Tensor:
        return value.detach().to("cpu", torch.float32).contiguous()

    def _tensors(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"latents": value}

    def _value(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
        latents = tensors["latents"]
        return latents.to(torch.float32) if torch.isfinite(latents).all() else None


def encode_pixels(host: Host, pixels: torch.Tensor, *, seed: int) -> torch.Tensor:
    """`host.encode_images(pixels)` without grad, its posterior sample drawn from `seed`; float32 on the CPU.

    The global RNG is left as it was (the draw happens inside a forked RNG state).
    """
    device = torch.device(host.device)
    cuda_devices = [torch.cuda.current_device() if device.index is None else device.index] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
        torch.manual_seed(seed)
        return host.encode_images(pixels).detach().to("cpu", torch.float32)
