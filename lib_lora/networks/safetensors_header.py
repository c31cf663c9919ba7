"""The safetensors header: its dtypes, and a parser that validates every entry before any data is read.

safetensors' own reader trusts the header's sizes and offsets; a LoRA file comes from anywhere, so the header is
read here first: its length bounded, its JSON strict (no duplicate keys), every entry's dtype, shape and offsets
checked, and the tensors required to tile the data section exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import torch

from ..errors import LoraFormatError
from ..wording import echo

__all__ = ["DTYPES", "DTYPE_NAMES", "DTYPE_RANK", "MAX_HEADER_BYTES", "SafetensorsHeader", "TensorInfo",
           "parse_header"]

MAX_HEADER_BYTES = 16 * 1024 * 1024  # LoRA headers are kilobytes; embedded cover images stay well under this

# safetensors dtype name -> torch dtype, in safetensors' own enum order: the writer lays tensors out by descending
# rank, then by name, as safetensors does, so our data section is byte-identical to `safetensors.torch.save`'s.
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn,
    "I16": torch.int16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
DTYPE_RANK: dict[str, int] = {name: rank for rank, name in enumerate(DTYPES)}


class TensorInfo(NamedTuple):
    """One header entry: safetensors dtype name, shape, and [begin, end) byte offsets into the data section."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header; `header_size` is the JSON length, the data section follows at 8 + it."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_size: int
    data_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_size


def parse_header(f: BinaryIO, file_size: int, path: Path) -> SafetensorsHeader:
    """The validated header of the safetensors file open in `f` (at its start); LoraFormatError naming `path`."""
    prefix = f.read(8)
    if file_size < 8 or len(prefix) < 8:
        raise LoraFormatError(
            f"the file is {file_size} bytes; a safetensors file starts with 8 length bytes", path=path
        )
    n = int.from_bytes(prefix, "little")
    if n > MAX_HEADER_BYTES:
        raise LoraFormatError(f"header length {n} is over the {MAX_HEADER_BYTES}-byte limit", path=path)
    if n > file_size - 8:
        raise LoraFormatError(f"header length {n} is larger than the {file_size - 8} bytes after it", path=path)
    raw = f.read(n)
    if len(raw) != n:
        raise LoraFormatError(f"the header is cut short: read {len(raw)} of {n} bytes", path=path)
    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except UnicodeDecodeError as error:
        raise LoraFormatError(f"the header is not UTF-8 ({error.reason} at byte {error.start})", path=path) from None
    except (ValueError, RecursionError) as error:
        raise LoraFormatError(f"the header is not valid JSON: {error}", path=path) from None
    if not isinstance(parsed, dict):
        raise LoraFormatError(f"the header is a JSON {type(parsed).__name__}, not an object", path=path)
    metadata = _header_metadata(parsed.pop("__metadata__", None), path)
    data_size = file_size - 8 - n
    tensors = {name: _tensor_info(name, entry, path) for name, entry in parsed.items()}
    _check_layout(tensors, data_size, path)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_size=n, data_size=data_size)


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {echo(key)}")
        result[key] = value
    return result


def _header_metadata(raw: object, path: Path) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LoraFormatError(f"__metadata__ is a JSON {type(raw).__name__}, not an object", path=path)
    for key, value in raw.items():
        if not isinstance(value, str):
            raise LoraFormatError(f"metadata value is a JSON {type(value).__name__}, not a string", path=path, key=key)
    return dict(raw)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_info(name: str, entry: object, path: Path) -> TensorInfo:
    if not isinstance(entry, dict):
        raise LoraFormatError(f"header entry is a JSON {type(entry).__name__}, not an object", path=path, key=name)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise LoraFormatError(f"unknown dtype {echo(dtype)}; expected one of {', '.join(DTYPES)}", path=path, key=name)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise LoraFormatError(f"shape must be a list of non-negative integers, got {echo(shape)}", path=path, key=name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise LoraFormatError(f"data_offsets must be two integers, got {echo(offsets)}", path=path, key=name)
    begin, end = offsets
    if not 0 <= begin <= end:
        raise LoraFormatError(f"data_offsets [{begin}, {end}] are not an ordered pair from 0", path=path, key=name)
    numel = 1
    for dim in shape:
        numel *= dim
    expected = numel * DTYPES[dtype].itemsize
    if expected != end - begin:
        raise LoraFormatError(
            f"shape {shape} of {dtype} needs {expected} bytes but data_offsets span {end - begin}", path=path, key=name
        )
    return TensorInfo(dtype, tuple(shape), (begin, end))


def _check_layout(tensors: Mapping[str, TensorInfo], data_size: int, path: Path) -> None:
    """Tensors must tile the data section exactly, as safetensors requires: no overlap, no gap, nothing after."""
    position, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: item[1].offsets):
        begin, end = info.offsets
        if end > data_size:
            raise LoraFormatError(
                f"data ends at byte {end} but the data section has only {data_size} bytes (truncated file?)",
                path=path,
                key=name,
            )
        if begin < position:
            raise LoraFormatError(f"data_offsets overlap those of {echo(previous)}", path=path, key=name)
        if begin > position:
            raise LoraFormatError(f"{begin - position} unused bytes before this tensor's data", path=path, key=name)
        position, previous = end, name
    if position != data_size:
        raise LoraFormatError(f"{data_size - position} bytes after the last tensor belong to none", path=path)
