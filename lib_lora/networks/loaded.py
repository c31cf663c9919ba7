"""A LoRA network loaded once: its parsed modules, metadata, format and a content identity.

`load_network` is the one way from a file to modules (files.py reads and validates, formats/ parses);
`as_applied` turns a network plus multipliers and block weights into what attach.py merges or hooks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .attach import AppliedLora
from .files import MODEL_HASH_KEY, addnet_hash, load_lora_file
from .formats import detect_format, parse_modules
from .formats.base import NetworkModule
from .metadata import arch_from_metadata

# Keys of textual-inversion embeddings bundled into a LoRA file (A1111 loads them as embeddings, not modules).
BUNDLED_EMBEDDING_PREFIX = "bundle_emb."


@dataclass(frozen=True)
class LoraNetwork:
    """A parsed LoRA file. `identity` is A1111's hash of its tensors (`sshs_model_hash`), so it names content."""

    name: str
    modules: Mapping[str, NetworkModule]
    metadata: Mapping[str, str]
    identity: str
    path: Path | None = None
    bundled_embeddings: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def format(self) -> str:
        """lora, locon, loha, lokr, dora or full (formats.detect_format)."""
        return detect_format(self.modules)

    @property
    def arch(self) -> str | None:
        """sd1, sd2 or sdxl as the metadata says (None when it does not)."""
        return arch_from_metadata(self.metadata)


def load_network(path: str | Path, *, name: str | None = None) -> LoraNetwork:
    """Read, validate and parse a LoRA file; LoraFormatError names the file and key of anything wrong."""
    path = Path(path)
    loaded = load_lora_file(path)
    identity = loaded.metadata.get(MODEL_HASH_KEY) or addnet_hash(path)
    return network_from_state_dict(loaded.tensors, name=name or path.stem, metadata=loaded.metadata,
                                   identity=identity, path=path)


def network_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    name: str,
    metadata: Mapping[str, str] | None = None,
    identity: str | None = None,
    path: Path | None = None,
) -> LoraNetwork:
    """A network from tensors already in memory; without `identity`, one is hashed from the tensors."""
    embeddings = {k: v for k, v in state_dict.items() if k.startswith(BUNDLED_EMBEDDING_PREFIX)}
    tensors = {k: v for k, v in state_dict.items() if k not in embeddings}
    modules = parse_modules(tensors, path=path)
    return LoraNetwork(
        name=name,
        modules=modules,
        metadata=dict(metadata or {}),
        identity=identity or tensors_identity(tensors),
        path=path,
        bundled_embeddings=embeddings,
    )


def tensors_identity(tensors: Mapping[str, torch.Tensor]) -> str:
    """A sha256 over names, dtypes, shapes and bytes of `tensors` (for networks that never touched a file)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def as_applied(
    network: LoraNetwork,
    *,
    te_multiplier: float = 1.0,
    unet_multiplier: float = 1.0,
    block_weights: Mapping[str, float] | None = None,
) -> AppliedLora:
    """The network with the multipliers and per-block weights a prompt asks for."""
    return AppliedLora(
        name=network.name,
        modules=network.modules,
        identity=network.identity,
        te_multiplier=te_multiplier,
        unet_multiplier=unet_multiplier,
        block_weights=dict(block_weights or {}),
    )
