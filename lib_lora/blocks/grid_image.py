"""Labelled image grids: XY grids and the analyzer, labels drawn with a font already on the machine.

`compose_grid` lays tiles out in rows and columns, with optional column labels above, row labels to the left,
a label band above each tile and a title on top; long labels wrap (at spaces and commas) to their space.

Labels carry LoRA and preset names, often Japanese. PIL's own default fonts cover Latin only (Pillow 9.5's, in
A1111, Latin-1: other characters come out as `?`), so `label_font` takes the font file named by
$LORA_STUDIO_FONT, else the first CJK-capable system font of FONT_CANDIDATES (Windows, macOS, Linux), else PIL's
default. Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

MARGIN = 6
GAP = 4
LINE_GAP = 2
TEXT_COLOR = (20, 20, 20)
BACKGROUND = (255, 255, 255)
MIN_LABEL_WIDTH = 96
MAX_ROW_LABEL_WIDTH = 240
LABEL_SIZE = 13
FONT_ENV = "LORA_STUDIO_FONT"
"""A font file (.ttf/.ttc/.otf) for grid labels, taking precedence over FONT_CANDIDATES."""
_WINDOWS_FONTS = Path(os.environ.get("WINDIR", "C:/Windows")) / "Fonts"
FONT_CANDIDATES: tuple[Path, ...] = (
    _WINDOWS_FONTS / "meiryo.ttc", _WINDOWS_FONTS / "YuGothM.ttc", _WINDOWS_FONTS / "msgothic.ttc",
    _WINDOWS_FONTS / "msyh.ttc", _WINDOWS_FONTS / "malgun.ttf",
    Path("/System/Library/Fonts/ヒラギノ角ゴシック W3.ttc"), Path("/System/Library/Fonts/Hiragino Sans GB.ttc"),
    Path("/System/Library/Fonts/AppleSDGothicNeo.ttc"), Path("/Library/Fonts/Arial Unicode.ttf"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
)
"""System fonts with Japanese (and Chinese/Korean) glyphs, in order of preference."""


def find_label_font(environ: Mapping[str, str] = os.environ,
                    candidates: Sequence[Path] = FONT_CANDIDATES) -> Path | None:
    """The font file labels use: $LORA_STUDIO_FONT when it names a file, else the first candidate that exists."""
    chosen = environ.get(FONT_ENV, "").strip()
    for path in ([Path(chosen).expanduser()] if chosen else []) + list(candidates):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """`find_label_font`'s font at LABEL_SIZE px; where there is none, or it does not load, PIL's default font
    (Pillow ≥ 10.1 a TrueType font at LABEL_SIZE px, 9.5 its fixed bitmap font)."""
    path = find_label_font()
    if path is not None:
        try:
            return ImageFont.truetype(str(path), LABEL_SIZE)
        except OSError:  # not a font FreeType reads: the default below
            pass
    try:
        return ImageFont.load_default(size=LABEL_SIZE)
    except TypeError:  # Pillow < 10.1 (A1111's 9.5): no size, the bitmap font
        return ImageFont.load_default()


def _drawable(text: str, font: object) -> str:
    """`text` limited to what `font` can draw: the bitmap font knows Latin-1 only."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def text_width(text: str, font: object | None = None) -> int:
    """The drawn width of one line of `text` in pixels."""
    font = font or label_font()
    left, _, right, _ = font.getbbox(_drawable(text, font))  # type: ignore[attr-defined]
    return int(right - left)


def line_height(font: object | None = None) -> int:
    """The height of one line of labels, gap included."""
    font = font or label_font()
    _, top, _, bottom = font.getbbox("Agjy|")  # type: ignore[attr-defined]
    return int(bottom - min(top, 0)) + LINE_GAP


def wrap_text(text: str, width: int, font: object | None = None) -> list[str]:
    """`text` broken into lines no wider than `width` pixels: after spaces and commas, else mid-word.

    Explicit newlines are kept; a line never comes out empty unless the text is. The line being built always
    fits (or is one character), so every line does.
    """
    font = font or label_font()
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for char in paragraph:
            candidate = current + char
            if current and text_width(candidate.rstrip(), font) > width:
                cut = max(current.rfind(" "), current.rfind(","))
                rest = current[cut + 1 :].lstrip() + char
                if 0 <= cut < len(current) - 1 and text_width(rest.rstrip(), font) <= width:
                    lines.append(current[: cut + 1].rstrip())
                    current = rest
                else:  # no separator, or what follows it would not fit either: break here, mid-word
                    lines.append(current.rstrip())
                    current = char.lstrip()
            else:
                current = candidate
        lines.append(current.rstrip())  # a trailing space is not drawn, and was not measured
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, lines: Sequence[str], x: int, y: int, width: int, *,
                center: bool, font: object) -> None:
    step = line_height(font)
    for index, line in enumerate(lines):
        shown = _drawable(line, font)
        offset = max(0, (width - text_width(line, font)) // 2) if center else 0
        draw.text((x + offset, y + index * step), shown, fill=TEXT_COLOR, font=font)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _GridLayout:
    """Where a grid's parts go: sizes in pixels and every label already wrapped to its space."""

    rows: int
    tile_w: int
    tile_h: int
    cell_w: int
    row_label_w: int
    body_w: int
    title_lines: list[str]
    column_lines: list[list[str]]
    tile_lines: list[list[list[str]]]
    row_label_lines: list[list[str]]
    band_h: list[int]
    header_h: int
    title_h: int

    @property
    def width(self) -> int:
        """The canvas width, margins included."""
        return self.body_w + 2 * MARGIN

    @property
    def height(self) -> int:
        """The canvas height: title, column labels, each row's label band and tiles, gaps and margins."""
        tiles_h = self.rows * self.tile_h + max(self.rows - 1, 0) * GAP
        return 2 * MARGIN + self.title_h + self.header_h + sum(self.band_h) + tiles_h


def compose_grid(
    tiles: Sequence[Sequence[Image.Image | None]],
    *,
    column_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    tile_labels: Sequence[Sequence[str]] | None = None,
    title: str = "",
) -> Image.Image:
    """One RGB image of `tiles[row][column]` (None leaves a blank), labelled; every tile gets the largest size.

    `column_labels`/`row_labels` are drawn centred above the columns / left of the rows when given;
    `tile_labels[row][column]` above each tile.
    """
    font = label_font()
    layout = _grid_layout(tiles, column_labels, row_labels, tile_labels, title, font)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    _draw_grid(canvas, tiles, layout, font)
    return canvas


def _grid_layout(tiles: Sequence[Sequence[Image.Image | None]], column_labels: Sequence[str],
                 row_labels: Sequence[str], tile_labels: Sequence[Sequence[str]] | None, title: str,
                 font: object) -> _GridLayout:
    """The layout `compose_grid` draws: cells as wide as the widest tile (or a label's minimum), labels wrapped."""
    rows = len(tiles)
    columns = max((len(row) for row in tiles), default=0)
    present = [tile for row in tiles for tile in row if tile is not None]
    tile_w = max((tile.width for tile in present), default=64)
    tile_h = max((tile.height for tile in present), default=64)
    step = line_height(font)
    label_w = max(tile_w, MIN_LABEL_WIDTH)
    cell_w = label_w if (column_labels or tile_labels) else tile_w

    row_label_w = 0
    if row_labels:
        widest = max(text_width(line, font) for label in row_labels for line in label.split("\n"))
        row_label_w = min(max(widest, 24), MAX_ROW_LABEL_WIDTH) + GAP
    column_lines = [wrap_text(label, cell_w, font) for label in column_labels]
    header_h = (max(len(lines) for lines in column_lines) * step + GAP) if column_lines else 0
    tile_lines = [[wrap_text(label, cell_w, font) for label in row] for row in (tile_labels or [])]
    band_h = [
        (max((len(lines) for lines in tile_lines[r]), default=0) * step + (GAP if tile_lines[r] else 0))
        if r < len(tile_lines) else 0
        for r in range(rows)
    ]
    row_label_lines = [wrap_text(label, max(row_label_w - GAP, 1), font) for label in row_labels]

    body_w = row_label_w + columns * cell_w + max(columns - 1, 0) * GAP
    title_lines = wrap_text(title, body_w, font) if title else []
    title_h = len(title_lines) * step + GAP if title_lines else 0
    return _GridLayout(
        rows=rows, tile_w=tile_w, tile_h=tile_h, cell_w=cell_w, row_label_w=row_label_w, body_w=body_w,
        title_lines=title_lines, column_lines=column_lines, tile_lines=tile_lines, row_label_lines=row_label_lines,
        band_h=band_h, header_h=header_h, title_h=title_h,
    )


def _draw_grid(canvas: Image.Image, tiles: Sequence[Sequence[Image.Image | None]], layout: _GridLayout,
               font: object) -> None:
    """Draw `layout`'s title and labels on `canvas` and paste each tile centred in its cell."""
    draw = ImageDraw.Draw(canvas)
    step = line_height(font)
    cell_w, tile_h = layout.cell_w, layout.tile_h
    _draw_lines(draw, layout.title_lines, MARGIN, MARGIN, layout.body_w, center=False, font=font)
    top = MARGIN + layout.title_h
    left = MARGIN + layout.row_label_w
    for column, lines in enumerate(layout.column_lines):
        _draw_lines(draw, lines, left + column * (cell_w + GAP), top, cell_w, center=True, font=font)
    y = top + layout.header_h
    for r, row in enumerate(tiles):
        if r < len(layout.tile_lines):
            for column, lines in enumerate(layout.tile_lines[r]):
                _draw_lines(draw, lines, left + column * (cell_w + GAP), y, cell_w, center=True, font=font)
        y += layout.band_h[r]
        if r < len(layout.row_label_lines):
            label_y = y + max(0, (tile_h - len(layout.row_label_lines[r]) * step) // 2)
            _draw_lines(draw, layout.row_label_lines[r], MARGIN, label_y, layout.row_label_w - GAP, center=False,
                        font=font)
        for column, tile in enumerate(row):
            if tile is not None:
                x = left + column * (cell_w + GAP) + (cell_w - tile.width) // 2
                canvas.paste(tile.convert("RGB"), (x, y + (tile_h - tile.height) // 2))
        y += tile_h + GAP
