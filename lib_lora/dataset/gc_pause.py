"""Pausing Python's cyclic garbage collector while one action builds or changes 50,000 captions' worth of objects.

Such an action allocates hundreds of thousands of tracked objects (paths, tuples of tags, dicts), and each time the
collector's thresholds are crossed it walks every live object, the whole loaded dataset included: measured on the
44,417-image set, that was a third of the time of a load. Reference counting still frees everything without
cycles while paused; what is left is collected at the next automatic pass after the pause. Pauses nest and may
overlap across threads: the collector runs again once the last one ends, and only if it was running before.

A body that leaves many new objects behind (a scan of a large folder) may ask with `collect_after_pause` for them
to be collected once, in a background thread, when this process goes quiet after the pause: otherwise the
collector's next passes walk them on whatever call comes next (the first click after a load). The collector
stays paused until that collection has run; a pause beginning meanwhile postpones it to its own end.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

QUIET_CPU_SHARE = 0.2
"""The process counts as quiet when its threads used less CPU time than this share of one `QUIET_POLL_S`."""
QUIET_POLL_S = 0.05
QUIET_WAIT_S = 2.0
"""The background collection runs at the latest this long after the last pause, quiet or not."""

_lock = threading.Lock()
_depth = 0
_was_enabled = False
_owed = False  # a collection was asked for: the collector stays paused until it ran
_ended = 0.0  # when the last pause ended (time.monotonic)
_collector: threading.Thread | None = None  # the thread that will run it, once started


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the body with automatic garbage collection off (as it was before, afterwards)."""
    global _depth, _was_enabled, _ended
    with _lock:
        if _depth == 0:
            if _collector is not None:  # paused still by us, until the collection asked for: as if running
                _was_enabled = True
            else:
                _was_enabled = gc.isenabled()
                gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _ended = time.monotonic()
                _end_pause()


def collect_after_pause() -> None:
    """Ask, inside a pause, for one collection in the background after it ends (see the module doc)."""
    global _owed
    with _lock:
        if _depth:
            _owed = True


def collection_pending() -> bool:
    """Whether a collection asked for has not run yet (the collector stays paused until it has)."""
    with _lock:
        return _owed or _collector is not None


def _end_pause() -> None:
    """The last pause ended (the lock held): the collector runs again, or after the collection asked for."""
    global _owed, _collector
    if not _was_enabled:  # someone else keeps the collector off: theirs to run
        _owed = False
        return
    if not _owed:
        gc.enable()
    elif _collector is None:
        _collector = threading.Thread(target=_collect_when_quiet, name="lora-studio-gc", daemon=True)
        _collector.start()


def _collect_when_quiet() -> None:
    """Once no pause runs and the process is quiet (or QUIET_WAIT_S passed since the last pause), collect, then
    resume the collector (or start waiting again, if more was asked for meanwhile)."""
    global _owed, _collector
    used = time.process_time()  # all threads of the process: the answer being rendered and sent counts
    while True:
        time.sleep(QUIET_POLL_S)
        busy, used = time.process_time() - used >= QUIET_CPU_SHARE * QUIET_POLL_S, time.process_time()
        with _lock:
            if _depth or (busy and time.monotonic() - _ended < QUIET_WAIT_S):
                continue
            _owed = False  # what is asked for from now on needs a collection of its own
            break
    _collect()
    with _lock:
        _collector = None
        if _depth == 0:
            _end_pause()  # else the pause running now does it at its end


def _collect() -> None:
    """The young generations; everything when the new objects would make the collector walk everything soon
    anyway (its own rule: new long-lived objects more than a quarter of the old ones)."""
    young = len(gc.get_objects(0)) + len(gc.get_objects(1))
    gc.collect(2 if young * 4 > len(gc.get_objects(2)) else 1)
