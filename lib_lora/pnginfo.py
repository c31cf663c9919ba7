"""A1111-style image parameters: the `parameters` PNG text chunk that "PNG Info" and "Send to txt2img" read.

`parameters_text` writes the prompt as typed (tags kept), the negative prompt, then one line of `Key: value`
fields; `save_png` writes it atomically; `read_parameters` reads it back (None when the file has none).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .atomic import write_atomically
from .errors import LoraStudioError

if TYPE_CHECKING:
    from PIL import Image

PARAMETERS_KEY = "parameters"


class SamplingSettings(Protocol):
    """What an infotext records of a generation (a host's `GenerationRequest` has these; pnginfo sits below hosts)."""

    steps: int
    cfg_scale: float
    seed: int
    width: int
    height: int
    negative_prompt: str


class ImageWriteError(LoraStudioError):
    """An image could not be written (folder not writable, disk full)."""


def parameters_text(prompt: str, request: SamplingSettings, *, model: str,
                    extra_fields: Mapping[str, str] | None = None) -> str:
    """A1111's infotext for one image: `prompt`, `Negative prompt: …`, then `Steps: …, CFG scale: …, …`.

    `extra_fields` values are written as given (quote them yourself when they contain commas).
    """
    fields = [f"Steps: {request.steps}", f"CFG scale: {request.cfg_scale:g}", f"Seed: {request.seed}",
              f"Size: {request.width}x{request.height}", f"Model: {model}"]
    fields += [f"{key}: {value}" for key, value in (extra_fields or {}).items() if value != ""]
    lines = [prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, parameters: str, *, extra_text: Mapping[str, str] | None = None) -> Path:
    """Write `image` as a PNG with a `parameters` text chunk (and `extra_text` chunks), atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    for key, value in (extra_text or {}).items():
        info.add_text(key, value)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG", pnginfo=info)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, [encoded.getbuffer()])
    except OSError as error:
        raise ImageWriteError(f"cannot write {path}: {error.strerror or error}") from error
    return path


def read_parameters(path: Path) -> str | None:
    """The `parameters` text of a PNG written by us or A1111, or None when it has none."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get(PARAMETERS_KEY)
    return text if isinstance(text, str) else None
