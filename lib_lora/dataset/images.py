"""Read training images safely: fully decoded, EXIF-rotated, "RGB" or "RGBA", typed errors for bad files.

Every failure is an `ImageReadError` naming the file and the reason: an empty file, a file that is not an
image, a truncated file, an image larger than `max_pixels` (a decompression bomb: refused from the header,
before any pixel is allocated) or a mode that cannot be turned into RGB. A `max_pixels` above Pillow's own
limit (2 x `Image.MAX_IMAGE_PIXELS`) cannot lift that one, and Pillow warns above `Image.MAX_IMAGE_PIXELS`.
Pillow's global settings
(`Image.MAX_IMAGE_PIXELS`, `ImageFile.LOAD_TRUNCATED_IMAGES`, the warning filters) are never changed, so this
is safe to call from several threads at once.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError
from .reading.worker import READ_FLAGS, has_signature, png_header_size  # shared with the helper

_CANDIDATE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".avif")


def _readable_suffixes() -> frozenset[str]:
    """The candidate suffixes Pillow has a reader for in this environment (AVIF and WebP depend on the build)."""
    registered = Image.registered_extensions()  # imports Pillow's plugins (and any registered third-party one)
    return frozenset(suffix for suffix in _CANDIDATE_SUFFIXES if suffix in registered)


IMAGE_SUFFIXES: frozenset[str] = _readable_suffixes()
"""Lower-case suffixes of the image files a dataset folder holds; ".avif" only when Pillow can read it."""

DEFAULT_MAX_PIXELS = 8192 * 8192
"""Images with more pixels than this (64 Mpx) are refused from their header: no training image is that big,
and it stays below Pillow's own bomb warning (about 89 Mpx), which therefore never fires for an image we accept."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Exceptions Pillow's decoders raise for damaged files: OSError ("image file is truncated", "broken data
# stream"), SyntaxError (bad PNG chunks), ValueError/struct.error/EOFError/IndexError (short headers, bad tables).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    """Whether the file's suffix is one of IMAGE_SUFFIXES (case-insensitive); the content is not looked at."""
    return path.suffix.lower() in IMAGE_SUFFIXES


@contextlib.contextmanager
def image_errors(path: Path, action: str) -> Iterator[None]:
    """Turn what Pillow raises for a bad file while doing `action` to `path` into an ImageReadError naming the file
    and why (an ImageReadError raised inside passes through as it is)."""
    try:
        yield
    except ImageReadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"refused as a decompression bomb: {error}", path=path) from error
    except UnidentifiedImageError as error:
        raise ImageReadError(f"not an image Pillow can read ({_describe_start(path)})", path=path) from error
    except _DECODE_ERRORS as error:
        reason = str(error) or type(error).__name__
        if "truncated" in reason:
            reason = f"truncated or damaged: {reason}"
        raise ImageReadError(f"{action}: {reason}", path=path) from error


def open_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode the first frame of `path`, EXIF orientation applied, as a detached "RGB" or "RGBA" image.

    Raises ImageReadError for an empty, truncated, unidentifiable or oversized file (> max_pixels, checked
    before decoding). 16-bit greyscale is scaled to 8 bits (v / 257), palette or tRNS transparency gives RGBA.
    """
    path = Path(path)
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageReadError(f"cannot read the file: {error.strerror or error}", path=path) from error
    if size == 0:
        raise ImageReadError("empty file (0 bytes)", path=path)
    with image_errors(path, "cannot decode the image"), Image.open(path) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageReadError(
                f"{width}x{height} = {width * height} pixels is more than the limit of {max_pixels} "
                "(refused before decoding: a huge image or a decompression bomb)",
                path=path,
            )
        image.seek(0)  # the first frame of an animation
        image.load()
        return _normalise_mode(_apply_exif_orientation(image), path)


def image_size(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) read from the header only, after the same empty/identify/size checks as open_image."""
    path = Path(path)
    with image_errors(path, "cannot read the image header"):
        if path.stat().st_size == 0:
            raise ImageReadError("empty file (0 bytes)", path=path)
        with Image.open(path) as image:
            width, height = image.size
    if width * height > max_pixels:
        raise ImageReadError(f"{width}x{height} is more than the limit of {max_pixels} pixels", path=path)
    return width, height


IMAGE_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\x89PNG\r\n\x1a\n"), (0, b"\xff\xd8\xff"), (0, b"GIF87a"), (0, b"GIF89a"), (0, b"BM"), (8, b"WEBP"),
    (4, b"ftyp"),
)
"""(offset, bytes) that start the files of IMAGE_SUFFIXES' formats (PNG, JPEG, GIF, BMP, WebP, AVIF/HEIF)."""


def check_image_signature(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """ImageReadError unless `path` starts like an image (its first 32 bytes; a PNG's size is checked too).

    Much cheaper than image_size (no Pillow): what listing 50,000 images can afford. A file in a format Pillow
    reads that has none of the known signatures is checked by image_size instead."""
    path = path if isinstance(path, Path) else Path(path)  # a Path is not parsed again (50,000 calls per scan)
    try:
        descriptor = os.open(path, READ_FLAGS)  # a pipe: no wait, no bytes
        try:
            head = os.read(descriptor, 32)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise ImageReadError(f"cannot read the file: {error.strerror or error}", path=path) from error
    if not head:
        raise ImageReadError("empty file (0 bytes)", path=path)
    if not has_signature(head, IMAGE_SIGNATURES):
        image_size(path, max_pixels=max_pixels)
        return
    size = png_header_size(head)
    if size is not None:
        width, height = size
        if width * height > max_pixels:
            raise ImageReadError(f"{width}x{height} is more than the limit of {max_pixels} pixels", path=path)


def _describe_start(path: Path) -> str:
    """A hint for an unidentifiable file: text files are named as such."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return "unreadable"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown format"
    return "looks like a text file" if head.strip() else "only whitespace"


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """A transposed copy per the EXIF Orientation tag; a damaged EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error, OSError):
        # EXIF is metadata: a broken block must not make a decodable image unreadable.
        return image.copy()


def _normalise_mode(image: Image.Image, path: Path) -> Image.Image:
    """The image as "RGB" or "RGBA" (alpha kept when the file has any), always a new image object."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if mode == "F":
        return _float_to_rgb(image)
    if mode == "LAB":
        return _lab_to_rgb(image, path)
    target = "RGBA" if mode in _ALPHA_MODES or "transparency" in image.info else "RGB"
    if mode == target:
        return image.copy()
    try:
        if mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply through Pillow's own conversion
            image = image.convert("RGBA" if mode == "RGBa" else "LA")
        return image.convert(target)
    except ValueError as error:
        raise ImageReadError(f"cannot convert mode {mode!r} to {target}: {error}", path=path) from error


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit greyscale ("I;16*", or "I" as older Pillow reads 16-bit PNGs) scaled 0..65535 -> 0..255, as RGB."""
    values = np.asarray(image).astype(np.float64)
    # Pillow's own convert("L") clips values above 255 instead of scaling; "I" holds 16-bit data here
    # (Pillow uses it for 16-bit PNG/TIFF greyscale), so values are clamped to 0..65535 and scaled.
    scaled = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")  # 2-D uint8 -> "L"


def _float_to_rgb(image: Image.Image) -> Image.Image:
    """32-bit float greyscale: 0..1 data scaled to 0..255 (any larger value means 0..255 data), as RGB."""
    values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8)).convert("RGB")


def _lab_to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """CIE L*a*b* to sRGB through LittleCMS (Pillow's plain convert would read the channels as R, G, B)."""
    try:
        from PIL import ImageCms
    except ImportError as error:
        raise ImageReadError("cannot convert an L*a*b* image: Pillow was built without LittleCMS", path=path) from error
    try:
        transform = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(image, transform)
    except (OSError, ValueError, ImageCms.PyCMSError) as error:
        raise ImageReadError(f"cannot convert the L*a*b* image to RGB: {error}", path=path) from error
