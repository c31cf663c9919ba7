"""Which share of a folder this tagging process takes when a launcher started several (`torchrun`, `accelerate`).

The launcher's environment says where the process stands (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, as
torchrun sets them and `accelerate launch` through it). Tagging needs no collective operations: the images are
split by sorted key, image i to process i % world_size, each process writes its own captions, and the result is
the same as one process's. The launch id lets the main process tell this launch's done-markers from an earlier
launch's (torchrun's run id, or the launcher's address and process id, shared by the processes of one machine).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import DatasetError

if TYPE_CHECKING:
    from .journal import TagJournal

__all__ = ["Shard", "TagShardError", "wait_for_processes"]

T = TypeVar("T")


class TagShardError(DatasetError):
    """The launcher's environment does not describe a usable process (a rank outside the world size, ...)."""


@dataclass(frozen=True)
class Shard:
    """This process's place among the tagging processes: rank of world_size; local_* count this machine's."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launch: str = ""

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise TagShardError(f"process {self.rank} of {self.world_size}: the rank must be from 0 to the "
                                "number of processes less one (RANK, WORLD_SIZE)")
        if self.local_world_size < 1 or not 0 <= self.local_rank < self.local_world_size:
            raise TagShardError(f"local process {self.local_rank} of {self.local_world_size}: the local rank must "
                                "be from 0 to the processes on this machine less one (LOCAL_RANK, LOCAL_WORLD_SIZE)")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Shard:
        """The shard a launcher's variables describe; one process (rank 0 of 1) when none are set."""
        env = os.environ if environ is None else environ

        def number(name: str, default: int) -> int:
            text = (env.get(name) or "").strip()
            if not text:
                return default
            try:
                return int(text)
            except ValueError:
                raise TagShardError(f"{name}={text!r} is not a whole number") from None

        world_size = number("WORLD_SIZE", 1)
        if world_size <= 1:
            return cls()
        local_world = number("LOCAL_WORLD_SIZE", world_size)
        run_id = (env.get("TORCHELASTIC_RUN_ID") or "").strip()
        launch = run_id if run_id and run_id != "none" else (
            f"{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}:{os.getppid()}")
        return cls(number("RANK", 0), world_size, number("LOCAL_RANK", 0), local_world, launch)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether several processes share the folder."""
        return self.world_size > 1

    def take(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """This process's share: the items sorted by `key`, every world_size-th from position `rank`."""
        if not self.active:
            return list(items)
        return sorted(items, key=key)[self.rank::self.world_size]

    def describe(self) -> str:
        """"process 2 of 4" (1-based, as a user counts), or "" for a single process."""
        return f"process {self.rank + 1} of {self.world_size}" if self.active else ""


def wait_for_processes(journal: TagJournal, shard: Shard, patience: float, *, poll: float = 0.2,
                       clock: Callable[[], float] = time.monotonic) -> tuple[list[dict[str, Any]], list[int]]:
    """On the main process: the other processes' done-markers of this launch, and the ranks still missing when
    nothing moved (no marker came, no journal grew) for `patience` seconds."""
    others = set(range(shard.world_size)) - {shard.rank}
    last_change, seen = clock(), (-1, -1)
    while True:
        markers = {rank: marker for rank, marker in journal.done_markers(shard.launch).items() if rank in others}
        if len(markers) == len(others):
            return [markers[rank] for rank in sorted(markers)], []
        state = (len(markers), journal.parts_size())
        if state != seen:
            seen, last_change = state, clock()
        elif clock() - last_change > patience:
            return [markers[rank] for rank in sorted(markers)], sorted(others - set(markers))
        time.sleep(poll)
