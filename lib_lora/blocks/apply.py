"""From parsed `<lora:…>` calls to AppliedLoras: find files in the LoRA folders, resolve block presets per arch.

Pure core (no diffusers): `LoraLibrary` finds a name's file only inside its folders (A1111: name = file stem),
`resolve_calls` loads each network and turns multipliers and block weights into AppliedLoras for attach.py,
`format_block_weights` writes what was applied as one infotext field. The BASE weight scales the text
encoders; keys no block covers (`time_embed`, `label_emb`, `out`) keep weight 1 (DESIGN.md § Block weights).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ..arch import Arch, get_arch
from ..errors import LoraStudioError
from ..networks.attach import AppliedLora
from ..networks.loaded import LoraNetwork, as_applied, load_network
from ..unet_blocks import BASE
from .presets import PresetBook
from .syntax import LoraCall, validate_name

__all__ = [
    "BLOCK_WEIGHTS_FIELD",
    "LORA_SUFFIXES",
    "LoraArchMismatchError",
    "LoraLibrary",
    "LoraLibraryError",
    "LoraNotFoundError",
    "NotSupportedYetError",
    "block_weights_value",
    "format_block_weights",
    "resolve_calls",
]

LORA_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".ckpt")
BLOCK_WEIGHTS_FIELD = "Lora block weights"
"""The infotext field `format_block_weights` writes."""


class LoraLibraryError(LoraStudioError):
    """A LoRA name is ambiguous, or its file lies outside the LoRA folders."""


class LoraNotFoundError(LoraLibraryError):
    """No file in the LoRA folders has this name; the message lists close names."""


class LoraArchMismatchError(LoraStudioError):
    """A LoRA was trained for another model family than the loaded model's."""


class NotSupportedYetError(LoraStudioError):
    """A tag asks for something standalone generation does not do yet (step windows, dyn)."""


class LoraLibrary:
    """The LoRA files under some folders, found recursively and named by file stem (as in A1111)."""

    def __init__(self, folders: Iterable[str | os.PathLike[str]]) -> None:
        self.folders: tuple[Path, ...] = tuple(Path(folder) for folder in folders)

    def files(self) -> dict[str, list[Path]]:
        """{name: [paths]} for every `.safetensors`/`.pt`/`.ckpt` file; a name with two paths is ambiguous."""
        found: dict[str, list[Path]] = {}
        for folder in self.folders:
            if not folder.is_dir():
                raise LoraLibraryError(f"LoRA folder {folder} does not exist or is not a folder")
            for root, dirs, names in os.walk(folder):  # symlinked folders are not followed
                dirs.sort()
                for name in sorted(names):
                    path = Path(root) / name
                    if path.suffix.lower() in LORA_SUFFIXES and path.is_file():
                        found.setdefault(path.stem, []).append(path)
        return found

    def names(self) -> list[str]:
        """Every LoRA name, sorted."""
        return sorted(self.files())

    def resolve(self, name: str) -> Path:
        """The file of LoRA `name`; path-like names, unknown, ambiguous or escaping names raise."""
        validate_name(name)
        files = self.files()
        paths = files.get(name)
        if not paths:
            raise LoraNotFoundError(self._not_found_message(name, files))
        if len(paths) > 1:
            listed = " and ".join(str(path) for path in paths)
            raise LoraLibraryError(f"LoRA name {name!r} is ambiguous: {listed}; rename one of them")
        return self._inside(paths[0])

    def _inside(self, path: Path) -> Path:
        real = path.resolve()
        for folder in self.folders:
            if real.is_relative_to(folder.resolve()):
                return path
        raise LoraLibraryError(f"{path} resolves to {real}, outside the LoRA folders; LoRAs load only from them")

    def _not_found_message(self, name: str, files: Mapping[str, list[Path]]) -> str:
        where = ", ".join(str(folder) for folder in self.folders) or "no LoRA folder given (use --lora-dir)"
        folded = {known.casefold(): known for known in files}
        close = difflib.get_close_matches(name, list(files), n=3, cutoff=0.6)
        if name.casefold() in folded and folded[name.casefold()] not in close:
            close.insert(0, folded[name.casefold()])
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"no LoRA named {name!r} in {where}{hint}"


def resolve_calls(
    calls: Sequence[LoraCall],
    library: LoraLibrary,
    presets: PresetBook,
    arch: Arch | str,
    *,
    loader: Callable[[Path], LoraNetwork] = load_network,
    step_windows: bool = False,
) -> list[AppliedLora]:
    """One AppliedLora per call: te × BASE on the text encoders, unet × block weight on each UNet block.

    Each file is loaded once; a call without blocks uses no block weights. Raises for dyn, for step windows
    unless the caller gates steps (`step_windows`), and for a LoRA whose metadata names another family.
    """
    resolved = arch if isinstance(arch, Arch) else get_arch(arch)
    networks: dict[Path, LoraNetwork] = {}
    applied: list[AppliedLora] = []
    for call in calls:
        _check_supported(call, step_windows=step_windows)
        path = library.resolve(call.name)
        network = networks.get(path)
        if network is None:
            network = networks[path] = loader(path)
        if network.arch is not None and network.arch != resolved.name:
            raise LoraArchMismatchError(
                f"LoRA {call.name!r} ({path}) is for {network.arch.upper()}, the model is {resolved.name.upper()}"
            )
        te, block_weights = call.te, None
        if call.blocks is not None:
            weights = presets.resolve(call.blocks, resolved)
            te *= weights[BASE]
            block_weights = {block: w for block, w in weights.items() if block != BASE}
        applied.append(as_applied(network, te_multiplier=te, unet_multiplier=call.unet, block_weights=block_weights))
    return applied


def _check_supported(call: LoraCall, *, step_windows: bool) -> None:
    tag = call.raw or f"<lora:{call.name}:…>"
    if not step_windows and (call.start is not None or call.stop is not None):
        raise NotSupportedYetError(
            f"{tag}: start=/stop= (the UNet step window) need a generation that switches weights between steps; "
            "remove them to apply the LoRA at every step"
        )
    if call.dyn is not None:
        raise NotSupportedYetError(f"{tag}: dyn (DyLoRA rank) is not applied in standalone generation yet")


def format_block_weights(calls: Sequence[LoraCall]) -> str:
    """`Lora block weights: "name: te=…, unet=…, blocks=…; …"` for the calls, or "" when there are none."""
    if not calls:
        return ""
    return f'{BLOCK_WEIGHTS_FIELD}: "{block_weights_value(calls)}"'


def block_weights_value(calls: Sequence[LoraCall]) -> str:
    """The field's value without quotes: `name: te=…, unet=…[, blocks=…][, start=…][, stop=…]; …`."""
    parts = []
    for call in calls:
        items = [f"te={_number(call.te)}", f"unet={_number(call.unet)}"]
        if call.blocks is not None:
            items.append(f"blocks={call.blocks}")
        for key in ("start", "stop"):
            value = getattr(call, key)
            if value is not None:  # as parsed: an int is a step, a float a fraction (1 ≠ 1.0)
                items.append(f"{key}={value}")
        parts.append(f"{call.name}: {', '.join(items)}")
    return "; ".join(parts)


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
