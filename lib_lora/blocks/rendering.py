"""One image of a job (Generate, an XY grid's cell, an analyzer image): progress and cancel within the image.

A renderer that reports steps (`reports_steps`, a LoraSession) gets an `on_step` that moves the job's progress by
sampling step and raises JobCancelled there once cancel was asked, so a cancel stops the image it is in (on a WebUI
through its own interrupt). Any other renderer is followed per image, and cancelled between images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..hosts.base import GenerationRequest
    from ..jobs import JobControl
    from .session import Generated

__all__ = ["render_image"]


def render_image(renderer: Any, request: GenerationRequest, control: JobControl, *, done: int, total: int,
                 what: str) -> Generated:
    """Render `request` as image `done + 1` of `total` (`what` names it in the progress line); JobCancelled when
    cancel was asked before or, where steps are reported, during it. Progress is `done + 1` afterwards."""
    control.check()
    title = f"image {done + 1}/{total}: {what}" if total > 1 else what
    control.progress(done, total, title)
    if getattr(renderer, "reports_steps", False):
        steps = request.steps

        def on_step(step: int) -> None:
            control.check()
            control.progress(message=f"{title} · step {min(step, steps)}/{steps}", partial=step / steps)

        generated = renderer.generate(request, on_step=on_step)
    else:
        generated = renderer.generate(request)
    control.progress(done + 1, total)
    return generated
