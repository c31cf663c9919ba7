"""A generated image + caption dataset (sd-scripts `<repeats>_<name>` folder) and deliberately broken files.

Each image is a plain background with a "character" drawn from simple shapes: a hair-coloured ellipse, a
skin-coloured face, two eye dots, sometimes a star and a smile. The caption names what was drawn
("tinychar, 1girl, solo, red hair, blue eyes, white background, ..."), trigger word first. Image i has size
sizes[i % len(sizes)]; every third image is a JPEG; image 1 (when count > 1) is an RGBA PNG with a transparent
background. Same arguments, same pixels and captions.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 60, 220),
    "green": (30, 170, 60),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "blonde": (240, 210, 90),
    "pink": (245, 150, 190),
    "purple": (130, 50, 170),
}
_HAIR = ("red", "blue", "green", "black", "blonde", "pink", "purple", "white")
_EYES = ("blue", "red", "green", "purple", "black")
_BACKGROUNDS = ("white", "red", "blue", "green", "pink")
_SKIN = (250, 220, 200)
RGBA_INDEX = 1
"""Index of the image saved as RGBA with a transparent background (when count > 1)."""


@dataclass(frozen=True)
class GeneratedDataset:
    """A generated dataset: images[i] is captioned by captions[i], stored in caption_paths[i]."""

    root: Path
    folder: Path
    trigger: str
    repeats: int
    images: tuple[Path, ...]
    captions: tuple[str, ...]
    caption_paths: tuple[Path, ...]


def _draw(size: tuple[int, int], rng: random.Random, transparent: bool) -> tuple[Image.Image, list[str]]:
    """One picture and its tags (without the trigger word)."""
    width, height = size
    hair, eyes = rng.choice(_HAIR), rng.choice(_EYES)
    background = rng.choice(_BACKGROUNDS)
    if transparent:
        image = Image.new("RGBA", size, (0, 0, 0, 0))
        tags = ["transparent background"]
    else:
        image = Image.new("RGB", size, COLOURS[background])
        tags = [f"{background} background"]
    draw = ImageDraw.Draw(image)
    cx, cy = width // 2 + rng.randint(-4, 4), height // 2 + rng.randint(-4, 4)
    r = min(width, height) // 4
    long_hair = rng.random() < 0.5
    hair_bottom = cy + (2 * r if long_hair else r // 2)
    draw.ellipse((cx - r - 6, cy - r - 8, cx + r + 6, min(hair_bottom, height - 1)), fill=COLOURS[hair])
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_SKIN)
    eye_y, dx = cy - r // 4, r // 2
    for ex in (cx - dx, cx + dx):
        draw.ellipse((ex - 3, eye_y - 3, ex + 3, eye_y + 3), fill=COLOURS[eyes])
    tags += [f"{hair} hair", "long hair" if long_hair else "short hair", f"{eyes} eyes"]
    if rng.random() < 0.5:
        draw.arc((cx - r // 2, cy, cx + r // 2, cy + r // 2), 20, 160, fill=(120, 20, 20), width=2)
        tags.append("smile")
    if rng.random() < 0.4:
        sx, sy = rng.randint(6, width - 7), rng.randint(6, 12)
        draw.polygon(
            [(sx, sy - 5), (sx + 4, sy + 4), (sx - 5, sy - 1), (sx + 5, sy - 1), (sx - 4, sy + 4)],
            fill=(250, 220, 0),
        )
        tags.append("star (symbol)")
    tags.append(rng.choice(("looking at viewer", "upper body", "portrait")))
    return image, tags


def generate_dataset(
    directory: Path,
    *,
    count: int = 8,
    seed: int = 0,
    repeats: int = 2,
    name: str = "tinychar",
    caption_ext: str = ".txt",
    sizes: Sequence[tuple[int, int]] = ((64, 64), (96, 64), (64, 96)),
) -> GeneratedDataset:
    """Write count images and captions into directory/<repeats>_<name>/; deterministic for the arguments."""
    if count < 1 or repeats < 1 or not sizes or min(min(size) for size in sizes) < 32:
        raise ValueError(
            f"need count >= 1, repeats >= 1 and sizes of at least 32x32, got {count}, {repeats}, {list(sizes)}"
        )
    if not caption_ext.startswith("."):
        raise ValueError(f"caption_ext must start with '.', got {caption_ext!r}")
    rng = random.Random(seed)
    folder = Path(directory) / f"{repeats}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []
    captions: list[str] = []
    caption_paths: list[Path] = []
    for i in range(count):
        transparent = count > 1 and i == RGBA_INDEX
        image, tags = _draw(tuple(sizes[i % len(sizes)]), rng, transparent)
        jpeg = i % 3 == 2 and not transparent
        path = folder / f"{name}_{i:03d}{'.jpg' if jpeg else '.png'}"
        if jpeg:
            image.save(path, format="JPEG", quality=90)
        else:
            image.save(path, format="PNG")
        caption = ", ".join([name, "1girl", "solo", *tags])
        caption_path = path.with_suffix(caption_ext)
        caption_path.write_text(caption + "\n", encoding="utf-8")
        images.append(path)
        captions.append(caption)
        caption_paths.append(caption_path)
    return GeneratedDataset(
        root=Path(directory),
        folder=folder,
        trigger=name,
        repeats=repeats,
        images=tuple(images),
        captions=tuple(captions),
        caption_paths=tuple(caption_paths),
    )


def make_corrupt_files(directory: Path) -> list[Path]:
    """Write three files PIL cannot load: a truncated PNG, a zero-byte .jpg and a text file named .png."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    noise = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    png = buffer.getvalue()
    truncated = directory / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    empty = directory / "empty.jpg"
    empty.write_bytes(b"")
    text = directory / "not_an_image.png"
    text.write_text("this is a text file, not a PNG\n", encoding="utf-8")
    return [truncated, empty, text]
