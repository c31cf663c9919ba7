"""The Block Weight tab's LoRA picker: names in the LoRA folders filtered by a search, and what a LoRA file says.

`describe_lora` reads the file's metadata (networks.tools.info) and warns when the LoRA's family is not the
loaded model's; `filter_names` is the search.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from ...blocks.apply import LoraLibrary
from ...blocks.presets import FAMILY_TITLES, family_of, full_block_ids
from ...errors import BlockWeightError
from ...networks.files import MODEL_HASH_KEY, addnet_hash, short_hash
from ...networks.tools.info import network_info
from ...wording import escape_markdown
from ..context import StudioContext
from .editor import DEFAULT_PRESET, BlockEditor, Updates, read_box

TOP_TAGS_SHOWN = 8
_FIELDS = (
    ("ss_network_module", "module"),
    ("ss_base_model_version", "base model"),
    ("ss_sd_model_name", "trained on"),
    ("ss_steps", "steps"),
    ("ss_epoch", "epoch"),
    ("ss_num_epochs", "epochs"),
)


def filter_names(names: Sequence[str], search: str) -> list[str]:
    """The names containing every word of `search` (case-insensitive), in order."""
    words = (search or "").casefold().split()
    return [name for name in names if all(word in name.casefold() for word in words)]


def arch_warning(lora_arch: str | None, model_arch: str | None) -> str:
    """A visible warning when the LoRA was made for another family than the loaded model's, else ""."""
    if lora_arch is None or model_arch is None or lora_arch == model_arch:
        return ""
    return (f"⚠️ **This LoRA is for {lora_arch.upper()}, the loaded model is {model_arch.upper()}**: "
            "its weights do not fit this model.")


def describe_lora(path: Path, model_arch: str | None) -> str:
    """Markdown: type, dim/alpha, base model, steps/epochs, hash, blocks with modules, top tags, family warning."""
    info = network_info(path)
    metadata = info.metadata
    ranks = sorted({m.rank for m in info.modules if m.rank is not None})
    alphas = sorted({m.alpha for m in info.modules if m.alpha is not None})
    dim = metadata.get("ss_network_dim") or "/".join(str(r) for r in ranks) or "?"
    alpha = metadata.get("ss_network_alpha") or "/".join(f"{a:g}" for a in alphas) or "?"
    family = f"{info.arch} (from {info.arch_source})" if info.arch else "unknown"
    full_hash = str(metadata.get(MODEL_HASH_KEY) or addnet_hash(path))
    parts = [f"**type:** {info.format}", f"**dim/alpha:** {dim}/{alpha}", f"**family:** {family}"]
    parts += [f"**{label}:** {escape_markdown(str(metadata[key]))}" for key, label in _FIELDS if key in metadata]
    parts.append(f"**hash:** `{short_hash(full_hash)}`")
    order = {block: index for index, block in enumerate(full_block_ids(info.arch or model_arch or "sd1"))}
    blocks = sorted({m.block for m in info.modules if m.block is not None}, key=lambda b: (order.get(b, len(order)), b))
    lines = [" · ".join(parts), "**blocks with modules:** " + (", ".join(blocks) if blocks else "none")]
    tags = info.top_tags(TOP_TAGS_SHOWN)
    if tags:
        lines.append("**top tags:** " + ", ".join(f"{escape_markdown(tag)} ({n})" for tag, n in tags))
    warning = arch_warning(info.arch, model_arch)
    if warning:
        lines.insert(0, warning)
    return "\n\n".join(lines)


class LoraPicker:
    """The picker's handlers: refresh (model family, names, presets, sliders), search, choose."""

    def __init__(self, context: StudioContext, editor: BlockEditor) -> None:
        self.context = context
        self.editor = editor

    def _all_names(self) -> list[str]:
        return LoraLibrary(self.context.lora_dirs()).names()

    def _choices(self, search: str, lora: str | None) -> tuple[list[str], str | None]:
        names = self._all_names()
        shown = filter_names(names, search)
        if lora in names and lora not in shown:
            shown.append(lora)  # the chosen LoRA stays choosable while the search hides it
        return shown, lora if lora in names else None

    def refresh(self, search: str, lora: str | None, preset: str | None, full: bool, vector: str, weight: float,
                arch: str) -> Updates:
        """Read the loaded model's family, the LoRA names and presets; re-lay the sliders for a new family.

        The page's values are only rewritten when they must change (another model family, a LoRA or preset no longer
        there, a box that cannot be read): the event runs while the user may already be picking a LoRA or a preset,
        and writing back the values it read at its start would undo those choices."""
        host = self.context.host_provider()
        model_arch = host.arch.name if host is not None else None
        names, kept_lora = self._choices(search, lora)
        new_arch = model_arch or arch
        choices = self.editor.preset_choices(new_arch)
        kept = preset if preset in choices else DEFAULT_PRESET
        readable = _readable(self.editor, vector, new_arch)  # a box that cannot be read: the preset instead
        updates: Updates
        if new_arch == arch and readable:
            updates = {}
        elif readable and family_of(new_arch) == family_of(arch):
            updates = self.editor.from_vector(vector, new_arch, full, kept_lora, weight, kept)
        else:
            updates = self.editor.load_preset(kept, new_arch, full, kept_lora, weight)
        status = "" if host is not None else "No model is loaded; the blocks shown are SD1's."
        lora_update = gr.update(choices=names, value=kept_lora) if kept_lora != lora else gr.update(choices=names)
        preset_update = gr.update(choices=choices, value=kept) if kept != preset else gr.update(choices=choices)
        if updates or kept_lora != lora:
            library = LoraLibrary(self.context.lora_dirs())
            updates["lora_info"] = describe_lora(library.resolve(kept_lora), model_arch) if kept_lora else ""
        return {
            **updates,
            "arch": new_arch,
            "lora": lora_update,
            "preset": preset_update,
            "status": status or f"{len(names)} LoRA(s) found; {FAMILY_TITLES[family_of(new_arch)]} blocks.",
        }

    def search(self, search: str, lora: str | None) -> Updates:
        names, lora = self._choices(search, lora)
        return {"lora": gr.update(choices=names, value=lora)}

    def choose(self, lora: str | None, weight: float, vector: str, preset: str | None, arch: str) -> Updates:
        """The chosen LoRA's description (with a family warning) and the tag for the prompt."""
        if not lora:
            return {"lora_info": "", "tag": ""}
        host = self.context.host_provider()
        path = LoraLibrary(self.context.lora_dirs()).resolve(lora)
        return {"lora_info": describe_lora(path, host.arch.name if host is not None else None),
                **self.editor.retag(lora, weight, vector, preset, arch)}


def _readable(editor: BlockEditor, vector: str, arch: str) -> bool:
    try:
        read_box(vector, arch, editor.book())
    except BlockWeightError:
        return False
    return True
