"""image_errors: the one ladder that turns what Pillow raises for a bad file into an ImageReadError."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

from lib_lora.dataset.errors import ImageReadError
from lib_lora.dataset.images import image_errors, image_size, open_image
from lib_lora.tiny.images import make_corrupt_files

pytestmark = pytest.mark.hostcompat

LADDER = [
    (Image.DecompressionBombError("too big"), "refused as a decompression bomb: too big"),
    (UnidentifiedImageError("cannot identify"), "not an image Pillow can read (looks like a text file)"),
    (OSError("image file is truncated (3 bytes not processed)"),
     "reading it: truncated or damaged: image file is truncated (3 bytes not processed)"),
    (SyntaxError("broken PNG file"), "reading it: broken PNG file"),
    (struct.error(), "reading it: error"),  # no message: the exception's type names the reason
    (EOFError(), "reading it: EOFError"),
    (IndexError("tuple index out of range"), "reading it: tuple index out of range"),
]


@pytest.mark.parametrize("raised,reason", LADDER, ids=[type(raised).__name__ for raised, _ in LADDER])
def test_each_pillow_error_becomes_one_named_reason(tmp_path: Path, raised: Exception, reason: str) -> None:
    path = tmp_path / "a.png"
    path.write_text("not an image\n", encoding="utf-8")
    with pytest.raises(ImageReadError) as caught, image_errors(path, "reading it"):
        raise raised
    assert caught.value.reason == reason and caught.value.path == path
    assert caught.value.__cause__ is raised


def test_our_own_errors_and_unrelated_ones_pass_through(tmp_path: Path) -> None:
    own = ImageReadError("empty file (0 bytes)", path=tmp_path)
    with pytest.raises(ImageReadError) as caught, image_errors(tmp_path, "reading it"):
        raise own
    assert caught.value is own
    with pytest.raises(KeyError), image_errors(tmp_path, "reading it"):
        raise KeyError("a bug, not a bad file")


@pytest.mark.parametrize("name", ["empty.jpg", "not_an_image.png"])
def test_open_image_and_image_size_name_a_bad_file_alike(tmp_path: Path, name: str) -> None:
    path = {path.name: path for path in make_corrupt_files(tmp_path)}[name]
    with pytest.raises(ImageReadError) as decoding:
        open_image(path)
    with pytest.raises(ImageReadError) as reading_the_header:
        image_size(path)
    assert decoding.value.reason == reading_the_header.value.reason
