"""What a real host answers, as test values: a generated image with its records, infotext fields, log tracebacks.

- `Generated.from_response` decodes `/sdapi/v1/txt2img|img2img` answers: `.image` (numpy uint8 H×W×3), `.info`
  (the parsed `info` JSON), `.infotext` (its first infotext), `.png_parameters` (the PNG's `parameters` text).
- `infotext_fields` reads the last line of an infotext (`Key: value, Key: "quoted, value", …`) into a dict.
- `tracebacks` splits a WebUI log into traceback blocks (plain and A1111's indented `*** Error` reports);
  `names_extension` says whether one names our files.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EXTENSION_MARKERS: tuple[str, ...] = ("lib_lora/", "scripts/lora_studio.py", "extensions/lora-studio/")
"""A traceback that mentions one of these comes from (or through) LoRA Studio's code."""


@dataclass(frozen=True)
class Generated:
    """One image a host generated through its API, and what the host recorded for it."""

    image: np.ndarray
    info: dict[str, Any]
    infotext: str
    png_parameters: str | None
    seconds: float
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_response(cls, answer: dict[str, Any], payload: dict[str, Any], seconds: float) -> Generated:
        """The first image of an API answer; ValueError when it has none."""
        from PIL import Image

        images = answer.get("images") or []
        if not images:
            raise ValueError(f"the host returned no image: {str(answer)[:500]}")
        data = images[0].split(",", 1)[1] if images[0].startswith("data:") else images[0]
        with Image.open(io.BytesIO(base64.b64decode(data))) as decoded:
            parameters = decoded.info.get("parameters")
            image = np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()
        image.setflags(write=False)  # cached and shared between tests
        raw_info = answer.get("info") or "{}"
        info = json.loads(raw_info) if isinstance(raw_info, str) else dict(raw_info)
        infotexts = info.get("infotexts") or []
        return cls(image, info, str(infotexts[0]) if infotexts else "",
                   parameters if isinstance(parameters, str) else None, seconds, payload)

    def fields(self) -> dict[str, str]:
        """The infotext's fields (see `infotext_fields`)."""
        return infotext_fields(self.infotext)

    def png_base64(self) -> str:
        """The image as a base64 PNG (for `init_images`)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")


_FIELD = re.compile(r'\s*([\w][\w \-/()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def infotext_fields(infotext: str) -> dict[str, str]:
    """{key: value} of the infotext's parameter line (its last line); quoted values are unquoted (JSON)."""
    lines = infotext.strip().splitlines()
    if not lines:
        return {}
    fields: dict[str, str] = {}
    for match in _FIELD.finditer(lines[-1]):
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        fields[key] = value
    return fields


def tracebacks(log: str) -> list[str]:
    """Each traceback in `log`, with the `*** …` report lines just above it (A1111's errors.report)."""
    lines = log.splitlines()
    found: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() != "Traceback (most recent call last):":
            index += 1
            continue
        indent = len(line) - len(line.lstrip())
        start = index
        while start > 0 and lines[start - 1].startswith("***"):
            start -= 1
        end = index + 1
        while end < len(lines):
            text = lines[end]
            depth = len(text) - len(text.lstrip())
            chained = text.strip().startswith(("During handling of", "The above exception", "Traceback (most"))
            if text.strip() and depth <= indent and not chained and not text.lstrip().startswith("File "):
                end += 1  # the exception line closes the block
                break
            end += 1
        found.append("\n".join(lines[start:end]))
        index = end
    return found


def names_extension(traceback_text: str) -> bool:
    """Whether a traceback mentions LoRA Studio's files."""
    return any(marker in traceback_text for marker in EXTENSION_MARKERS)


def mean_abs_difference(first: np.ndarray, second: np.ndarray) -> float:
    """Mean absolute difference in 0–255 levels (images of the same shape)."""
    assert first.shape == second.shape, (first.shape, second.shape)
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())
