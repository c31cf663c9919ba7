"""The Block Weight tab's "Save as LoRA": the picked LoRA with the strength and block weights baked into a new file.

The file goes into the first LoRA folder as `<name>.safetensors`, written atomically by the network tools
(`block_weight_lora_file`), which refuse to replace the source; an existing file is replaced only with Overwrite
ticked, and kept in `.lora_studio_backup/` first. A name another LoRA folder already uses is refused, since the
tag could no longer tell the two apart. R, U and X are refused: the file holds numbers, and the tag states them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ...blocks.apply import LoraLibrary
from ...blocks.syntax import validate_name
from ...blocks.vectors import expand_vector
from ...networks.files import SAFETENSORS_SUFFIXES
from ...networks.tools import block_weight_lora_file
from ...wording import escape_markdown
from ..context import StudioContext
from .editor import BlockEditor, block_spec, code_span, copy_tag, read_box
from .picker import filter_names
from .settings import BlocksUIError

Updates = dict[str, Any]


def output_name(text: str | None) -> str:
    """The LoRA name typed in the box, without a .safetensors ending; BlocksUIError when it is empty or no name
    a tag can call (a path, '..', ':', '=' or '>')."""
    name = (text or "").strip()
    if Path(name).suffix.lower() in SAFETENSORS_SUFFIXES:
        name = name[: -len(Path(name).suffix)]
    if not name:
        raise BlocksUIError("Save as LoRA: type a name for the new file")
    validate_name(name)
    return name


class BlockSaver:
    """The Save as LoRA handler over the tab's LoRA folders and presets."""

    def __init__(self, context: StudioContext, editor: BlockEditor) -> None:
        self.context = context
        self.editor = editor

    def target(self, name: str, overwrite: bool) -> Path:
        """Where `name` is written: the first LoRA folder; refused when another folder holds that name, or the
        file exists and `overwrite` is off."""
        folders = list(self.context.lora_dirs())
        if not folders:
            raise BlocksUIError("Save as LoRA: no LoRA folder is set")
        path = Path(folders[0]) / f"{name}.safetensors"
        elsewhere = [p for p in LoraLibrary(folders).files().get(name, []) if p != path]
        if elsewhere:
            raise BlocksUIError(f"Save as LoRA: a LoRA named {name!r} already exists at {elsewhere[0]}; choose "
                                "another name (two files of one name make the tag ambiguous)")
        if path.exists() and not overwrite:
            raise BlocksUIError(f"Save as LoRA: {path} already exists; tick Overwrite to replace it (the old file "
                                "is kept in .lora_studio_backup)")
        return path

    def save(self, lora: str | None, weight: float, vector: str, preset: str | None, arch: str, name: str,
             overwrite: bool, search: str) -> Updates:
        """Write the block-weighted file; the status gives the tag it replaces, the LoRA list gains the name."""
        if not lora:
            raise BlocksUIError("Save as LoRA: pick a LoRA first")
        new_name = output_name(name)
        book = self.editor.book()
        box = read_box(vector, arch, book)
        if not box.recipe.plain:
            raise BlocksUIError("Save as LoRA: R, U and X are drawn per image; type numbers or a preset's name "
                                "to save a file")
        values = [float(v) for v in box.recipe.weights]
        if box.preset is not None:
            spec, weights = box.preset, book.get(box.preset, arch)
        else:
            spec, weights = block_spec(box.layout, values, preset, book), expand_vector(values, arch)
        library = LoraLibrary(self.context.lora_dirs())
        source = library.resolve(lora)
        out = self.target(new_name, overwrite)
        replaced = out.exists()
        report = block_weight_lora_file(source, out, weights, arch=arch, strength=float(weight), spec=spec,
                                        overwrite=overwrite)
        tag = copy_tag(lora, weight, spec)
        kept = " The old file is kept in .lora_studio_backup." if replaced else ""
        status = (f"Saved {escape_markdown(str(out))}: {code_span(f'<lora:{new_name}:1>')} applies what "
                  f"{code_span(tag)} does ({report.scaled} modules rescaled, {report.unchanged} unchanged, "
                  f"{report.dropped} left out at weight 0).{kept}")
        names = filter_names(library.names(), search)
        if lora not in names:
            names.append(lora)
        return {"status": status, "lora": gr.update(choices=names)}
