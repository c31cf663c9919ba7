"""The Block Weight tab's editor: block sliders for the model's family, presets, the vector box and the tag.

Handlers return {output name: value} dicts (see wiring.py); they take the arch name and the format toggle
from the page, so they are plain functions of their inputs plus the user's preset file.

The vector box and the sliders agree: the box takes a vector of the family's formats (LBW's R, U and X allowed:
their sliders are marked, and the values are drawn when an image is generated) or a preset's name (which loads the
preset). Input the box cannot take is reported under the box (`vector_note`) and changes nothing else; it stays in
the box, and Generate and the grid refuse it with the same message (`read_box`). A moved slider writes its value
into the box, keeping the other positions as written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ...blocks.presets import (
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
from ...blocks.recipe import WeightRecipe
from ...blocks.syntax import parse_prompt
from ...blocks.userpresets import delete_user_preset, load_presets, save_user_preset
from ...errors import BlockWeightError
from ...wording import escape_markdown

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

    def slider_updates(self, values: Sequence[float | str]) -> Updates:
        """Label, visibility and value of every slider: the layout's blocks, then hidden ones. A position written
        as R, U or X keeps its slider's value and shows the letter in the label."""
        updates: Updates = {}
        for index, key in enumerate(SLIDER_KEYS):
            if index >= self.length:
                updates[key] = gr.update(visible=False, value=0.0)
            elif isinstance(values[index], str):
                updates[key] = gr.update(label=f"{self.blocks[index]} = {values[index]}", visible=True)
            else:
                updates[key] = gr.update(label=self.blocks[index], visible=True, value=float(values[index]))
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


def _bounded(values: Sequence[float | str]) -> None:
    low, high, _ = SLIDER_RANGE
    outside = [f"{v:g}" for v in values if not isinstance(v, str) and not low <= v <= high]
    if outside:
        raise BlockWeightError(f"weights {', '.join(outside)} are outside the sliders' range {low:g}…{high:g}")


RANDOM_NOTE = ("R, U and X are drawn when you generate or run a grid (R: 0…1, U: −0.5…1.5, X: 1, or the values of "
               "an `x` grid axis); the image's parameters record the numbers and the random seed. The tag for the "
               "prompt takes numbers only.")


@dataclass(frozen=True)
class BoxValue:
    """What the vector box holds: its weights (numbers, or R/U/X), and the preset's name when a name was typed."""

    recipe: WeightRecipe
    layout: BlockLayout
    preset: str | None = None


def read_box(text: str, arch: str, book: PresetBook) -> BoxValue:
    """The vector box: a preset's name, or a vector of the family's formats (numbers, R, U, X, X+f, X-f) within the
    sliders' range; BlockWeightError says what is wrong (the same message under the box and on Generate)."""
    stripped = (text or "").strip()
    family = family_of(arch)
    lengths = " or ".join(str(n) for n in FORMATS[family])
    if not stripped:
        raise BlockWeightError(f"block weights: the box is empty; type {lengths} values or a preset's name")
    if "," not in stripped and not _is_number(stripped):
        weights = book.get(stripped, arch)
        layout = BlockLayout(arch, shortest_length(weights, arch))
        return BoxValue(WeightRecipe(tuple(layout.values_of(weights))), layout, stripped)
    recipe = WeightRecipe.parse(stripped, where="block weights")
    if family_of_length(len(recipe)) != family or len(recipe) not in FORMATS[family]:
        raise BlockWeightError(
            f"block weights: expected {lengths} values for {FAMILY_TITLES[family]}, got {len(recipe)}"
        )
    _bounded(recipe.weights)
    return BoxValue(recipe, BlockLayout(arch, len(recipe)))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def box_note(error: BaseException | None = None, recipe: WeightRecipe | None = None) -> str:
    """The line under the vector box: the error (the box is not applied), the R/U/X note, or nothing."""
    if error is not None:
        return (f"⚠️ **Not applied:** {escape_markdown(str(error))}. The sliders keep the last weights; Generate and "
                "the grid refuse the box until it is fixed.")
    return RANDOM_NOTE if recipe is not None and not recipe.plain else ""


class BlockEditor:
    """Preset, slider and vector handlers over the user's preset file (`presets_file()` read on each call)."""

    def __init__(self, presets_file: Callable[[], Path]) -> None:
        self._presets_file = presets_file

    def book(self) -> PresetBook:
        """Built-in presets with the user's file merged over them."""
        return load_presets(self._presets_file())

    def preset_choices(self, arch: str) -> list[str]:
        return self.book().names(arch)

    def _show(self, layout: BlockLayout, values: Sequence[float] | WeightRecipe, lora: str | None, weight: float,
              preset: str | None, book: PresetBook) -> Updates:
        recipe = values if isinstance(values, WeightRecipe) else WeightRecipe(tuple(float(v) for v in values))
        _bounded(recipe.weights)
        numbers = [float(v) for v in recipe.weights] if recipe.plain else None
        return {
            **layout.slider_updates(recipe.weights),
            "full": layout.full,
            "vector": recipe.text(),
            "tag": copy_tag(lora, weight, block_spec(layout, numbers, preset, book)) if numbers is not None else "",
            "vector_note": box_note(recipe=recipe),
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

    def from_slider(self, index: int, text: str, arch: str, full: bool, lora: str | None, weight: float,
                    preset: str | None, *values: float) -> Updates:
        """Slider `index` was moved: its value goes into the box, the other positions stay as the box wrote them
        (R, U, X kept); a box that does not fit the sliders is rewritten from all of them. A release that leaves the
        box's number as it was changes nothing: gradio 4 picks a dropdown option on mousedown, so the click that picks
        a preset can end on the slider under the list, and that release carries the page as it was before the preset
        arrived (answering it wrote the old weights back, with the new preset's name, as a literal vector)."""
        layout = BlockLayout.of(arch, full)
        shown = [float(v) for v in values[: layout.length]]
        book = self.book()
        try:
            recipe = read_box(text, arch, book).recipe
            if len(recipe) != layout.length:
                raise BlockWeightError("another format")
            if index < layout.length and recipe.weights[index] == shown[index]:
                return {}
        except BlockWeightError:
            recipe = WeightRecipe(tuple(shown))
        if index < layout.length:
            recipe = recipe.replaced(index, shown[index])
        updates = self._show(layout, recipe, lora, weight, preset, book)
        moved = {SLIDER_KEYS[index]: updates[SLIDER_KEYS[index]]} if index < layout.length else {}
        return {key: updates[key] for key in ("vector", "tag", "vector_note")} | moved

    def slider_handler(self, index: int) -> Callable[..., Updates]:
        """`from_slider` for slider `index`, as a named function (the wiring names events after it)."""
        def moved(*args: Any) -> Updates:
            return self.from_slider(index, *args)

        moved.__name__ = f"from_slider_{index:02d}"
        return moved

    def retag(self, lora: str | None, weight: float, text: str, preset: str | None, arch: str) -> Updates:
        """The tag for the prompt from the vector box (a preset's name when it holds exactly that preset)."""
        box = read_box(text, arch, self.book())
        if not box.recipe.plain:
            return {"tag": ""}
        values = [float(v) for v in box.recipe.weights]
        return {"tag": copy_tag(lora, weight, box.preset or block_spec(box.layout, values, preset, self.book()))}

    def from_vector(self, text: str, arch: str, full: bool, lora: str | None, weight: float,
                    preset: str | None) -> Updates:
        """The box in the sliders (its length may switch between the family's two formats; a preset's name loads
        that preset); input it cannot take is reported under the box and changes nothing else."""
        book = self.book()
        try:
            box = read_box(text, arch, book)
            updates = self._show(box.layout, box.recipe, lora, weight, box.preset or preset, book)
        except BlockWeightError as error:
            return {"vector_note": box_note(error), "status": f"**Error:** {escape_markdown(str(error))}"}
        if box.preset is not None:
            return {**updates, "preset": box.preset,
                    "status": f"Preset **{escape_markdown(box.preset)}** loaded ({box.layout.length} values)."}
        return {**updates, "status": ""}

    def switch_format(self, full: bool, text: str, arch: str, lora: str | None, weight: float,
                      preset: str | None) -> Updates:
        """The same weights in the other format; switching to the short one drops the blocks it lacks."""
        old = BlockLayout.of(arch, not full)
        new = BlockLayout.of(arch, full)
        book = self.book()
        try:
            box = read_box(text, arch, book)
            weights: dict[str, float | str] = dict(zip(box.layout.blocks, box.recipe.weights))
        except BlockWeightError:
            weights = dict(book.get(DEFAULT_PRESET, arch))
        dropped = [b for b in old.blocks if b not in new.blocks and weights.get(b, 0.0) != 0.0]
        recipe = WeightRecipe(tuple(weights.get(block, 0.0) for block in new.blocks))
        updates = self._show(new, recipe, lora, weight, preset, book)
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
