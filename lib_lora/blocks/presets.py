"""Block-weight presets: one vector per family, LBW's built-in presets and ours, and a preset book.

The vectors themselves (formats, parsing, expansion) are in vectors.py; their names are re-exported here.
Presets are arch-aware: one vector per family ("sd1", used for SD1 and SD2, and "sdxl"); an SD1 vector is
never expanded onto SDXL. Preset files use LBW's `NAME:v1,...,vN` lines; the length of a line decides its
family (17/26 → sd1, 12/20 → sdxl, 61 → flux, kept but never expanded: Flux is not supported). A preset file
is read only up to MAX_PRESET_FILE_BYTES, and a book of n presets is built in time linear in n.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..arch import Arch
from ..errors import BlockWeightError
from ..wording import echo
from .vectors import (
    FAMILIES,
    FAMILY_OF_ARCH,
    FAMILY_TITLES,
    FLUX_FAMILY,
    FLUX_LENGTH,
    FORMATS,
    FULL_LENGTH,
    LORA_LENGTH,
    MAX_VECTOR_VALUES,
    SD1_FAMILY,
    SDXL_FAMILY,
    _arch,
    _checked,
    check_vector_length,
    expand_vector,
    family_of,
    family_of_length,
    full_block_ids,
    parse_value,
    parse_vector,
    shortest_length,
    vector_for,
)

__all__ = [
    "BUILTIN_PRESETS",
    "FAMILIES",
    "FAMILY_OF_ARCH",
    "FAMILY_TITLES",
    "FLUX_FAMILY",
    "FLUX_LENGTH",
    "FORMATS",
    "FULL_LENGTH",
    "LORA_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_PRESET_FILE_BYTES",
    "MAX_VECTOR_VALUES",
    "Preset",
    "PresetBook",
    "SD1_FAMILY",
    "SDXL_FAMILY",
    "check_vector_length",
    "expand_vector",
    "family_of",
    "family_of_length",
    "full_block_ids",
    "parse_value",
    "parse_vector",
    "read_preset_file",
    "shortest_length",
    "vector_for",
]

MAX_NAME_LENGTH = 100
"""The longest preset name."""
MAX_PRESET_FILE_BYTES = 4 * 1024 * 1024
"""The largest preset file read (LBW's files are a few kilobytes; one line per preset and family)."""

def _check_name(name: str) -> None:
    if not name or any(char in name for char in ":,<>#") or name != name.strip() or " " in name:
        raise BlockWeightError(f"invalid preset name {echo(name)}: it must be one word without : , < > #")
    if len(name) > MAX_NAME_LENGTH:
        raise BlockWeightError(f"preset name {echo(name)} is {len(name)} characters; at most {MAX_NAME_LENGTH}")


@dataclass(frozen=True)
class Preset:
    """A named block-weight preset: one vector per family ("sd1" for SD1/SD2, "sdxl", "flux"), and its origin."""

    name: str
    vectors: Mapping[str, tuple[float, ...]]
    source: str = "built-in"

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not self.vectors:
            raise BlockWeightError(f"preset {self.name!r} has no vector")
        frozen: dict[str, tuple[float, ...]] = {}
        for family, vector in self.vectors.items():
            numbers = _checked(vector)
            if family not in FAMILIES:
                raise BlockWeightError(f"preset {self.name!r}: unknown family {family!r}; expected one of {FAMILIES}")
            if family_of_length(len(numbers)) != family:
                allowed = " or ".join(map(str, FORMATS.get(family, {FLUX_LENGTH: ()})))
                raise BlockWeightError(
                    f"preset {self.name!r}: expected {allowed} values for {FAMILY_TITLES[family]}, got {len(numbers)}"
                )
            frozen[family] = numbers
        object.__setattr__(self, "vectors", MappingProxyType(frozen))

    def weights(self, arch: Arch | str) -> dict[str, float]:
        """The expanded table of this preset on `arch`; BlockWeightError when it has no vector for its family."""
        resolved = _arch(arch)
        family = FAMILY_OF_ARCH[resolved.name]
        vector = self.vectors.get(family)
        if vector is None:
            raise BlockWeightError(self._no_vector_message(resolved, family))
        return expand_vector(vector, resolved)

    def _no_vector_message(self, arch: Arch, family: str) -> str:
        has = ", ".join(f"{FAMILY_TITLES[f]} ({len(v)} values)" for f, v in self.vectors.items())
        wanted = " or ".join(map(str, FORMATS[family]))
        reason = (
            "SD1/SD2 vectors are never used on SDXL (their blocks are different)" if family == SDXL_FAMILY
            else "SDXL vectors are never used on SD1/SD2 (their blocks are different)"
        )
        return (
            f"preset {self.name!r} has no {FAMILY_TITLES[family]} vector for {arch.name.upper()}, only {has}; "
            f"{reason}. Add a {wanted}-value line `{self.name}:…` to your preset file"
        )


def _ones(length: int) -> tuple[float, ...]:
    return (1.0,) * length


_LBW_17: tuple[tuple[str, str], ...] = (
    ("NONE", "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"),
    ("ALL", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"),
    ("INS", "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0"),
    ("IND", "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0"),
    ("INALL", "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0"),
    ("MIDD", "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0"),
    ("OUTD", "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0"),
    ("OUTS", "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1"),
    ("OUTALL", "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"),
    ("ALL0.5", "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5"),
)
"""LBW's DEF_WEIGHT_PRESET (lbw.md §1.1), SD1 17-value: LBW ships no SDXL vectors for them."""

_SDXL_12_FOR_LBW: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
    "INALL": "1,1,1,1,1,0,0,0,0,0,0,0",
    "OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
}
"""SDXL vectors for the LBW presets whose meaning carries over unambiguously (the INALL/OUTALL values are
ComfyUI-Inspire's SDXL-INALL/SDXL-OUTALL, lbw.md §1.1); INS, IND, MIDD, OUTD, OUTS stay SD1-only."""

_SEED_26: tuple[tuple[str, str], ...] = (
    ("FACE", "0,1,1,1,1,1,0,0,0,1,0,0,0,0,1,0,1,1,1,0,1,1,1,0,0,1"),
    ("BODY", "0,1,1,1,0,1,0,0,0,1,0,0,0,0,0,0,1,1,1,1,1,1,1,0,0,1"),
)
"""shared/seeds/002 (CharFramework notes): 顔LoRA (face) and 体LoRA/グループLoRA (body, group); 26 values, SD1 only
(the seed gives no SDXL vectors)."""

_DESIGN_17_12: tuple[tuple[str, str, str], ...] = (
    ("CHAR", "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0", "1,0,0,1,1,1,1,1,1,0,0,0"),
    ("NCNF", "1,1,1,0,0,0,1,1,0,0,0,0,1,1,1,1,1", "1,1,1,0,0,0,0,0,0,1,1,1"),
    ("NFACE", "1,1,1,1,1,1,1,1,0,0,0,1,1,1,1,1,1", "1,1,1,1,0,1,0,0,0,1,1,1"),
    ("NIN", "1,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1,1", "1,0,0,0,0,1,1,1,1,1,1,1"),
)
"""DESIGN.md § Block weights: character only, no character/face, no face, IN blocks off (SD1 17, SDXL 12)."""


def _builtin_presets() -> tuple[Preset, ...]:
    presets = [
        Preset(name, {SD1_FAMILY: parse_vector(v)} | ({SDXL_FAMILY: parse_vector(_SDXL_12_FOR_LBW[name])}
                                                      if name in _SDXL_12_FOR_LBW else {}), "LBW built-in")
        for name, v in _LBW_17
    ]
    presets.append(Preset("FLUXALL", {FLUX_FAMILY: _ones(FLUX_LENGTH)}, "LBW built-in (Flux only)"))
    presets += [Preset(name, {SD1_FAMILY: parse_vector(v)}, "a practitioner's face and body LoRAs")
                for name, v in _SEED_26]
    presets += [
        Preset(name, {SD1_FAMILY: parse_vector(sd1), SDXL_FAMILY: parse_vector(sdxl)}, "LoRA Studio")
        for name, sd1, sdxl in _DESIGN_17_12
    ]
    return tuple(presets)


BUILTIN_PRESETS: tuple[Preset, ...] = _builtin_presets()


@dataclass(frozen=True)
class PresetBook:
    """Presets by name (case-sensitive, as in LBW); look-ups expand for an arch and fail loudly."""

    presets: Mapping[str, Preset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "presets", MappingProxyType(dict(self.presets)))

    @classmethod
    def of(cls, presets: Iterable[Preset]) -> PresetBook:
        """A book of `presets`; a later preset of the same name overrides an earlier one per family (linear time)."""
        merged: dict[str, Preset] = {}
        for preset in presets:
            old = merged.get(preset.name)
            merged[preset.name] = preset if old is None else _combined(old, preset)
        return cls(merged)

    @classmethod
    def builtin(cls) -> PresetBook:
        """LBW's 11 presets (FLUXALL is Flux-only), the seed's FACE and BODY, and CHAR/NCNF/NFACE/NIN."""
        return cls.of(BUILTIN_PRESETS)

    @classmethod
    def parse_preset_text(cls, text: str, *, source: str = "<preset text>") -> PresetBook:
        """The presets of LBW-style text: `NAME:v1,...,vN` lines, blank lines and `#` comments skipped.

        A line's length picks its family (17/26 sd1, 12/20 sdxl, 61 flux); a name on several lines of different
        lengths gets one vector per family, and a later line of the same family wins (as in LBW). Any other
        line raises BlockWeightError naming `source` and the line number.
        """
        found: list[Preset] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if line:
                found.append(_parse_line(line, where=f"{source}, line {number}", source=source))
        return cls.of(found)

    @classmethod
    def from_file(cls, path: str | Path) -> PresetBook:
        """The presets of an LBW-style preset file (UTF-8); unreadable or invalid files raise BlockWeightError."""
        return cls.parse_preset_text(read_preset_file(Path(path)), source=str(path))

    def merge(self, other: PresetBook) -> PresetBook:
        """This book with `other`'s presets added; for a name in both, `other`'s vectors win per family."""
        merged = dict(self.presets)
        for name, preset in other.presets.items():
            old = merged.get(name)
            merged[name] = preset if old is None else _combined(old, preset)
        return PresetBook(merged)

    def __contains__(self, name: object) -> bool:
        return name in self.presets

    def __iter__(self) -> Iterator[Preset]:
        return iter(self.presets.values())

    def __len__(self) -> int:
        return len(self.presets)

    def preset(self, name: str) -> Preset:
        """The preset called `name`; an unknown name raises BlockWeightError suggesting close names."""
        found = self.presets.get(name)
        if found is not None:
            return found
        folded = {known.casefold(): known for known in self.presets}
        close = difflib.get_close_matches(name, list(self.presets), n=3, cutoff=0.6)
        if name.casefold() in folded and folded[name.casefold()] not in close:
            close.insert(0, folded[name.casefold()])
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known presets: {', '.join(self.presets)}"
        raise BlockWeightError(f"unknown block-weight preset {echo(name)} (names are case-sensitive){hint}")

    def get(self, name: str, arch: Arch | str) -> dict[str, float]:
        """The expanded table of preset `name` on `arch`; unknown names and missing family vectors raise."""
        return self.preset(name).weights(arch)

    def names(self, arch: Arch | str | None = None) -> list[str]:
        """Preset names in book order; with `arch`, only those with a vector for its family."""
        if arch is None:
            return list(self.presets)
        family = family_of(arch)
        return [name for name, preset in self.presets.items() if family in preset.vectors]

    def resolve(self, spec: str, arch: Arch | str) -> dict[str, float]:
        """The expanded table for `spec`: a preset name, or a literal comma-separated vector of `arch`'s formats."""
        text = spec.strip()
        if "," in text:
            where = f"block weights {echo(text)}"
            try:
                return expand_vector(parse_vector(text, where=where), arch)
            except BlockWeightError as error:
                if str(error).startswith(where):
                    raise
                raise BlockWeightError(f"{where}: {error}") from None
        return self.get(text, arch)


def _combined(old: Preset, new: Preset) -> Preset:
    """`new` over `old` (same name): `new`'s vectors win per family, the source says where each came from."""
    vectors = {**old.vectors, **new.vectors}
    kept = [f for f in old.vectors if f not in new.vectors]
    source = new.source if not kept else f"{new.source}; {'/'.join(kept)} from {old.source}"
    return Preset(new.name, vectors, source)


def read_preset_file(path: Path, *, missing_ok: bool = False) -> str:
    """The text of a preset file (UTF-8, BOM skipped; "" for a missing file when `missing_ok`); BlockWeightError
    when it is unreadable or larger than MAX_PRESET_FILE_BYTES (no more than that is read)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PRESET_FILE_BYTES + 1)
    except FileNotFoundError as error:
        if missing_ok:
            return ""
        raise BlockWeightError(f"cannot read preset file {path}: {error.strerror or error}") from error
    except OSError as error:
        raise BlockWeightError(f"cannot read preset file {path}: {error.strerror or error}") from error
    if len(data) > MAX_PRESET_FILE_BYTES:
        raise BlockWeightError(f"preset file {path} is larger than {MAX_PRESET_FILE_BYTES // 1024**2} MiB; "
                               "a preset file holds one short line per preset")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BlockWeightError(f"cannot read preset file {path}: {error}") from error


def _parse_line(line: str, *, where: str, source: str) -> Preset:
    name, colon, values = line.partition(":")
    if not colon:
        raise BlockWeightError(f"{where}: expected NAME:v1,...,vN, got {echo(line, 60)}")
    name = name.replace(" ", "")
    if not name:
        raise BlockWeightError(f"{where}: the preset has no name before ':'")
    vector = parse_vector(values, where=where)
    family = family_of_length(len(vector))
    if family is None:
        raise BlockWeightError(
            f"{where}: {name} has {len(vector)} values; expected 17 or 26 (SD1/SD2), 12 or 20 (SDXL)"
            f" or {FLUX_LENGTH} (Flux)"
        )
    try:
        return Preset(name, {family: vector}, source)
    except BlockWeightError as error:
        raise BlockWeightError(f"{where}: {error}") from None
