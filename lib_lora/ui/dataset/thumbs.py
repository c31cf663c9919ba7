"""Small JPEG thumbnails of dataset images as data: URIs, made when a gallery page shows them, remembered in memory
by (path, mtime, size) and, given a cache folder, on disk by the image's content (a renamed or copied image is
not decoded again, nor is any image after a restart).

The gallery is our own HTML, so the images travel inside it: no file route, nothing copied into gradio's
cache, the same in gradio 3.41 and 4.x. A JPEG is decoded at a reduced scale (Pillow's draft mode), so a page
of thumbnails of large photos costs little; an image is refused from its header when it is too large. No pixels
are kept: only the small JPEGs (at most THUMBS_IN_MEMORY thumbnails and PREVIEWS_IN_MEMORY previews).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import secrets
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ...dataset.images import DEFAULT_MAX_PIXELS

THUMB_SIDE = 128
PREVIEW_SIDE = 512
THUMBS_IN_MEMORY = 4096
PREVIEWS_IN_MEMORY = 64
_BACKGROUND = (255, 255, 255)
_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, Image.DecompressionBombError)
_JPEG_END = b"\xff\xd9"


def image_uri(path: Path, side: int = THUMB_SIDE, cache_dir: Path | None = None) -> str | None:
    """A `data:image/jpeg` URI of `path` fitted into side x side, or None when the image cannot be read."""
    try:
        status = Path(path).stat()
    except OSError:
        return None
    encoded = _encoded if side <= THUMB_SIDE else _preview
    return encoded(str(path), status.st_mtime_ns, status.st_size, side, None if cache_dir is None else str(cache_dir))


def cache_info() -> Any:
    """The thumbnail cache's hits, misses and size (functools' CacheInfo), for tests and benchmarks."""
    return _encoded.cache_info()


@lru_cache(maxsize=THUMBS_IN_MEMORY)
def _encoded(path: str, mtime_ns: int, size: int, side: int, cache_dir: str | None) -> str | None:
    """The URI for one version of a file (mtime and size are part of the key so an edit is seen)."""
    return _uri(path, side, cache_dir)


@lru_cache(maxsize=PREVIEWS_IN_MEMORY)
def _preview(path: str, mtime_ns: int, size: int, side: int, cache_dir: str | None) -> str | None:
    return _uri(path, side, cache_dir)


def _uri(path: str, side: int, cache_dir: str | None) -> str | None:
    data = _cached_jpeg(path, side, cache_dir) if cache_dir else _jpeg(path, side)
    return None if data is None else "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _cached_jpeg(path: str, side: int, cache_dir: str) -> bytes | None:
    """The thumbnail from the disk cache (named by the image's content and the side), made and stored if absent."""
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "blake2b").hexdigest()[:40] if hasattr(hashlib, "file_digest") \
                else hashlib.blake2b(f.read()).hexdigest()[:40]
    except OSError:
        return None
    stored = Path(cache_dir) / digest[:2] / f"{digest}_{side}.jpg"
    with contextlib.suppress(OSError):
        data = stored.read_bytes()
        if data.endswith(_JPEG_END):  # a whole file (a write cut short by a crash is made again)
            return data
    data = _jpeg(path, side)
    if data is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
            stored.parent.mkdir(parents=True, exist_ok=True)
            temp = stored.with_name(f".{stored.name}.{secrets.token_hex(4)}")
            temp.write_bytes(data)
            os.replace(temp, stored)  # not fsynced: a cache; a partial file is recognised and made again
    return data


def _jpeg(path: str, side: int) -> bytes | None:
    """The image fitted into side x side, as JPEG bytes; None when it cannot be read."""
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
    return buffer.getvalue()


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white (as the tagger sees it)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")
