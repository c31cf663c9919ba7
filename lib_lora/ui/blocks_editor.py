"""The Block Weight tab's editor: block sliders for the model's family, presets, the vector text and the tag.

Handlers return {output name: value} dicts (see blocks_wiring); they take the arch name and the format toggle
from the page, so they are plain functions of their inputs plus the user's preset file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..blocks.presets import (
    FAMILY_TITLES,
    FORMATS,
    FULL_LENGTH,
    LORA_LENGTH,
    PresetBook,
    expand_vector,
    family_of,
    family_of_length,
    parse_vector,
    shortest_length,
    vector_for,
)
from ..blocks.syntax import parse_prompt
from ..blocks.userpresets import delete_user_preset, load_presets, save_user_preset
from ..errors import BlockWeightError
from .common import escape_markdown

MAX_BLOCKS = max(length for formats in FORMATS.values() for length in formats)
"""Sliders built: the longest format (SD1/SD2's 26); the unused ones are hidden."""
SLIDER_RANGE = (-1.0, 2.0, 0.05)
DEFAULT_PRESET = "ALL"

Updates = dict[str, Any]


def slider_key(index: int) -> str:
    return f"w{index:02d}"


SLIDER_KEYS: tuple[str, ...] = tuple(slider_key(i) for i in range(MAX_BLOCKS))


@dataclass(frozen=True)
class BlockLayout:
    """The blocks the sliders show: the arch's LoRA format (17 / 12) or its full one (26 / 20)."""

    arch: str
    length: int

    @classmethod
    def of(cls, arch: str, full: bool) -> BlockLayout:
        family = family_of(arch)
        return cls(arch, (FULL_LENGTH if full else LORA_LENGTH)[family])

    @property
    def family(self) -> str:
        return family_of(self.arch)

    @property
    def full(self) -> bool:
        return self.length == FULL_LENGTH[self.family]

    @property
    def blocks(self) -> tuple[str, ...]:
        return FORMATS[self.family][self.length]

    def slider_updates(self, values: Sequence[float]) -> Updates:
        """Label, visibility and value of every slider: the layout's blocks, then hidden ones."""
        updates: Updates = {}
        for index, key in enumerate(SLIDER_KEYS):
            if index < self.length:
                updates[key] = gr.update(label=self.blocks[index], visible=True, value=float(values[index]))
            else:
                updates[key] = gr.update(visible=False, value=0.0)
        return updates

    def values_of(self, weights: dict[str, float]) -> list[float]:
        return vector_for(weights, self.arch, self.length)


def code_span(value: object) -> str:
    """`value` as a Markdown code span (shown literally: no escaping inside, backticks dropped)."""
    return f"`{str(value).replace('`', '')}`"


def vector_text(values: Sequence[float]) -> str:
    return ",".join(f"{float(v):g}" for v in values)


def copy_tag(lora: str | None, weight: float, spec: str) -> str:
    """`<lora:name:w:SPEC>` (SPEC a preset name or a vector), checked by the prompt parser; "" without a LoRA."""
    if not lora:
        return ""
    tag = f"<lora:{lora}:{float(weight):g}:{spec}>"
    parse_prompt(tag)
    return tag


def block_spec(layout: BlockLayout, values: Sequence[float], preset: str | None, book: PresetBook) -> str:
    """The preset's name when the sliders hold exactly that preset, else the literal vector."""
    weights = expand_vector(values, layout.arch)
    if preset and preset in book.names(layout.arch) and book.get(preset, layout.arch) == weights:
        return preset
    return vector_text(values)


def _bounded(values: Sequence[float]) -> None:
    low, high, _ = SLIDER_RANGE
    outside = [f"{v:g}" for v in values if not low <= v <= high]
    if outside:
        raise BlockWeightError(f"weights {', '.join(outside)} are outside the sliders' range {low:g}…{high:g}")


class BlockEditor:
    """Preset, slider and vector handlers over the user's preset file (`presets_file()` read on each call)."""

    def __init__(self, presets_file: Callable[[], Path]) -> None:
        self._presets_file = presets_file

    def book(self) -> PresetBook:
        """Built-in presets with the user's file merged over them."""
        return load_presets(self._presets_file())

    def preset_choices(self, arch: str) -> list[str]:
        return self.book().names(arch)

    def _show(self, layout: BlockLayout, values: Sequence[float], lora: str | None, weight: float,
              preset: str | None, book: PresetBook) -> Updates:
        _bounded(values)
        return {
            **layout.slider_updates(values),
            "full": layout.full,
            "vector": vector_text(values),
            "tag": copy_tag(lora, weight, block_spec(layout, values, preset, book)),
        }

    def load_preset(self, preset: str, arch: str, full: bool, lora: str | None, weight: float) -> Updates:
        """The preset in the sliders; a preset set in the full format switches the sliders to it."""
        book = self.book()
        weights = book.get(preset, arch)
        layout = BlockLayout.of(arch, full)
        if shortest_length(weights, arch) > layout.length:
            layout = BlockLayout.of(arch, True)
        updates = self._show(layout, layout.values_of(weights), lora, weight, preset, book)
        return {**updates, "status": f"Preset **{escape_markdown(preset)}** loaded ({layout.length} values)."}

    def from_sliders(self, arch: str, full: bool, lora: str | None, weight: float, preset: str | None,
                     *values: float) -> Updates:
        """Vector text and tag for the sliders' values."""
        layout = BlockLayout.of(arch, full)
        shown = [float(v) for v in values[: layout.length]]
        return {"vector": vector_text(shown),
                "tag": copy_tag(lora, weight, block_spec(layout, shown, preset, self.book()))}

    def retag(self, lora: str | None, weight: float, text: str, preset: str | None, arch: str) -> Updates:
        """The tag for the prompt from the vector text (a preset's name when it holds exactly that preset)."""
        values = parse_vector(text, where="block weights")
        return {"tag": copy_tag(lora, weight, block_spec(BlockLayout(arch, len(values)), values, preset, self.book()))}

    def from_vector(self, text: str, arch: str, full: bool, lora: str | None, weight: float,
                    preset: str | None) -> Updates:
        """The typed vector in the sliders; its length may switch between the family's two formats."""
        values = parse_vector(text, where="block weights")
        family = family_of(arch)
        if family_of_length(len(values)) != family or len(values) not in FORMATS[family]:
            lengths = " or ".join(str(n) for n in FORMATS[family])
            raise BlockWeightError(
                f"block weights: expected {lengths} values for {FAMILY_TITLES[family]}, got {len(values)}"
            )
        layout = BlockLayout(arch, len(values))
        return {**self._show(layout, values, lora, weight, preset, self.book()), "status": ""}

    def switch_format(self, full: bool, text: str, arch: str, lora: str | None, weight: float,
                      preset: str | None) -> Updates:
        """The same weights in the other format; switching to the short one drops the blocks it lacks."""
        old = BlockLayout.of(arch, not full)
        new = BlockLayout.of(arch, full)
        try:
            values = parse_vector(text, where="block weights")
            weights = expand_vector(values, arch)
        except BlockWeightError:
            weights = self.book().get(DEFAULT_PRESET, arch)
        dropped = [b for b in old.blocks if b not in new.blocks and weights.get(b, 0.0) != 0.0]
        updates = self._show(new, new.values_of(weights), lora, weight, preset, self.book())
        note = f"; {', '.join(dropped)} set to 0 (the {new.length}-value format has no slider for them)" if dropped \
            else ""
        return {**updates, "status": f"{new.length}-value format{note}."}

    def save_preset(self, name: str, overwrite: bool, arch: str, text: str) -> Updates:
        """Write `name` with the vector into the user's preset file; an existing name needs `overwrite`."""
        name = (name or "").strip()
        if not name:
            raise BlockWeightError("type a name for the preset first")
        values = parse_vector(text, where="block weights")
        expand_vector(values, arch)  # the length must fit the loaded model's family
        book = self.book()
        family = family_of(arch)
        if name in book and family in book.preset(name).vectors and not overwrite:
            raise BlockWeightError(
                f"preset {name!r} already exists ({book.preset(name).source}); tick Overwrite to replace it"
            )
        path = self._presets_file()
        replaced = save_user_preset(path, name, values)
        verb = "replaced" if replaced else "saved"
        return {
            "preset": gr.update(choices=self.preset_choices(arch), value=name),
            "status": f"Preset **{escape_markdown(name)}** {verb} in {code_span(path)}.",
        }

    def delete_preset(self, name: str | None, arch: str) -> Updates:
        """Remove the user's line(s) of `name` for the loaded family; built-ins cannot be deleted."""
        if not name:
            raise BlockWeightError("choose the preset to delete")
        family = family_of(arch)
        path = self._presets_file()
        delete_user_preset(path, name, family)
        choices = self.preset_choices(arch)
        remains = " (the built-in one applies again)" if name in choices else ""
        return {
            "preset": gr.update(choices=choices, value=name if name in choices else DEFAULT_PRESET),
            "status": f"Preset **{escape_markdown(name)}** deleted for {FAMILY_TITLES[family]}{remains}.",
        }
