"""The generated image dataset and the corrupt files: deterministic, sd-scripts naming, captions that match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.tiny.images import COLOURS, RGBA_INDEX, generate_dataset, make_corrupt_files

pytestmark = pytest.mark.hostcompat


def test_folder_naming_and_pairs(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=6, repeats=3, name="mychar")
    assert data.folder == tmp_path / "3_mychar" and data.root == tmp_path and data.repeats == 3
    assert len(data.images) == len(data.captions) == len(data.caption_paths) == 6
    for image, caption_path in zip(data.images, data.caption_paths):
        assert image.parent == data.folder and caption_path == image.with_suffix(".txt")
    assert sorted(p.name for p in data.folder.iterdir()) == sorted(
        [p.name for p in data.images] + [p.name for p in data.caption_paths]
    )


def test_captions(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=8, caption_ext=".caption")
    for caption, path in zip(data.captions, data.caption_paths):
        assert path.suffix == ".caption"
        assert path.read_text(encoding="utf-8").strip() == caption
        tags = caption.split(", ")
        assert tags[:3] == ["tinychar", "1girl", "solo"]
        assert len(tags) == len(set(tags)) and all(t.strip() == t and t for t in tags)
        assert sum(t.endswith(" hair") and t not in ("long hair", "short hair") for t in tags) == 1
        assert sum(t.endswith(" eyes") for t in tags) == 1
    assert len(set(data.captions)) > 1


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", seed=5)
    b = generate_dataset(tmp_path / "b", seed=5)
    c = generate_dataset(tmp_path / "c", seed=6)
    assert a.captions == b.captions != c.captions
    for pa, pb in zip(a.images, b.images):
        assert pa.name == pb.name and pa.read_bytes() == pb.read_bytes()


def test_sizes_formats_and_transparency(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=6)
    sizes = [Image.open(p).size for p in data.images]
    assert {(64, 64), (96, 64), (64, 96)} == set(sizes)
    assert {p.suffix for p in data.images} == {".png", ".jpg"}
    with Image.open(data.images[RGBA_INDEX]) as rgba:
        assert rgba.mode == "RGBA"
        alpha = np.asarray(rgba)[:, :, 3]
        assert alpha.min() == 0 and alpha.max() == 255
    assert "transparent background" in data.captions[RGBA_INDEX]
    assert all(Image.open(p).mode == "RGB" for i, p in enumerate(data.images) if i != RGBA_INDEX)


def test_caption_colours_match_pixels(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=8)
    for i, (image, caption) in enumerate(zip(data.images, data.captions)):
        if i == RGBA_INDEX:
            continue
        (background,) = [
            t.removesuffix(" background") for t in caption.split(", ") if t.endswith(" background")
        ]
        corner = Image.open(image).convert("RGB").getpixel((0, 0))
        assert max(abs(a - b) for a, b in zip(corner, COLOURS[background])) < 12, (image.name, background)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, count=0)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, caption_ext="txt")
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, sizes=((64, 16),))


def test_corrupt_files_fail_to_open(tmp_path: Path) -> None:
    paths = make_corrupt_files(tmp_path)
    assert [p.name for p in paths] == ["truncated.png", "empty.jpg", "not_an_image.png"]
    assert paths[1].stat().st_size == 0
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    for path in paths:
        with pytest.raises(OSError), Image.open(path) as image:  # UnidentifiedImageError is an OSError
            image.load()
