"""Which font grid labels use: $LORA_STUDIO_FONT, else a CJK-capable system font, else PIL's default; a file that
does not load falls back to the default. Runs under A1111's Pillow 9.5 too, whose default font is Latin-1 only."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import ImageFont

from lib_lora.blocks import grid_image
from lib_lora.blocks.grid_image import FONT_ENV, find_label_font, label_font, text_width

pytestmark = pytest.mark.hostcompat

SYSTEM_TTF = next((path for pattern in ("dejavu/DejaVuSans.ttf", "liberation/LiberationSans-Regular.ttf")
                   for path in Path("/usr/share/fonts/truetype").glob(pattern)), None)


@pytest.fixture(autouse=True)
def fresh_font():
    label_font.cache_clear()
    yield
    label_font.cache_clear()


def test_the_variable_wins_then_the_first_candidate_that_exists(tmp_path):
    mine, first, second = (tmp_path / name for name in ("mine.ttf", "first.ttc", "second.ttf"))
    first.write_bytes(b"x")
    second.write_bytes(b"x")
    candidates = [tmp_path / "absent.ttc", first, second]
    assert find_label_font({FONT_ENV: str(mine)}, candidates) == first  # named but missing: not used
    mine.write_bytes(b"x")
    assert find_label_font({FONT_ENV: str(mine)}, candidates) == mine
    assert find_label_font({}, candidates) == first
    assert find_label_font({FONT_ENV: "  "}, [tmp_path / "absent.ttc"]) is None


def test_candidates_cover_windows_macos_and_linux():
    names = " ".join(str(path) for path in grid_image.FONT_CANDIDATES)
    assert "meiryo.ttc" in names and "Hiragino" in names and "NotoSansCJK" in names


@pytest.mark.skipif(SYSTEM_TTF is None, reason="no DejaVu or Liberation TrueType font on this machine")
def test_a_named_truetype_font_draws_every_character(monkeypatch):
    monkeypatch.setenv(FONT_ENV, str(SYSTEM_TTF))
    font = label_font()
    assert isinstance(font, ImageFont.FreeTypeFont) and Path(font.path) == SYSTEM_TTF
    assert grid_image._drawable("キャラ, ÿ", font) == "キャラ, ÿ"  # not turned into "?"
    assert text_width("WWW", font) > text_width("iii", font)


def test_a_file_that_is_not_a_font_falls_back_to_the_default(monkeypatch, tmp_path):
    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font at all")
    monkeypatch.setenv(FONT_ENV, str(broken))
    font = label_font()
    assert getattr(font, "path", None) != str(broken)
    assert text_width("abc", font) > 0
