"""Small JPEG thumbnails of dataset images as data: URIs, cached in memory by (path, mtime, size).

The gallery is our own HTML, so the images travel inside it: no file route, nothing copied into gradio's
cache, the same in gradio 3.41 and 4.x. A JPEG is decoded at a reduced scale (Pillow's draft mode), so a page
of thumbnails of large photos costs little; an image is refused from its header when it is too large.
"""

from __future__ import annotations

import base64
import io
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ..dataset.images import DEFAULT_MAX_PIXELS

THUMB_SIDE = 128
PREVIEW_SIDE = 512
_BACKGROUND = (255, 255, 255)
_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, Image.DecompressionBombError)


def image_uri(path: Path, side: int = THUMB_SIDE) -> str | None:
    """A `data:image/jpeg` URI of `path` fitted into side x side, or None when the image cannot be read."""
    try:
        status = Path(path).stat()
    except OSError:
        return None
    return _encoded(str(path), status.st_mtime_ns, status.st_size, side)


def cache_info() -> Any:
    """The cache's hits, misses and size (functools' CacheInfo), for tests and benchmarks."""
    return _encoded.cache_info()


@lru_cache(maxsize=4096)
def _encoded(path: str, mtime_ns: int, size: int, side: int) -> str | None:
    """The URI for one version of a file (mtime and size are part of the key so an edit is seen)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > DEFAULT_MAX_PIXELS:
                return None
            image.draft("RGB", (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is enough
            image.seek(0)
            picture = ImageOps.exif_transpose(image)
            picture.thumbnail((side, side))
            rgb = _flatten(picture)
    except _ERRORS:
        return None
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white (as the tagger sees it)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")
