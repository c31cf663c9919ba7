"""The Dataset tab following a save job: its progress line while it runs, then what the session says it did.

The saving itself (captions written atomically, backups, conflicts) is the session's: lib_lora.dataset.editing.
"""

from __future__ import annotations

from collections.abc import Iterator

from ...dataset.captions import BatchSaveResult
from ...dataset.editing import DatasetSession
from ...jobs import Job
from ..jobs_ui import follow, progress_line


def follow_save(session: DatasetSession, job: Job[BatchSaveResult]) -> Iterator[tuple[str | None, bool]]:
    """(message, finished) while the save runs: its progress, then what `finish_save` says."""
    for snapshot in follow(job):
        if snapshot.active:
            yield f"Saving captions: {progress_line(snapshot)} (**Cancel save** stops after the files under way)", \
                False
        else:
            with session.lock:
                message = session.finish_save(snapshot)
            yield message, True
