"""Tagger preprocessing parity: ours equals the official WD14 steps, written out plainly here, to the pixel.

The reference below follows SmilingWolf's wd-tagger Space step by step, with no shortcut: every image goes
through RGBA, is composited onto white, padded to a centred white square, resized with PIL bicubic to the
session's size, turned into float32 0-255 and reversed to BGR, then stacked NHWC.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from lib_lora.dataset.images import open_image
from lib_lora.dataset.preprocess import prepare_batch, prepare_image, to_square_rgb
from lib_lora.tiny.images import generate_dataset

pytestmark = pytest.mark.hostcompat


def reference(image: Image.Image, size: int) -> np.ndarray:
    """The official steps, one by one."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    side = max(rgb.size)
    padded = Image.new("RGB", (side, side), (255, 255, 255))
    padded.paste(rgb, ((side - rgb.size[0]) // 2, (side - rgb.size[1]) // 2))
    if side != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    array = np.asarray(padded, dtype=np.float32)
    return array[:, :, ::-1]


def drawn(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A picture with shapes, noise and (for alpha modes) a half-transparent area, in `mode`."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[: size[1] // 2, : size[0] // 3, 3] = 0  # a transparent corner
    pixels[size[1] // 2:, size[0] // 2:, 3] = 128  # half transparent
    image = Image.fromarray(pixels, "RGBA")
    ImageDraw.Draw(image).ellipse((2, 2, size[0] - 3, size[1] - 3), outline=(200, 30, 30, 255), width=3)
    if mode == "P":  # palette with a transparent index
        palette = image.convert("RGB").quantize(16)
        palette.info["transparency"] = 0
        return palette
    return image.convert(mode)


CASES = [
    ("RGB", (64, 64), 448),  # square, upscaled
    ("RGB", (96, 64), 448),  # landscape
    ("RGB", (64, 96), 448),  # portrait
    ("RGB", (97, 31), 448),  # odd sizes: the centring rounds down
    ("RGBA", (120, 80), 448),
    ("LA", (50, 90), 448),
    ("L", (80, 81), 448),
    ("P", (70, 40), 448),
    ("RGB", (1000, 600), 448),  # downscaled
    ("RGBA", (448, 448), 448),  # already the size: no resize
    ("RGB", (300, 200), 224),  # another session size
    ("CMYK", (40, 60), 64),
]


@pytest.mark.parametrize(("mode", "size", "side"), CASES)
def test_matches_the_official_steps_to_the_pixel(mode: str, size: tuple[int, int], side: int) -> None:
    image = drawn(mode, size, seed=sum(size))
    ours = prepare_image(image, side)
    expected = reference(image, side)
    assert ours.dtype == np.float32 and ours.shape == (side, side, 3)
    assert np.array_equal(ours, expected)


def test_generated_dataset_files_as_decoded_match(tmp_path) -> None:
    """The generated images (PNG, JPEG, a transparent RGBA) through open_image, batched NHWC."""
    data = generate_dataset(tmp_path, count=6, seed=5, sizes=((64, 64), (96, 64), (64, 96)))
    images = [open_image(path) for path in data.images]
    assert {image.mode for image in images} == {"RGB", "RGBA"}
    batch = prepare_batch(images, 448)
    assert batch.shape == (6, 448, 448, 3) and batch.flags["C_CONTIGUOUS"]
    for row, image in zip(batch, images):
        assert np.array_equal(row, reference(image, 448))


def test_transparent_becomes_white_and_channels_are_bgr() -> None:
    clear = Image.new("RGBA", (8, 4), (10, 20, 30, 0))
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    assert (prepare_image(clear, 8) == 255).all()
    assert prepare_image(red, 4)[0, 0].tolist() == [0.0, 0.0, 255.0]
    square = to_square_rgb(Image.new("RGB", (4, 2), (0, 0, 0)))
    assert square.size == (4, 4)
    assert np.asarray(square)[:, 0, 0].tolist() == [255, 0, 0, 255]  # one white row above and below


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 80),
    height=st.integers(1, 80),
    mode=st.sampled_from(["RGB", "RGBA", "L", "LA", "P"]),
    side=st.sampled_from([16, 32, 64]),
    seed=st.integers(0, 1000),
)
def test_any_size_and_mode_matches(width: int, height: int, mode: str, side: int, seed: int) -> None:
    image = drawn(mode, (width, height), seed) if min(width, height) >= 6 else Image.new(mode, (width, height))
    assert np.array_equal(prepare_image(image, side), reference(image, side))
