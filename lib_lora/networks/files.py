"""LoRA files on disk: validated reading (safetensors, weights-only pickles), atomic kohya-format writing, hashes.

Nothing here knows module types: reading returns the flat tensor dict, writing takes one. The metadata builder and
parser live in `metadata/`, the safetensors header's parser in `safetensors_header.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from ..atomic import write_atomically
from ..errors import LoraFormatError
from ..wording import echo
from .pickle_limits import load_weights_only
from .safetensors_header import (
    DTYPE_NAMES,
    DTYPE_RANK,
    DTYPES,
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    TensorInfo,
    parse_header,
)

__all__ = [
    "LEGACY_HASH_KEY",
    "MAX_HEADER_BYTES",
    "MAX_LORA_BYTES",
    "MODEL_HASH_KEY",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "SHORT_HASH_LENGTH",
    "LoraStateDict",
    "SafetensorsHeader",
    "TensorInfo",
    "addnet_hash",
    "load_lora_file",
    "read_header",
    "save_lora_file",
    "save_safetensors_file",
    "short_hash",
]

MAX_LORA_BYTES = 2 * 1024**3
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin")
SHORT_HASH_LENGTH = 12  # A1111's shorthash, as shown in infotext "Lora hashes"
MODEL_HASH_KEY = "sshs_model_hash"
LEGACY_HASH_KEY = "sshs_legacy_hash"

_HASH_BLOCK = 1024 * 1024
_LEGACY_START, _LEGACY_STOP = 0x100000, 0x110000  # the 64 KiB at 1 MiB that the old additional-networks hash reads


@dataclass
class LoraStateDict:
    """A LoRA file as loaded: the flat tensor dict and its `__metadata__` strings (empty for pickles)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


# --- reading ----------------------------------------------------------------------------------------------------


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate a safetensors header without reading the data; raises LoraFormatError naming the file."""
    path = Path(path)
    size = _regular_file_size(path)
    with _open_for_reading(path) as f:
        return parse_header(f, size, path)


def load_lora_file(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_LORA_BYTES, device: str | torch.device = "cpu"
) -> LoraStateDict:
    """Load a .safetensors (header checked first) or a weights-only .pt/.ckpt/.bin; every float must be finite.

    `max_bytes` bounds the file's size on disk and, for a pickle, what its zip unpacks to (`pickle_limits`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        expected = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
        raise LoraFormatError(f"unsupported file type {path.suffix or '(none)'!r}; expected {expected}", path=path)
    size = _regular_file_size(path)
    if size == 0:
        raise LoraFormatError("the file is empty (0 bytes)", path=path)
    if size > max_bytes:
        raise LoraFormatError(f"the file is {size} bytes, more than the {max_bytes} allowed", path=path)
    if suffix in SAFETENSORS_SUFFIXES:
        tensors, metadata = _load_safetensors(path)
    else:
        tensors, metadata = _load_weights_only_pickle(path, max_bytes), {}
    if not tensors:
        raise LoraFormatError("the file holds no tensors", path=path)
    for key, tensor in tensors.items():
        _check_tensor(tensor, path, key)
    if torch.device(device).type != "cpu":
        tensors = {key: tensor.to(device) for key, tensor in tensors.items()}
    return LoraStateDict(path=path, tensors=tensors, metadata=metadata)


def _regular_file_size(path: Path) -> int:
    try:
        status = path.stat()
    except FileNotFoundError:
        raise LoraFormatError("no such file", path=path) from None
    except OSError as error:
        raise LoraFormatError(f"cannot read the file: {error.strerror or error}", path=path) from error
    if stat.S_ISDIR(status.st_mode):
        raise LoraFormatError("is a directory, not a file", path=path)
    if not stat.S_ISREG(status.st_mode):
        raise LoraFormatError("is not a regular file", path=path)
    return status.st_size


@contextlib.contextmanager
def _open_for_reading(path: Path) -> Iterator[BinaryIO]:
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise LoraFormatError(f"cannot open the file: {error.strerror or error}", path=path) from error
    with handle:
        yield handle


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    header = read_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in header.tensors}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise LoraFormatError(f"safetensors could not load the file: {error}", path=path) from error
    return tensors, header.metadata


def _load_weights_only_pickle(path: Path, max_bytes: int) -> dict[str, torch.Tensor]:
    loaded = load_weights_only(path, max_bytes=max_bytes)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise LoraFormatError(f"expected a dict of tensors, got {type(loaded).__name__}", path=path)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(key, str):
            raise LoraFormatError(f"keys must be strings, got {type(key).__name__} {echo(key)}", path=path)
        if not isinstance(value, torch.Tensor):
            raise LoraFormatError(f"value is {type(value).__name__}, not a tensor", path=path, key=key)
        tensors[key] = value
    return tensors


def _check_tensor(tensor: torch.Tensor, path: Path, key: str) -> None:
    if tensor.layout != torch.strided:
        raise LoraFormatError(f"{tensor.layout} tensors are not supported", path=path, key=key)
    if tensor.dtype not in DTYPE_NAMES:
        raise LoraFormatError(f"unsupported dtype {tensor.dtype}", path=path, key=key)
    if tensor.dtype.is_floating_point and tensor.numel():
        values = tensor if tensor.dtype.itemsize > 1 else tensor.float()  # fp8: isfinite wants a wider type
        if not bool(torch.isfinite(values).all()):
            bad = "NaN" if bool(torch.isnan(values).any()) else "infinite"
            raise LoraFormatError(f"holds {bad} values", path=path, key=key)


# --- hashes -----------------------------------------------------------------------------------------------------


def addnet_hash(path: str | os.PathLike[str]) -> str:
    """A1111's hash of a safetensors file: sha256 (hex) of every byte after the header."""
    path = Path(path)
    size = _regular_file_size(path)
    with _open_for_reading(path) as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or n > size - 8:
            raise LoraFormatError("not a safetensors file: the header length does not fit the file", path=path)
        f.seek(8 + n)
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def short_hash(full_hash: str) -> str:
    """The first 12 hex digits, as A1111 shows a LoRA's hash in infotext."""
    return full_hash[:SHORT_HASH_LENGTH]


def _legacy_hash(chunks: Iterable[bytes | memoryview]) -> str:
    """First 8 hex of sha256 over bytes [1 MiB, 1 MiB + 64 KiB) of the concatenated chunks (fewer if shorter)."""
    digest, position = hashlib.sha256(), 0
    for chunk in chunks:
        end = position + len(chunk)
        if end > _LEGACY_START:
            digest.update(chunk[max(_LEGACY_START - position, 0) : min(_LEGACY_STOP, end) - position])
        position = end
        if position >= _LEGACY_STOP:
            break
    return digest.hexdigest()[:8]


# --- writing ----------------------------------------------------------------------------------------------------


def save_lora_file(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> str:
    """Write a kohya-format .safetensors atomically, adding sshs_model_hash/sshs_legacy_hash; returns the model hash.

    sshs_model_hash is A1111's hash of this file (sha256 of the data section, which no metadata changes).
    sshs_legacy_hash follows sd-scripts: 8 hex of sha256 over the 64 KiB at 1 MiB of the same tensors serialised with
    only the ss_* metadata. Refuses what `load_lora_file` would refuse (non-finite values, unknown dtypes).
    """
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise LoraFormatError("LoRA files are written as .safetensors", path=path)
    strings = _checked_metadata(metadata, path)
    names, buffers, entries = _prepare_tensors(tensors, path)
    data_hash = hashlib.sha256()
    for buffer in buffers:
        data_hash.update(buffer)
    model_hash = data_hash.hexdigest()
    training_only = {key: value for key, value in strings.items() if key.startswith("ss_")}
    strings[MODEL_HASH_KEY] = model_hash
    strings[LEGACY_HASH_KEY] = _legacy_hash([_encode_header(names, entries, training_only, path), *buffers])
    write_atomically(path, [_encode_header(names, entries, strings, path), *buffers])
    return model_hash


def save_safetensors_file(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write any tensors (a whole checkpoint too) and string metadata as .safetensors atomically, nothing added.

    Same layout, checks and temp-file-then-rename as `save_lora_file`, without the LoRA hashes.
    """
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise LoraFormatError("only .safetensors files are written", path=path)
    strings = _checked_metadata(metadata, path)
    names, buffers, entries = _prepare_tensors(tensors, path)
    write_atomically(path, [_encode_header(names, entries, strings, path), *buffers])


def _checked_metadata(metadata: Mapping[str, str], path: Path) -> dict[str, str]:
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise LoraFormatError(f"metadata names must be non-empty strings, got {echo(key)}", path=path)
        if not isinstance(value, str):
            raise LoraFormatError(f"metadata value is {type(value).__name__}, not a string", path=path, key=key)
    return dict(metadata)


def _prepare_tensors(
    tensors: Mapping[str, torch.Tensor], path: Path
) -> tuple[list[str], list[memoryview], list[tuple[str, list[int]]]]:
    """Tensors in safetensors' order (dtype rank descending, then name), as CPU bytes, with (dtype, shape)."""
    if not tensors:
        raise LoraFormatError("nothing to save: no tensors", path=path)
    prepared: list[tuple[str, torch.Tensor]] = []
    for key, tensor in tensors.items():
        if not isinstance(key, str) or not key or key == "__metadata__":
            raise LoraFormatError(
                f"tensor names must be non-empty strings other than __metadata__, got {echo(key)}", path=path
            )
        if not isinstance(tensor, torch.Tensor):
            raise LoraFormatError(f"value is {type(tensor).__name__}, not a tensor", path=path, key=key)
        cpu = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        _check_tensor(cpu, path, key)
        prepared.append((key, cpu))
    prepared.sort(key=lambda item: (-DTYPE_RANK[DTYPE_NAMES[item[1].dtype]], item[0]))
    names = [key for key, _ in prepared]
    # safetensors is little-endian, like every platform torch ships wheels for
    buffers = [memoryview(t.reshape(-1).view(torch.uint8).numpy()) for _, t in prepared]
    entries = [(DTYPE_NAMES[t.dtype], list(t.shape)) for _, t in prepared]
    return names, buffers, entries


def _encode_header(
    names: list[str], entries: list[tuple[str, list[int]]], metadata: Mapping[str, str], path: Path
) -> bytes:
    """8 length bytes + the JSON header, laid out as safetensors writes it (sorted metadata, space-padded to 8)."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    position = 0
    for name, (dtype, shape) in zip(names, entries):
        size = DTYPES[dtype].itemsize
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [position, position + size]}
        position += size
    try:
        encoded = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as error:
        raise LoraFormatError(f"metadata or a tensor name is not encodable as UTF-8: {error}", path=path) from None
    encoded += b" " * (-len(encoded) % 8)
    if len(encoded) > MAX_HEADER_BYTES:
        raise LoraFormatError(f"the header would be {len(encoded)} bytes, over {MAX_HEADER_BYTES}", path=path)
    return len(encoded).to_bytes(8, "little") + encoded
