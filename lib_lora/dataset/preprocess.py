"""The official WD14 preprocessing (SmilingWolf's wd-tagger Space), as pure PIL + numpy.

Transparent pixels become white, the image is padded to a centred white square, resized to the model's input
side with PIL bicubic, and handed over as BGR float32 0-255 in NHWC layout (`shared/research/dataset.md` §1;
the models normalise inside the graph). Other variants (area/Lanczos resampling, edge-repeat padding) change
the tags a little and are deliberately not offered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["WHITE", "prepare_batch", "prepare_image", "to_square_rgb"]

WHITE = (255, 255, 255)


def to_square_rgb(image: Image.Image) -> Image.Image:
    """RGB on white (alpha composited, palette transparency included), padded to a centred white square."""
    if image.mode == "RGB":
        rgb = image
    elif {"A", "a"} & set(image.getbands()) or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        canvas.alpha_composite(rgba)
        rgb = canvas.convert("RGB")
    else:  # no alpha: compositing onto white would return the same pixels, so skip the two full-size copies
        rgb = image.convert("RGB")
    width, height = rgb.size
    if width == height:
        return rgb
    side = max(width, height)
    square = Image.new("RGB", (side, side), WHITE)
    square.paste(rgb, ((side - width) // 2, (side - height) // 2))
    return square


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """One image as the model input: float32 [size, size, 3], BGR, 0-255."""
    square = to_square_rgb(image)
    if square.width != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def prepare_batch(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """Several images as one contiguous float32 [n, size, size, 3] batch."""
    batch = np.empty((len(images), size, size, 3), dtype=np.float32)
    for row, image in zip(batch, images):
        row[...] = prepare_image(image, size)
    return batch
