"""What a tagging run reports: each image's result and the counts, the other processes' included under a launcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .shards import Shard
from .tagger import RunPlan

__all__ = ["STATUSES", "WORKED", "ImageResult", "Status", "TagReport"]

Status = Literal["tagged", "earlier", "skipped", "unreadable", "failed"]
STATUSES: tuple[Status, ...] = ("tagged", "earlier", "skipped", "unreadable", "failed")
WORKED = ("tagged", "unreadable", "failed")
"""The statuses of images this run decodes (the progress counts them; skipped and earlier ones cost nothing)."""


@dataclass(frozen=True)
class ImageResult:
    """What happened to one image: tagged (caption written), done earlier (by the stopped run these settings
    resume, its caption on disk or written now from the journal), skipped, unreadable, or not written (failed)."""

    image: Path
    caption_path: Path
    status: Status
    tags: tuple[str, ...] = ()
    caption: str | None = None
    error: str | None = None


@dataclass
class TagReport:
    """The results of a folder run (this process's share), in folder order, plus the provider that ran and its
    warnings; under a launcher the main process also holds the other processes' counts and failures."""

    provider: str
    warnings: tuple[str, ...]
    plan: RunPlan
    results: list[ImageResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    shard: Shard = field(default_factory=Shard)
    others: list[dict[str, Any]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    """Ranks of processes whose done-marker did not come within the bound (their share may be unfinished)."""

    def of(self, status: str) -> list[ImageResult]:
        return [r for r in self.results if r.status == status]

    def counts(self) -> dict[str, int]:
        """Images per status, the other processes' included."""
        counts = {s: len(self.of(s)) for s in STATUSES}
        for other in self.others:
            for status, count in (other.get("counts") or {}).items():
                counts[status] = counts.get(status, 0) + int(count)
        return counts

    def failures(self) -> list[tuple[str, str, str]]:
        """(status, image, error) of the unreadable and not written images, the other processes' included."""
        own = [(r.status, str(r.image), r.error or r.status) for r in self.results if r.status in ("unreadable",
                                                                                                    "failed")]
        return own + [tuple(f) for other in self.others for f in other.get("failures") or ()]  # type: ignore[misc]

    def summary(self) -> str:
        """One line of counts, time, provider and batch (the warnings are shown apart)."""
        counts = self.counts()
        earlier = f", {counts['earlier']} done earlier (resumed)" if counts["earlier"] else ""
        processes = f", {self.shard.world_size} processes" if self.shard.active else ""
        return (f"tagged {counts['tagged']}{earlier}, skipped {counts['skipped']} (existing caption), unreadable "
                f"{counts['unreadable']}, not written {counts['failed']} in {self.seconds:.1f}s on "
                f"{self.provider.removesuffix('ExecutionProvider')} ({self.plan.describe()}{processes})")
