"""Weights-only PyTorch pickles, bounded before torch reads them: what the zip unpacks to, checked from its directory.

`torch.load` reads each storage of a zip-format file into memory whole, at the size the zip's directory says it
unpacks to, so a few megabytes of deflated zeros can ask for gigabytes. `check_pickle_bounds` reads only the zip's
end record and central directory (never a member) and refuses, before torch reads a byte: more than MAX_MEMBERS
members, a directory over MAX_DIRECTORY_BYTES, a pickle part over MAX_PICKLE_BYTES, or members that unpack to
more than the caller's `max_bytes` in all (the limit the file's size on disk already has). PyTorch's old
(pre-1.6, non-zip) formats keep their storage sizes inside the pickle, where nothing can check them before
unpickling; they are refused. After loading, `check_tensor_sizes` refuses views larger than their storage
(zero or overlapping strides), which would make every later pass over the values allocate their full size.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import LoraFormatError

MAX_MEMBERS = 100_000
"""Members of a PyTorch zip: one per storage plus a few records (a LoRA has hundreds, a checkpoint a few thousand)."""
MAX_DIRECTORY_BYTES = 32 * 1024 * 1024
"""The zip's central directory (about 100 bytes per member)."""
MAX_PICKLE_BYTES = 16 * 1024 * 1024
"""The pickle part (`data.pkl`): the file's table of contents, kilobytes for a LoRA, like a safetensors header."""

_ZIP_MAGIC = b"PK\x03\x04"
_END = struct.Struct("<4s4H2LH")  # signature, disk, directory disk, entries here, entries, size, offset, comment
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the zip64 end record, disks
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries here, entries, size, offset
_ZIP64_END_SIGNATURE = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF


def load_weights_only(path: Path, *, max_bytes: int) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU once `check_pickle_bounds` passes; every tensor in the
    result is checked by `check_tensor_sizes`. Raises LoraFormatError naming the file for anything refused."""
    import pickle

    check_pickle_bounds(path, max_bytes=max_bytes)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise LoraFormatError(
                "refused: the pickle holds code or objects other than tensors, and pickled code is never run "
                "(only weights-only loading is allowed; convert the file to .safetensors)",
                path=path,
            ) from None
        raise LoraFormatError(f"not a readable PyTorch file: {error}", path=path) from None
    except Exception as error:  # torch.load raises RuntimeError, EOFError, zip and pickle errors for broken files
        raise LoraFormatError(f"not a readable PyTorch file: {type(error).__name__}: {error}", path=path) from None
    check_tensor_sizes(loaded, max_bytes=max_bytes, path=path)
    return loaded


def check_pickle_bounds(path: Path, *, max_bytes: int) -> None:
    """LoraFormatError unless `path` is a PyTorch zip whose members unpack to at most `max_bytes` in all.

    Reads the end record and the central directory only; the limits are those in the module docstring.
    """
    with open(path, "rb") as f:
        if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise LoraFormatError(
                "not a readable PyTorch file: it is not a zip. Plain pickles and PyTorch's old (before 1.6) format "
                "are refused: their sizes cannot be checked before unpickling, and pickled code is never run; save "
                "it again with a current PyTorch or convert it to .safetensors",
                path=path,
            )
        entries, directory_bytes = _directory_size(f, path)
    if entries > MAX_MEMBERS:
        raise LoraFormatError(f"the zip has {entries} members, more than the {MAX_MEMBERS} allowed", path=path)
    if directory_bytes > MAX_DIRECTORY_BYTES:
        raise LoraFormatError(
            f"the zip's directory is {directory_bytes} bytes, more than the {MAX_DIRECTORY_BYTES} allowed", path=path
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as error:
        raise LoraFormatError(f"not a readable PyTorch file: {error}", path=path) from None
    if len(members) > MAX_MEMBERS:
        raise LoraFormatError(f"the zip has {len(members)} members, more than the {MAX_MEMBERS} allowed", path=path)
    total = 0
    for member in members:
        if member.filename.endswith("data.pkl") and member.file_size > MAX_PICKLE_BYTES:
            raise LoraFormatError(
                f"its pickle unpacks to {member.file_size} bytes, more than the {MAX_PICKLE_BYTES} allowed",
                path=path,
            )
        total += member.file_size
    if total > max_bytes:
        largest = max(members, key=lambda member: member.file_size)
        raise LoraFormatError(
            f"the file unpacks to {total} bytes ({largest.filename!r} alone to {largest.file_size}), more than the "
            f"{max_bytes} allowed",
            path=path,
        )


def check_tensor_sizes(loaded: object, *, max_bytes: int, path: Path) -> None:
    """LoraFormatError when a tensor in `loaded` (dicts, lists and tuples are searched) spans more bytes than its
    storage holds, or the tensors span more than `max_bytes` in all."""
    total = 0
    for key, tensor in _tensors(loaded):
        size = tensor.numel() * tensor.element_size()
        if size > tensor.untyped_storage().nbytes():
            raise LoraFormatError(
                f"a {list(tensor.shape)} tensor over a {tensor.untyped_storage().nbytes()}-byte storage (zero or "
                "overlapping strides): refused, since reading it would allocate its full size",
                path=path,
                key=key,
            )
        total += size
        if total > max_bytes:
            raise LoraFormatError(f"the tensors hold more than the {max_bytes} bytes allowed", path=path, key=key)


def _tensors(loaded: object) -> Iterator[tuple[str, torch.Tensor]]:
    """(path of keys, tensor) for every tensor in nested dicts, lists and tuples, without recursion."""
    stack: list[tuple[str, object]] = [("", loaded)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield where, item
        elif isinstance(item, dict):
            stack.extend((f"{where}.{key}" if where else str(key), value) for key, value in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{index}]", value) for index, value in enumerate(item))


def _directory_size(f: Any, path: Path) -> tuple[int, int]:
    """(entries, bytes) of the central directory, from the end record found as zipfile finds it: the last 22
    bytes when they are one, else the last end signature in the final 64 KiB; a zip64 record before it wins."""
    f.seek(0, 2)
    file_size = f.tell()
    tail_size = min(file_size, _END.size + _MAX_COMMENT)
    f.seek(file_size - tail_size)
    tail = f.read(tail_size)
    start = len(tail) - _END.size
    if not (tail[start:start + 4] == _END_SIGNATURE and tail[-2:] == b"\0\0"):
        start = tail.rfind(_END_SIGNATURE)
    if start < 0 or len(tail) - start < _END.size:
        raise LoraFormatError("not a readable PyTorch file: the zip has no end record", path=path)
    _, _, _, _, entries, directory_bytes, _, _ = _END.unpack_from(tail, start)
    end_at = file_size - tail_size + start
    locator = b""
    if end_at >= _ZIP64_LOCATOR.size:
        f.seek(end_at - _ZIP64_LOCATOR.size)
        locator = f.read(_ZIP64_LOCATOR.size)
    if locator[:4] != _ZIP64_LOCATOR_SIGNATURE:  # no zip64 record: the plain one counts (as zipfile reads it)
        if entries == 0xFFFF or directory_bytes == 0xFFFFFFFF:
            raise LoraFormatError("not a readable PyTorch file: the zip64 end record is missing", path=path)
        return entries, directory_bytes
    _, _, zip64_end_at, _ = _ZIP64_LOCATOR.unpack(locator)
    f.seek(zip64_end_at)
    record = f.read(_ZIP64_END.size)
    if len(record) != _ZIP64_END.size or record[:4] != _ZIP64_END_SIGNATURE:
        raise LoraFormatError("not a readable PyTorch file: the zip64 end record is damaged", path=path)
    fields = _ZIP64_END.unpack(record)
    return fields[7], fields[8]
