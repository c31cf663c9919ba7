"""A generated image + caption dataset (sd-scripts `<repeats>_<name>` folder) and deliberately broken files.

Each image is a plain background with a "character" drawn from simple shapes: a hair-coloured ellipse, a
skin-coloured face, two eye dots, sometimes a star and a smile. The caption names what was drawn
("tinychar, 1girl, solo, red hair, blue eyes, white background, ..."), trigger word first. Image i has size
sizes[i % len(sizes)]; every third image is a JPEG; image 1 (when count > 1) is an RGBA PNG with a transparent
background. Same arguments, same pixels and captions.

`generate_detail_dataset` writes images of another kind, for telling learning from memorising: all share a
checkerboard, and each has squares in colours of its own.
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


DETAIL_PATTERN = ((30, 60, 230), (240, 210, 40))
"""The two colours of the checkerboard every image of `generate_detail_dataset` shares."""


def detail_image(seed: str, *, size: int = 64, cell: int = 16, block: int = 8, detail: float = 0.3) -> Image.Image:
    """A blue/yellow checkerboard of `cell`-pixel squares (the part every image shares) with about `detail` of its
    `block`-pixel squares painted each in its own random colour (the part only this image has); same seed, same
    pixels. `block` 8 is one latent pixel of an SD VAE, so the detail survives the 8× downscale."""
    rng = random.Random(seed)  # str seeds are hashed stably (sha512)
    image = Image.new("RGB", (size, size), DETAIL_PATTERN[0])
    draw = ImageDraw.Draw(image)
    for top in range(0, size, cell):
        for left in range(0, size, cell):
            if (top // cell + left // cell) % 2:
                draw.rectangle((left, top, left + cell - 1, top + cell - 1), fill=DETAIL_PATTERN[1])
    for top in range(0, size, block):
        for left in range(0, size, block):
            if rng.random() < detail:
                colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
                draw.rectangle((left, top, left + block - 1, top + block - 1), fill=colour)
    return image


def generate_detail_dataset(directory: Path, *, count: int, seed: int = 0, repeats: int = 1, name: str = "zqdetail",
                            detail: float = 0.3, size: int = 64) -> GeneratedDataset:
    """Write `count` images of one kind into directory/<repeats>_<name>/, each captioned with `name` alone: what they
    share is learnable from any of them, what each adds is its own (see `detail_image`). Other seeds give other
    images of the same kind, e.g. a validation set for a training set."""
    if count < 1 or repeats < 1 or size < 32 or not 0.0 <= detail <= 1.0:
        raise ValueError(f"need count >= 1, repeats >= 1, size >= 32 and 0 <= detail <= 1, got {count}, {repeats}, "
                         f"{size}, {detail}")
    folder = Path(directory) / f"{repeats}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    images, caption_paths = [], []
    for index in range(count):
        path = folder / f"{name}_{index:03d}.png"
        detail_image(f"detail:{seed}:{index}", size=size, detail=detail).save(path, format="PNG")
        caption_path = path.with_suffix(".txt")
        caption_path.write_text(name + "\n", encoding="utf-8")
        images.append(path)
        caption_paths.append(caption_path)
    return GeneratedDataset(root=Path(directory), folder=folder, trigger=name, repeats=repeats, images=tuple(images),
                            captions=(name,) * count, caption_paths=tuple(caption_paths))


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
