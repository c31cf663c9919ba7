"""What the Train tab shows of a run: the progress line, the loss curves as a picture, the result. Pure functions.

The loss curve is drawn with PIL rather than gr.LinePlot: LinePlot needs pandas and altair, which the standalone
environment lacks, and its value format differs between gradio 3.41 and 4.x; a PNG looks the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ...jobs import JobSnapshot
from ...train.progress import format_seconds
from ...wording import escape_markdown

CURVE_SIZE = (640, 220)
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 56, 12, 12, 24
_BACKGROUND, _AXIS, _GRID, _LINE = (255, 255, 255), (90, 90, 90), (228, 228, 228), (37, 99, 235)
_VALIDATION_LINE = (234, 88, 12)


def gib(value: int | float) -> str:
    return f"{value / 1024**3:.2f} GiB"


def progress_text(snapshot: JobSnapshot) -> str:
    """Markdown: the stage before training; step, epoch, loss, speed, ETA, memory while training; then the end."""
    extra = snapshot.extra
    if "step" not in extra:
        line = escape_markdown(snapshot.message or snapshot.state)
        return f"**{line}**" if snapshot.active else line
    parts = [f"**step {extra['step']}/{extra['total_steps']}**", f"epoch {extra['epoch']}/{extra['total_epochs']}",
             f"loss {extra['loss']:.4f} (average {extra['loss_avg']:.4f})"]
    if extra.get("validation_loss") is not None:
        parts.append(f"validation loss {extra['validation_loss']:.4f} (step {extra.get('validation_step')})")
    if extra.get("it_per_s"):
        parts.append(f"{extra['it_per_s']:.2f} it/s")
    if extra.get("eta_s") is not None and snapshot.active:
        parts.append(f"ETA {format_seconds(extra['eta_s'])}")
    if extra.get("lr") is not None:
        parts.append(f"lr {extra['lr']:.3g}")
    memory = extra.get("memory_bytes")
    parts.append(f"GPU memory {gib(memory)}" if memory else "GPU memory —")
    if snapshot.state == "cancelling":
        parts.append("stopping…")
    elif snapshot.active and extra.get("stage") not in (None, "train"):
        parts.append(escape_markdown(str(extra["stage"])))
    return " · ".join(parts)


def result_text(snapshot: JobSnapshot) -> str:
    """Markdown for a finished job: what was written (or why nothing was), and the notes of the run."""
    if snapshot.state == "failed":
        return f"**Training failed:** {escape_markdown(snapshot.error or 'unknown error')}"
    if snapshot.state == "cancelled":
        return "**Stopped** before the first step: nothing was learned, nothing was written."
    result = snapshot.result
    if result is None:
        return escape_markdown(snapshot.describe())
    if hasattr(result, "results"):  # a queue: its own summary of every run
        return result.summary()
    preview = getattr(result, "preview", None)
    if preview is not None:
        shown = f", preview `{preview.name}`"
    else:
        shown = ", no preview (see the notes)" if getattr(result, "samples", None) else \
            ", no preview: give a sample prompt or a trigger word for one"
    if result.output is None:
        text = f"**Stopped** after {result.steps} steps: nothing was written (save_on_cancel is off or no step ran)."
    elif result.cancelled:
        text = f"**Stopped and saved** `{result.output}` ({result.steps} steps{shown})."
    else:
        text = f"**Done:** `{result.output}` ({result.steps} steps, {result.seconds:.0f} s{shown})."
    notes = list(getattr(result, "notes", []) or [])
    if notes:
        text += "\n\n" + "\n".join(f"- {escape_markdown(note)}" for note in notes)
    return text


def _font() -> Any:
    return ImageFont.load_default()


def _label(value: float) -> str:
    return f"{value:.4g}"


def loss_curve_image(points: Sequence[Sequence[float]], size: tuple[int, int] = CURVE_SIZE,
                     validation: Sequence[Sequence[float]] = ()) -> Image.Image | None:
    """(step, loss) points as a line chart with its step and loss range written on the axes, and the validation
    loss's (step, loss) points as a second line on the same axes; None without training points."""
    points = [(float(step), float(loss)) for step, loss in points]
    if not points:
        return None
    measured = [(float(step), float(loss)) for step, loss in validation]
    width, height = size
    image = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    left, top = _MARGIN_LEFT, _MARGIN_TOP
    right, bottom = width - _MARGIN_RIGHT, height - _MARGIN_BOTTOM
    steps = [p[0] for p in points + measured]
    losses = [p[1] for p in points + measured]
    x_low, x_high = (min(steps), max(steps)) if max(steps) > min(steps) else (steps[0] - 1, steps[0] + 1)
    y_low, y_high = min(losses), max(losses)
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5 * (abs(y_low) or 1), y_high + 0.5 * (abs(y_high) or 1)

    def at(step: float, loss: float) -> tuple[float, float]:
        x = left + (step - x_low) / (x_high - x_low) * (right - left)
        y = bottom - (loss - y_low) / (y_high - y_low) * (bottom - top)
        return x, y

    for fraction in (0.25, 0.5, 0.75):
        y = bottom - fraction * (bottom - top)
        draw.line([(left, y), (right, y)], fill=_GRID)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=_AXIS)
    draw.text((4, top), _label(y_high), fill=_AXIS, font=font)
    draw.text((4, bottom - 10), _label(y_low), fill=_AXIS, font=font)
    draw.text((left, bottom + 6), f"step {int(x_low)}", fill=_AXIS, font=font)
    end_label = f"{int(x_high)}"
    draw.text((right - 6 * len(end_label), bottom + 6), end_label, fill=_AXIS, font=font)
    draw.text((left + (right - left) // 2 - 12, bottom + 6), "loss", fill=_LINE, font=font)
    if measured:
        draw.text((left + (right - left) // 2 + 24, bottom + 6), "validation", fill=_VALIDATION_LINE, font=font)
    for series, colour in ((points, _LINE), (measured, _VALIDATION_LINE)):
        line = [at(step, loss) for step, loss in series]
        if len(line) == 1 or series is measured:  # measurements are few: each one is marked
            for x, y in line:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
    return image
