"""Step progress and cancel for one generation inside a WebUI (A1111, Forge, Forge Neo), through its own state.

The WebUI counts sampling steps in `modules.shared.state.sampling_step` and stops a generation when
`state.interrupt()` is called (what its Interrupt button does). `following_steps(on_step)` polls that count in a
thread while the body generates and calls `on_step(step)` about every `poll_seconds` (a step may repeat). When
`on_step` raises (its job was cancelled) the WebUI's generation is interrupted, and that error is raised when the
body ends, instead of whatever the interrupted body returned or raised. Outside a WebUI it does nothing.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

POLL_SECONDS = 0.1

__all__ = ["POLL_SECONDS", "following_steps", "webui_state"]


def webui_state() -> Any | None:
    """The WebUI's `shared.state` when this process is a WebUI (its `modules.shared` is loaded), else None."""
    shared = sys.modules.get("modules.shared")
    state = getattr(shared, "state", None)
    return state if callable(getattr(state, "interrupt", None)) else None


@contextmanager
def following_steps(on_step: Callable[[int], None] | None, *,
                    poll_seconds: float = POLL_SECONDS) -> Iterator[None]:
    """Report the WebUI's sampling step to `on_step` while the body runs; interrupt the WebUI when it raises."""
    state = webui_state()
    if on_step is None or state is None:
        yield
        return
    state.sampling_step = 0  # the last job's count until this one's sampling starts (the WebUI's begin() does this)
    stop = threading.Event()
    raised: list[BaseException] = []

    def watch() -> None:
        while True:
            try:
                on_step(int(getattr(state, "sampling_step", 0) or 0))
            except BaseException as error:  # the job was cancelled (or the callback failed): stop the WebUI
                raised.append(error)
                state.interrupt()
                return
            if stop.wait(poll_seconds):
                return

    thread = threading.Thread(target=watch, name="lora-studio-webui-steps", daemon=True)
    thread.start()
    body_error: Exception | None = None
    try:
        yield
    except Exception as error:
        body_error = error
    finally:
        stop.set()
        thread.join()
        if raised:
            state.interrupted = False  # as the WebUI resets it after each of its own jobs
    if raised:
        raise raised[0] from body_error
    if body_error is not None:
        raise body_error
