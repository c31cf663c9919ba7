"""Cache shards: many small cached tensors (latents, text-encoder outputs) in safetensors files of N entries each.

An entry is a name (the sha256 digest of everything that decides it) and a few named tensors, stored as
`<name>/<field>` in a shard file `<kind>-<hash of its names>.safetensors`. The store is content addressed: it
indexes every shard of its kind in the folder from the headers alone (validated, bounded: no tensor is read),
so an entry written by an earlier run, by another rank or before a crash is found wherever it lies, and a
changed setting gives a new name that no old shard holds. Shards are written whole and atomically, so a run
killed part way leaves only complete shards; reads open a shard through a small LRU of open files (memory
mapped by safetensors), and load only the entry asked for.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from ..atomic import write_atomically
from ..errors import LoraFormatError
from ..networks.files import TensorInfo, read_header

SHARD_ITEMS = 256
"""Entries per shard: at most this much work is lost to a kill, and 44,417 images make 174 files, not 44,417."""
MAX_OPEN_SHARDS = 4
"""Shards kept open for reading (a batch reads a few entries, mostly from the same shards in a bucket)."""
_FORMAT_KEY = "format"


class _Keyed(Protocol):
    @property
    def digest(self) -> str: ...


K = TypeVar("K", bound=_Keyed)
V = TypeVar("V")


class ShardStore:
    """Entries of one `kind` in `folder`: index with `refresh()`, read with `read()`, write with `add()`/`flush()`.

    `kind` names the files and is checked in their metadata (with `format`), so a store never reads another
    kind's or an older format's shards. `add()` buffers entries until `flush()` writes them as one shard.
    """

    def __init__(self, folder: Path, kind: str, *, format_name: str, max_open: int = MAX_OPEN_SHARDS,
                 shard_items: int | None = None) -> None:
        self.folder = folder
        self.shard_items = SHARD_ITEMS if shard_items is None else max(1, shard_items)
        self.kind = kind
        self.format_name = format_name
        self.max_open = max(1, max_open)
        self.written: list[Path] = []
        """Shards this store wrote, in order (tests and benchmarks count them)."""
        self._index: dict[str, list[tuple[Path, dict[str, TensorInfo]]]] | None = None
        """Entry name → the shards holding it, first the one read (a damaged copy is dropped for the next)."""
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self._open: OrderedDict[Path, Any] = OrderedDict()

    # --- the index ------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Index every readable shard of this kind now in the folder; damaged or foreign files are left out."""
        self._open.clear()
        index: dict[str, list[tuple[Path, dict[str, TensorInfo]]]] = {}
        paths = sorted(self.folder.glob(f"{self.kind}-*.safetensors")) if self.folder.is_dir() else []
        for path in paths:
            for name, fields in self._entries(path).items():
                index.setdefault(name, []).append((path, fields))
        self._index = index

    def _entries(self, path: Path) -> dict[str, dict[str, TensorInfo]]:
        try:
            header = read_header(path)
        except LoraFormatError:
            return {}
        if header.metadata.get(_FORMAT_KEY) != self.format_name:
            return {}
        entries: dict[str, dict[str, TensorInfo]] = {}
        for tensor_name, info in header.tensors.items():
            name, _, field = tensor_name.partition("/")
            if field:
                entries.setdefault(name, {})[field] = info
        return entries

    def _indexed(self) -> dict[str, list[tuple[Path, dict[str, TensorInfo]]]]:
        if self._index is None:
            self.refresh()
        return self._index  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self._indexed()

    def __len__(self) -> int:
        return len(self._indexed())

    def fields(self, name: str) -> dict[str, TensorInfo] | None:
        """The header entries (dtype, shape) of entry `name`'s tensors, or None when no shard holds it."""
        found = self._indexed().get(name)
        return None if not found else found[0][1]

    def forget(self, name: str) -> None:
        """Drop the copy of entry `name` that is read (found damaged): another shard's copy, if any, is read next,
        else the entry counts as missing and is computed again."""
        index = self._indexed()
        found = index.get(name)
        if found:
            found.pop(0)
        if not found:
            index.pop(name, None)

    def shard_of(self, name: str) -> Path | None:
        found = self._indexed().get(name)
        return None if not found else found[0][0]

    # --- reading --------------------------------------------------------------------------------------------

    def read(self, name: str) -> dict[str, torch.Tensor] | None:
        """Entry `name`'s tensors, loaded from its shard; None when absent or unreadable (then forgotten)."""
        while found := self._indexed().get(name):
            path, fields = found[0]
            try:
                handle = self._handle(path)
                # a copy: what safetensors returns may share the file's memory map
                return {field: handle.get_tensor(f"{name}/{field}").clone() for field in fields}
            except (OSError, SafetensorError, ValueError, RuntimeError, KeyError):
                self._open.pop(path, None)
                self.forget(name)
        return None

    def _handle(self, path: Path) -> Any:
        handle = self._open.get(path)
        if handle is None:
            handle = safe_open(str(path), framework="pt")
            self._open[path] = handle
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(path)
        return handle

    @property
    def open_shards(self) -> int:
        return len(self._open)

    # --- writing --------------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Entries added and not yet written."""
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether a shard's worth of entries is buffered (the writer flushes after its current batch)."""
        return len(self._pending) >= self.shard_items

    def add(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Buffer entry `name` (CPU copies) for the next shard; `flush()` writes it."""
        self._pending[name] = {field: t.detach().to("cpu").contiguous() for field, t in tensors.items()}

    def flush(self) -> Path | None:
        """Write the buffered entries as one shard (atomically) and index them; None when nothing was buffered."""
        if not self._pending:
            return None
        names = sorted(self._pending)
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:32]
        path = self.folder / f"{self.kind}-{digest}.safetensors"
        tensors = {f"{name}/{field}": tensor for name in names for field, tensor in self._pending[name].items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(path, [save_safetensors(tensors, metadata={_FORMAT_KEY: self.format_name})])
        self._pending = {}
        self.written.append(path)
        self._open.pop(path, None)
        index = self._indexed()
        for name, fields in self._entries(path).items():
            index[name] = [(path, fields)] + [found for found in index.get(name, []) if found[0] != path]
        return path


class ShardedCache(Generic[K, V]):
    """Values by key: a memory dict, or with a folder the shards there, read when asked (nothing kept in memory);
    with a folder, `put` buffers values and `flush` writes them as one shard. A subclass names its shard `KIND` and
    `FORMAT` and says how a value becomes tensors and back, and which stored entry fits a key."""

    KIND: ClassVar[str]
    FORMAT: ClassVar[str]

    def __init__(self, folder: Path | None = None, *, max_open_shards: int = MAX_OPEN_SHARDS) -> None:
        self.folder = folder
        self._memory: dict[str, V] = {}
        self.store = None if folder is None else ShardStore(folder, self.KIND, format_name=self.FORMAT,
                                                            max_open=max_open_shards)

    def __len__(self) -> int:
        return len(self._memory) if self.store is None else len(self.store)

    def refresh(self) -> None:
        """Index the folder's shards again (after other processes wrote theirs)."""
        if self.store is not None:
            self.store.refresh()

    @property
    def on_disk(self) -> bool:
        return self.store is not None

    def has(self, key: K) -> bool:
        """Whether a value that fits `key` is cached (nothing is loaded)."""
        if self.store is None:
            return key.digest in self._memory
        fields = self.store.fields(key.digest)
        return fields is not None and self._fits(fields, key)

    def get(self, key: K) -> V | None:
        """The cached value for `key`; None when absent or unfit. A damaged shard copy (`_value` None) is
        forgotten and the next copy tried."""
        if self.store is None:
            return self._memory.get(key.digest)
        while self.has(key):
            tensors = self.store.read(key.digest)
            if tensors is None:
                return None
            value = self._value(tensors)
            if value is not None:
                return value
            self.store.forget(key.digest)
        return None

    def put(self, key: K, value: V) -> None:
        """Keep `value` (a CPU copy) in memory or, with a folder, buffer it for the next shard."""
        value = self._on_cpu(value)
        if self.store is None:
            self._memory[key.digest] = value
        else:
            self.store.add(key.digest, self._tensors(value))

    @property
    def full(self) -> bool:
        """Whether a shard's worth of values is buffered (flush after the current batch)."""
        return self.store is not None and self.store.full

    def flush(self) -> None:
        """Write the buffered values as one shard."""
        if self.store is not None:
            self.store.flush()

    # --- what a subclass says --------------------------------------------------------------------------------
    def _fits(self, fields: dict[str, TensorInfo], key: K) -> bool:
        raise NotImplementedError

    def _on_cpu(self, value: V) -> V:
        raise NotImplementedError

    def _tensors(self, value: V) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _value(self, tensors: dict[str, torch.Tensor]) -> V | None:
        raise NotImplementedError
