"""Cached text-encoder outputs: in memory, or in shard files (cache_shards) beside the cached latents.

An output is keyed by the caption as the host receives it, the SDXL size conditioning, and the text encoder's
identity. That identity is what the host's encoder makes of a probe caption (hashed): a WebUI host encodes with
its own Clip skip and emphasis settings, which a run cannot read, so only the output tells whether a cached
encoding still holds. Anything that changes the encoding changes the probe's output, and no stale shard is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..hosts.base import Conditioning
from ..networks.files import TensorInfo
from .cache_shards import ShardedCache

if TYPE_CHECKING:
    from ..hosts.base import Host

TEXT_FORMAT = "lora-studio-text-1"
SHARD_KIND = "text"
PROBE_CAPTION = "a (probe:1.1) caption, [with] emphasis, 1girl"
"""Encoded once per run to name the text encoder as it encodes (clip skip and emphasis handling included)."""
_CONTEXT = "context"
_EXTRA = "extra."


def text_encoder_identity(host: Host, size: tuple[int, int] | None) -> str:
    """A short hash of the host's encoding of PROBE_CAPTION (at `size`), its dtype and the host kind."""
    with torch.no_grad():
        probe = host.encode_prompts([PROBE_CAPTION], with_grad=False, size=size).detach().to("cpu")
    digest = hashlib.sha256(f"{host.kind}|{host.arch.name}".encode())
    for name, tensor in [(_CONTEXT, probe.context)] + sorted(probe.extra.items()):
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class TextKey:
    """Everything that decides one cached text-encoder output."""

    text: str
    size: tuple[int, int] | None
    encoder: str

    @property
    def digest(self) -> str:
        fields = {"format": TEXT_FORMAT, "text": self.text, "size": self.size, "encoder": self.encoder}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def text_order(key: TextKey) -> tuple[tuple[int, int], str]:
    """The order captions are encoded in: by size (SDXL), then text."""
    return key.size or (0, 0), key.text


class TextCache(ShardedCache[TextKey, Conditioning]):
    """Text-encoder outputs (one row each, CPU) by key (cache_shards.ShardedCache); a copy that is not finite is
    skipped."""

    KIND = SHARD_KIND
    FORMAT = TEXT_FORMAT

    def _fits(self, fields: dict[str, TensorInfo], key: TextKey) -> bool:
        return _CONTEXT in fields and all(len(info.shape) >= 1 and info.shape[0] == 1 for info in fields.values())

    def _on_cpu(self, value: Conditioning) -> Conditioning:
        return value.detach().to("cpu")

    def _tensors(self, value: Conditioning) -> dict[str, torch.Tensor]:
        return {_CONTEXT: value.context, **{f"{_EXTRA}{name}": t for name, t in value.extra.items()}}

    def _value(self, tensors: dict[str, torch.Tensor]) -> Conditioning | None:
        if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
            return None
        extra = {name[len(_EXTRA):]: t for name, t in tensors.items() if name.startswith(_EXTRA)}
        return Conditioning(tensors[_CONTEXT], extra)
