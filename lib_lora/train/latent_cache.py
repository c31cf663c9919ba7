"""Cached VAE latents: in memory, and optionally as safetensors files in a cache folder that later runs reuse.

A latent is keyed by what decides it: the sha256 of the image file's bytes, the resize and crop (bucket,
resized size, crop offset), the flip, and the VAE's identity (a hash of a few of its weights, its dtype, the
latent scale and the host kind). Changing any of them gives a new key, so a stale file is never read. Files are
written atomically; a file that is unreadable, of the wrong shape or not finite is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from ..atomic import write_atomically
from ..errors import LoraFormatError
from ..networks.files import read_header

if TYPE_CHECKING:
    from ..hosts.base import Host

CACHE_FORMAT = "lora-studio-latent-1"
"""Bumped whenever the pixels we feed the VAE change for the same key (alpha handling, resampling, ...)."""
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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LatentKey:
    """Everything that decides one cached latent."""

    image_sha256: str
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


class LatentCache:
    """Latents by key: a memory dict in front of an optional folder of `<digest>.safetensors` files."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._memory: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, key: LatentKey) -> torch.Tensor | None:
        """The latent [C, h, w] (float32, CPU) for `key`, from memory or a valid disk file; None when absent."""
        digest = key.digest
        latent = self._memory.get(digest)
        if latent is None and self.folder is not None:
            latent = self._read(self.folder / f"{digest}.safetensors", key)
            if latent is not None:
                self._memory[digest] = latent
        return latent

    def put(self, key: LatentKey, latent: torch.Tensor) -> None:
        """Keep `latent` in memory and, with a folder, write it there atomically."""
        latent = latent.detach().to("cpu", torch.float32).contiguous()
        self._memory[key.digest] = latent
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            metadata = {"key": json.dumps(asdict(key), sort_keys=True), "format": CACHE_FORMAT}
            data = save_safetensors({"latents": latent}, metadata=metadata)
            write_atomically(self.folder / f"{key.digest}.safetensors", [data])

    @staticmethod
    def _read(path: Path, key: LatentKey) -> torch.Tensor | None:
        """The file's latent if it is whole and belongs to `key`; None for missing or damaged files (recomputed).

        The header is read first (at most MAX_HEADER_BYTES) and the tensor is loaded only when it is the one
        latent of `key`'s size, so a damaged or planted file can never make the read allocate more than that.
        """
        if not path.is_file():
            return None
        try:
            header = read_header(path)
            info = header.tensors.get("latents")
            if (header.metadata.get("key") != json.dumps(asdict(key), sort_keys=True) or info is None
                    or len(header.tensors) != 1 or len(info.shape) != 3 or info.shape[1:] != key.latent_size
                    or not 0 < info.shape[0] <= MAX_LATENT_CHANNELS):
                return None
            with safe_open(str(path), framework="pt") as f:
                latent = f.get_tensor("latents")
        except (LoraFormatError, OSError, SafetensorError, ValueError, RuntimeError, KeyError):
            return None
        if latent.dim() != 3 or tuple(latent.shape[1:]) != key.latent_size or not torch.isfinite(latent).all():
            return None
        return latent.to(torch.float32)


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
