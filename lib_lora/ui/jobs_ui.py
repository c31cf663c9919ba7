"""Following a background `jobs.Job` from a gradio event: a generator event yields while the job runs.

gradio 3.41 has no timer component and 4.x's `every=` needs a queue worker per poll; a generator event works
the same in both (the queue is on in the WebUI and in the standalone app). The job itself runs in its own
thread, so a closed page stops only the polling, never the work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ..jobs import Job, JobSnapshot
from .model_panel import escape_markdown

POLL_SECONDS = 0.3
BAR_CELLS = 20


def follow(job: Job[Any], poll_seconds: float = POLL_SECONDS) -> Iterator[JobSnapshot]:
    """Snapshots of `job` while it runs (each distinct one once), then its final snapshot."""
    last = None
    while True:
        snapshot = job.snapshot()
        if not snapshot.active:
            yield snapshot
            return
        if snapshot != last:
            last = snapshot
            yield snapshot
        time.sleep(poll_seconds)


def progress_line(snapshot: JobSnapshot) -> str:
    """Markdown: a text progress bar (once the total is known) before the job's line (state, count, ETA, message)."""
    text = escape_markdown(snapshot.describe())
    if snapshot.fraction is None:
        return text
    filled = round(BAR_CELLS * snapshot.fraction)
    return f"`{'█' * filled}{'░' * (BAR_CELLS - filled)}` {text}"
