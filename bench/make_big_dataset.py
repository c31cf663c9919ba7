"""Generate the large dataset the big-dataset benchmarks use: small PNGs with 30-tag captions.

The default is the 44,417-image set of the practitioners' ReLoRA run (their 126 GiB of photos become small
generated PNGs here: the benchmarks measure our handling of many files, not decoding): 30 tags per caption drawn
from a 3,000-tag vocabulary with a Zipf-like frequency, images in a few aspect ratios (so bucketing has work),
spread over `<repeats>_<name>` subfolders of at most 5,000 images. The same seed gives the same files. An existing
complete set is kept (a marker file records its parameters).

    .venv/bin/python bench/make_big_dataset.py /tmp/bigds/44k [--images 44417] [--seed 0]
    .venv/bin/python bench/make_big_dataset.py /tmp/bigds/5k --images 5000
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_IMAGES = 44_417
VOCABULARY = 3_000
TAGS_PER_CAPTION = 30
FOLDER_SIZE = 5_000
SIZES = ((64, 64), (80, 48), (48, 80), (72, 56), (56, 72))
MARKER = ".big_dataset.json"


def vocabulary(size: int = VOCABULARY) -> list[str]:
    """`size` distinct booru-like tags (words joined by underscores, some with spaces as the taggers write)."""
    syllables = ["ka", "ri", "mo", "na", "to", "shi", "ru", "ne", "ha", "yu", "mi", "so", "ki", "ra", "po"]
    rng = np.random.default_rng(1234)
    tags: list[str] = []
    seen: set[str] = set()
    while len(tags) < size:
        words = ["".join(rng.choice(syllables, size=int(rng.integers(2, 4)))) for _ in range(int(rng.integers(1, 4)))]
        tag = (" " if rng.random() < 0.5 else "_").join(words)
        if tag not in seen:
            seen.add(tag)
            tags.append(tag)
    return tags


def _write_chunk(args: tuple[str, int, int, int]) -> int:
    from PIL import Image

    root, start, stop, seed = args
    tags = vocabulary()
    weights = 1.0 / np.arange(1, len(tags) + 1) ** 0.8
    weights /= weights.sum()
    for index in range(start, stop):
        rng = np.random.default_rng((seed, index))
        folder = Path(root) / f"{1 + index // FOLDER_SIZE % 3}_part{index // FOLDER_SIZE:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        width, height = SIZES[index % len(SIZES)]
        pixels = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((width, height), Image.NEAREST)
        image.save(folder / f"img{index:06d}.png", compress_level=1)
        chosen = rng.choice(len(tags), size=TAGS_PER_CAPTION, replace=False, p=weights)
        (folder / f"img{index:06d}.txt").write_text(", ".join(tags[i] for i in chosen), encoding="utf-8")
    return stop - start


def make_big_dataset(root: Path, images: int = DEFAULT_IMAGES, seed: int = 0, workers: int = 2) -> Path:
    """Write the set into `root` (kept when its marker says it is this set, complete)."""
    marker = root / MARKER
    wanted = {"images": images, "seed": seed, "tags_per_caption": TAGS_PER_CAPTION, "vocabulary": VOCABULARY}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    root.mkdir(parents=True, exist_ok=True)
    chunk = 1_000
    jobs = [(str(root), start, min(start + chunk, images), seed) for start in range(0, images, chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = sum(pool.map(_write_chunk, jobs))
    marker.write_text(json.dumps(wanted))
    assert done == images
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    make_big_dataset(args.root, args.images, args.seed, args.workers)
    print(f"{args.images} images in {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
