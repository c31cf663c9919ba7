"""Block-weight vectors and presets: LBW's vector formats as data, one strict pure expansion, a preset book.

A vector is a list of weights in one of LBW's formats (shared/research/lbw.md §2.2): SD1/SD2 17 (the blocks a
plain LoRA reaches) or 26 (every block), SDXL 12 or 20. `expand_vector` turns it into a full table
{block id: weight} over BASE and every UNet block of the arch. The blocks a short format omits get 0, as LBW's
`to26` gives them (lbw.md §2.1): a 17-value vector on a LoCon switches IN00, IN03, IN06, IN09–IN11 and
OUT00–OUT02 off; use 26 values to control them. The parts no block covers (`time_embed`, `label_emb`, `out`;
mapping.UNBLOCKED_PARTS) are not in the table: block weights never scale them (weight 1).

Any other length, a value that is not a number, and LBW's random values R/U/X are BlockWeightErrors; nothing
is padded, truncated or skipped. Random weights are not supported yet: a caller that wants them resolves them
into numbers itself, with a seed, before calling this module.

Presets are arch-aware: one vector per family ("sd1", used for SD1 and SD2, and "sdxl"); an SD1 vector is
never expanded onto SDXL. Preset files use LBW's `NAME:v1,...,vN` lines; the length of a line decides its
family (17/26 → sd1, 12/20 → sdxl, 61 → flux, kept but never expanded: Flux is not supported).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..arch import SD1, SDXL, Arch, get_arch
from ..errors import BlockWeightError
from .mapping import BASE

SD1_FAMILY = "sd1"
SDXL_FAMILY = "sdxl"
FLUX_FAMILY = "flux"
FAMILIES: tuple[str, ...] = (SD1_FAMILY, SDXL_FAMILY, FLUX_FAMILY)
FAMILY_OF_ARCH: Mapping[str, str] = MappingProxyType({"sd1": SD1_FAMILY, "sd2": SD1_FAMILY, "sdxl": SDXL_FAMILY})
"""Arch name -> preset family; SD2 has SD1's blocks and uses SD1's vectors."""

FAMILY_TITLES: Mapping[str, str] = MappingProxyType({SD1_FAMILY: "SD1/SD2", SDXL_FAMILY: "SDXL", FLUX_FAMILY: "Flux"})
FLUX_LENGTH = 61


def _ids(prefix: str, numbers: Iterable[int]) -> tuple[str, ...]:
    return tuple(f"{prefix}{n:02d}" for n in numbers)


FORMATS: Mapping[str, Mapping[int, tuple[str, ...]]] = MappingProxyType({
    SD1_FAMILY: MappingProxyType({
        17: (BASE, *_ids("IN", (1, 2, 4, 5, 7, 8)), "M00", *_ids("OUT", range(3, 12))),
        26: (BASE, *SD1.unet_block_ids),
    }),
    SDXL_FAMILY: MappingProxyType({
        12: (BASE, *_ids("IN", (4, 5, 7, 8)), "M00", *_ids("OUT", range(0, 6))),
        20: (BASE, *SDXL.unet_block_ids),
    }),
})
"""Family -> vector length -> the block of each position, in LBW's order (lbw.md §2.2)."""

LORA_LENGTH: Mapping[str, int] = MappingProxyType({SD1_FAMILY: 17, SDXL_FAMILY: 12})
"""The format of the blocks a plain (attention-only) LoRA reaches, per family."""
FULL_LENGTH: Mapping[str, int] = MappingProxyType({SD1_FAMILY: 26, SDXL_FAMILY: 20})
"""The format naming every block of the family (LyCORIS/LoCon)."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_RANDOM = re.compile(r"[RUX](?:[+-].*)?")


def _arch(arch: Arch | str) -> Arch:
    return arch if isinstance(arch, Arch) else get_arch(arch)


def family_of(arch: Arch | str) -> str:
    """The preset family ("sd1" or "sdxl") whose vectors apply to `arch`."""
    return FAMILY_OF_ARCH[_arch(arch).name]


def family_of_length(length: int) -> str | None:
    """The family a vector of `length` values belongs to (17/26 sd1, 12/20 sdxl, 61 flux), or None."""
    if length == FLUX_LENGTH:
        return FLUX_FAMILY
    return next((family for family, formats in FORMATS.items() if length in formats), None)


def full_block_ids(arch: Arch | str) -> tuple[str, ...]:
    """BASE then every UNet block id of `arch`: the keys of every expanded table."""
    return (BASE, *_arch(arch).unet_block_ids)


def _format_summary(family: str) -> str:
    parts = []
    for length, order in FORMATS[family].items():
        parts.append(f"{length}: {', '.join(order[:4])}, …, {order[-1]}")
    return "; ".join(parts)


def _length_error(arch: Arch, got: int) -> BlockWeightError:
    family = FAMILY_OF_ARCH[arch.name]
    lengths = " or ".join(str(n) for n in FORMATS[family])
    message = f"expected {lengths} values for {arch.name.upper()} ({_format_summary(family)}), got {got}"
    other = family_of_length(got)
    if other == SDXL_FAMILY:
        message += "; that is an SDXL format, and SDXL vectors are never used on SD1/SD2"
    elif other == SD1_FAMILY:
        message += "; that is an SD1/SD2 format, and SD1 vectors are never used on SDXL"
    elif other == FLUX_FAMILY:
        message += "; that is LBW's Flux format, which is not supported"
    return BlockWeightError(message)


def parse_value(text: str, *, where: str = "") -> float:
    """One weight written as a decimal number; LBW's R/U/X and anything else raise BlockWeightError."""
    value = text.strip()
    prefix = f"{where}: " if where else ""
    if _NUMBER.fullmatch(value):
        return float(value)
    if _RANDOM.fullmatch(value):
        raise BlockWeightError(
            f"{prefix}{value!r} is one of LBW's random/XY values (R, U, X), which are not supported; write a number"
        )
    if not value:
        raise BlockWeightError(f"{prefix}empty value (two commas in a row, or a trailing comma?)")
    raise BlockWeightError(f"{prefix}{value!r} is not a number")


def parse_vector(text: str, *, where: str = "") -> tuple[float, ...]:
    """The comma-separated weights in `text` (`1,0,0.5,…`), each a number; the length is not checked here."""
    prefix = f"{where}, " if where else ""
    return tuple(
        parse_value(part, where=f"{prefix}value {index}") for index, part in enumerate(text.split(","), start=1)
    )


def _checked(values: Sequence[float]) -> tuple[float, ...]:
    result = []
    for index, value in enumerate(values, start=1):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BlockWeightError(f"value {index} is {value!r}; expected a finite number")
        result.append(float(value))
    return tuple(result)


def expand_vector(values: Sequence[float], arch: Arch | str) -> dict[str, float]:
    """{block id: weight} for BASE and every UNet block of `arch`, from a vector in one of its formats.

    SD1/SD2 take 17 or 26 values, SDXL 12 or 20 (lbw.md §2.2); blocks a short format omits get 0 (as in LBW).
    Example: 17 ones on SD1 -> IN01=1 … but IN00=IN03=0. Any other length raises BlockWeightError.
    """
    resolved = _arch(arch)
    numbers = _checked(values)
    order = FORMATS[FAMILY_OF_ARCH[resolved.name]].get(len(numbers))
    if order is None:
        raise _length_error(resolved, len(numbers))
    table = dict.fromkeys(full_block_ids(resolved), 0.0)
    table.update(zip(order, numbers))
    return table


def vector_for(weights: Mapping[str, float], arch: Arch | str, length: int) -> list[float]:
    """The weights of the blocks of `arch`'s `length`-value format, in LBW's order (the inverse of expand_vector).

    Lossy when `weights` sets blocks the format omits (see `shortest_length`); a block of the format missing
    from `weights`, or a length the arch has no format of, raises BlockWeightError.
    """
    resolved = _arch(arch)
    order = FORMATS[FAMILY_OF_ARCH[resolved.name]].get(length)
    if order is None:
        raise _length_error(resolved, length)
    missing = [block for block in order if block not in weights]
    if missing:
        raise BlockWeightError(f"no weight for block(s) {', '.join(missing)} of the {length}-value format")
    return [float(weights[block]) for block in order]


def shortest_length(weights: Mapping[str, float], arch: Arch | str) -> int:
    """The shortest format of `arch` that holds `weights` exactly (omitted blocks all 0): 17/12 or 26/20."""
    family = family_of(arch)
    for length, order in sorted(FORMATS[family].items()):
        if all(weights.get(block, 0.0) == 0.0 for block in weights if block not in order):
            return length
    return FULL_LENGTH[family]


def _check_name(name: str) -> None:
    if not name or any(char in name for char in ":,<>#") or name != name.strip() or " " in name:
        raise BlockWeightError(f"invalid preset name {name!r}: it must be one word without : , < > #")


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
    presets += [Preset(name, {SD1_FAMILY: parse_vector(v)}, "seed 002 (CharFramework)") for name, v in _SEED_26]
    presets += [
        Preset(name, {SD1_FAMILY: parse_vector(sd1), SDXL_FAMILY: parse_vector(sdxl)}, "LoRA Studio (DESIGN.md)")
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
        """A book of `presets`; a later preset of the same name overrides an earlier one per family."""
        book = cls()
        for preset in presets:
            book = book.merge(cls({preset.name: preset}))
        return book

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
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise BlockWeightError(f"cannot read preset file {path}: {reason}") from error
        return cls.parse_preset_text(text, source=str(path))

    def merge(self, other: PresetBook) -> PresetBook:
        """This book with `other`'s presets added; for a name in both, `other`'s vectors win per family."""
        merged = dict(self.presets)
        for name, preset in other.presets.items():
            old = merged.get(name)
            if old is None:
                merged[name] = preset
                continue
            vectors = {**old.vectors, **preset.vectors}
            kept = [f for f in old.vectors if f not in preset.vectors]
            source = preset.source if not kept else f"{preset.source}; {'/'.join(kept)} from {old.source}"
            merged[name] = Preset(name, vectors, source)
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
        raise BlockWeightError(f"unknown block-weight preset {name!r} (names are case-sensitive){hint}")

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
            where = f"block weights {text!r}"
            try:
                return expand_vector(parse_vector(text, where=where), arch)
            except BlockWeightError as error:
                if str(error).startswith(where):
                    raise
                raise BlockWeightError(f"{where}: {error}") from None
        return self.get(text, arch)


def _parse_line(line: str, *, where: str, source: str) -> Preset:
    name, colon, values = line.partition(":")
    if not colon:
        raise BlockWeightError(f"{where}: expected NAME:v1,...,vN, got {line[:60]!r}")
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
