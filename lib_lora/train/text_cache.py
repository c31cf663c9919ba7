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
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..hosts.base import Conditioning
from .cache_shards import MAX_OPEN_SHARDS, ShardStore

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


class TextCache:
    """Text-encoder outputs (one row each) by key: a memory dict, or with a folder the shards there."""

    def __init__(self, folder: Path | None = None, *, max_open_shards: int = MAX_OPEN_SHARDS) -> None:
        self._memory: dict[str, Conditioning] = {}
        self.store = None if folder is None else ShardStore(folder, SHARD_KIND, format_name=TEXT_FORMAT,
                                                            max_open=max_open_shards)

    def refresh(self) -> None:
        if self.store is not None:
            self.store.refresh()

    @property
    def on_disk(self) -> bool:
        return self.store is not None

    def has(self, key: TextKey) -> bool:
        if self.store is None:
            return key.digest in self._memory
        fields = self.store.fields(key.digest)
        return fields is not None and _CONTEXT in fields and all(
            len(info.shape) >= 1 and info.shape[0] == 1 for info in fields.values())

    def get(self, key: TextKey) -> Conditioning | None:
        """The cached output [1, ...] (CPU) for `key`; None when absent or not finite."""
        if self.store is None:
            return self._memory.get(key.digest)
        while self.has(key):
            tensors = self.store.read(key.digest)
            if tensors is None:
                return None
            if all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
                extra = {name[len(_EXTRA):]: t for name, t in tensors.items() if name.startswith(_EXTRA)}
                return Conditioning(tensors[_CONTEXT], extra)
            self.store.forget(key.digest)
        return None

    def put(self, key: TextKey, value: Conditioning) -> None:
        """Keep one row's output in memory or, with a folder, buffer it for the next shard."""
        value = value.detach().to("cpu")
        if self.store is None:
            self._memory[key.digest] = value
        else:
            tensors = {_CONTEXT: value.context, **{f"{_EXTRA}{name}": t for name, t in value.extra.items()}}
            self.store.add(key.digest, tensors)

    @property
    def full(self) -> bool:
        return self.store is not None and self.store.full

    def flush(self) -> None:
        if self.store is not None:
            self.store.flush()
