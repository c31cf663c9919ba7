"""open_image: every bad file is a clear ImageReadError; every odd mode decodes to the right RGB(A) pixels."""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.dataset.errors import ImageReadError
from lib_lora.dataset.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, image_size, is_image_file, open_image
from lib_lora.tiny.images import make_corrupt_files

pytestmark = pytest.mark.hostcompat


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height and which holds no pixel data (a decompression-bomb stand-in)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


# --- bad files -----------------------------------------------------------------------------------------------

CORRUPT_REASONS = {
    "truncated.png": "truncated",
    "empty.jpg": "empty file (0 bytes)",
    "not_an_image.png": "not an image",
}


@pytest.mark.parametrize("name", sorted(CORRUPT_REASONS))
def test_corrupt_files_raise_a_named_reason(tmp_path: Path, name: str) -> None:
    paths = {path.name: path for path in make_corrupt_files(tmp_path)}
    with pytest.raises(ImageReadError) as caught:
        open_image(paths[name])
    assert CORRUPT_REASONS[name] in str(caught.value)
    assert str(paths[name]) in str(caught.value) and caught.value.path == paths[name]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="cannot read the file"):
        open_image(tmp_path / "nope.png")


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (20_000, 20_000), (9_000, 9_000)])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_refused_from_the_header(tmp_path: Path, width: int, height: int) -> None:
    """Above Pillow's error limit, between its warning and error limits, and just above ours: all refused."""
    before = Image.MAX_IMAGE_PIXELS
    bomb = png_header_only(tmp_path / "bomb.png", width, height)
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageReadError) as caught:
        open_image(bomb)
    assert "decompression bomb" in str(caught.value)
    with pytest.raises(ImageReadError):
        image_size(bomb)
    assert Image.MAX_IMAGE_PIXELS == before


def test_max_pixels_applies_to_real_images(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(path)
    with pytest.raises(ImageReadError, match="3072 pixels is more than the limit of 3071"):
        open_image(path, max_pixels=3071)
    assert open_image(path, max_pixels=3072).size == (64, 48)
    assert DEFAULT_MAX_PIXELS < 89_478_485  # below Pillow's warning: it never fires for an accepted image


def test_concurrent_reads_keep_their_own_limits(tmp_path: Path) -> None:
    """No global state is switched: threads with different limits and bombs in between all get their answer."""
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(good)
    bomb = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)

    def read(i: int) -> str:
        path, limit = [(good, 10_000), (good, 100), (bomb, 10_000)][i % 3]
        try:
            return f"ok {open_image(path, max_pixels=limit).size}"
        except ImageReadError:
            return "refused"

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read, range(30)))
    assert results == ["ok (40, 40)", "refused", "refused"] * 10


# --- modes ---------------------------------------------------------------------------------------------------


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 257 * 200]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")  # Pillow 10 reads "I;16", Pillow 9.5 "I"
    image = open_image(path)
    assert image.mode == "RGB"
    assert pixels(image)[0, :, 0].tolist() == [0, 100, 255, 200]
    assert (pixels(image)[..., 0] == pixels(image)[..., 2]).all()


@pytest.mark.parametrize("fmt,suffix,tolerance", [("TIFF", ".tif", 0), ("JPEG", ".jpg", 6)])
def test_cmyk_becomes_rgb(tmp_path: Path, fmt: str, suffix: str, tolerance: int) -> None:
    path = tmp_path / f"cmyk{suffix}"
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red
    cmyk.paste((255, 0, 255, 0), (8, 0, 16, 16))  # pure green on the right
    cmyk.save(path, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    image = open_image(path)
    assert image.mode == "RGB"
    assert np.abs(pixels(image)[8, 2].astype(int) - [255, 0, 0]).max() <= tolerance
    assert np.abs(pixels(image)[8, 13].astype(int) - [0, 255, 0]).max() <= tolerance


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    palette_image.paste(1, (2, 0, 4, 2))
    path = tmp_path / "p.png"
    palette_image.save(path, transparency=0)
    image = open_image(path)
    assert image.mode == "RGBA"
    assert pixels(image)[0, 0, 3] == 0 and pixels(image)[0, 3].tolist() == [200, 10, 20, 255]


def test_gif_first_frame_and_transparency(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = open_image(path)
    assert image.mode in ("RGB", "RGBA") and pixels(image)[4, 4, :3].tolist() == [255, 0, 0]


CASES = [
    # (mode, value, saved as, expected mode, expected pixel)
    ("L", 77, "png", "RGB", [77, 77, 77]),
    ("1", 1, "png", "RGB", [255, 255, 255]),
    ("LA", (90, 128), "png", "RGBA", [90, 90, 90, 128]),
    ("RGBA", (1, 2, 3, 4), "png", "RGBA", [1, 2, 3, 4]),
    ("RGB", (10, 20, 30), "bmp", "RGB", [10, 20, 30]),
    ("RGB", (10, 20, 30), "webp", "RGB", None),
    ("P", 0, "png", "RGB", [0, 0, 0]),
]


@pytest.mark.parametrize("mode,value,fmt,expected_mode,expected", CASES)
def test_modes(tmp_path: Path, mode: str, value: object, fmt: str, expected_mode: str, expected: list | None) -> None:
    if f".{fmt}" not in IMAGE_SUFFIXES:
        pytest.skip(f"this Pillow cannot read .{fmt}")
    path = tmp_path / f"image.{fmt}"
    Image.new(mode, (6, 4), value).save(path, **({"lossless": True} if fmt == "webp" else {}))
    image = open_image(path)
    assert image.mode == expected_mode and image.size == (6, 4)
    if expected is not None:
        assert pixels(image)[1, 1].tolist() == expected


@pytest.mark.parametrize(
    "orientation,size,top_left", [(1, (40, 20), "red"), (6, (20, 40), "red"), (3, (40, 20), "blue")]
)
def test_exif_orientation_applied(tmp_path: Path, orientation: int, size: tuple, top_left: str) -> None:
    """Left half red, right half blue; orientation 6 (rotate 90 cw) puts red on top, 3 (180) blue on the left."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif.tobytes())
    result = open_image(path)
    assert result.size == size
    assert pixels(result)[0, 0].tolist() == {"red": [255, 0, 0], "blue": [0, 0, 255]}[top_left]


def test_result_is_detached_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (5, 6, 7)).save(path)
    image = open_image(path)
    path.unlink()
    assert image.getpixel((3, 3)) == (5, 6, 7)


def test_suffixes() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"} <= IMAGE_SUFFIXES
    assert (".avif" in IMAGE_SUFFIXES) == (".avif" in Image.registered_extensions())
    assert is_image_file(Path("X.PNG")) and not is_image_file(Path("x.txt")) and not is_image_file(Path("x.png~"))


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda: Image.new("I;16B", (4, 4), 257 * 30), [30, 30, 30]),
        (lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), [128, 128, 128]),  # float 0..1 data
        (lambda: Image.fromarray(np.full((4, 4), 40.0, np.float32)), [40, 40, 40]),  # float 0..255 data
        (lambda: Image.new("LAB", (4, 4), (138, 208, 195)), [251, 9, 11]),  # L*54 a*80 b*67 = sRGB red
        (lambda: Image.new("LAB", (4, 4), (128, 128, 128)), [119, 119, 119]),  # a, b stored offset by 128
    ],
    ids=["16-bit big-endian", "float 0-1", "float 0-255", "lab red", "lab grey"],
)
def test_tiff_modes(tmp_path: Path, make, expected: list[int]) -> None:
    path = tmp_path / "image.tif"
    make().save(path)
    image = open_image(path)
    assert image.mode == "RGB" and pixels(image)[2, 2].tolist() == expected
