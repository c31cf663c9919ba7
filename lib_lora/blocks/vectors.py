"""Block-weight vectors: LBW's vector formats as data, their parsing, and one strict pure expansion.

A vector is a list of weights in one of LBW's formats (shared/research/lbw.md §2.2): SD1/SD2 17 (the blocks a
plain LoRA reaches) or 26 (every block), SDXL 12 or 20. `expand_vector` turns it into a full table
{block id: weight} over BASE and every UNet block of the arch. The blocks a short format omits get 0, as LBW's
`to26` gives them (lbw.md §2.1): a 17-value vector on a LoCon switches IN00, IN03, IN06, IN09–IN11 and
OUT00–OUT02 off; use 26 values to control them. The parts no block covers (`time_embed`, `label_emb`, `out`;
mapping.UNBLOCKED_PARTS) are not in the table: block weights never scale them (weight 1).

Any other length, a value that is not a number, and LBW's random values R/U/X are BlockWeightErrors; nothing
is padded, truncated or skipped. R/U/X are resolved into numbers, with a seed, before this module sees them
(recipe.py: the Block Weight tab's vector box and XY grid). Text longer than MAX_VECTOR_VALUES values is
refused by its comma count before a value is read, and parsing is linear in the text's length.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from ..arch import SD1, SDXL, Arch, get_arch
from ..errors import BlockWeightError
from ..unet_blocks import BASE
from ..wording import echo

SD1_FAMILY = "sd1"
SDXL_FAMILY = "sdxl"
FLUX_FAMILY = "flux"
FAMILIES: tuple[str, ...] = (SD1_FAMILY, SDXL_FAMILY, FLUX_FAMILY)
FAMILY_OF_ARCH: Mapping[str, str] = MappingProxyType({"sd1": SD1_FAMILY, "sd2": SD1_FAMILY, "sdxl": SDXL_FAMILY})
"""Arch name -> preset family; SD2 has SD1's blocks and uses SD1's vectors."""

FAMILY_TITLES: Mapping[str, str] = MappingProxyType({SD1_FAMILY: "SD1/SD2", SDXL_FAMILY: "SDXL", FLUX_FAMILY: "Flux"})
FLUX_LENGTH = 61
MAX_VECTOR_VALUES = 2 * FLUX_LENGTH
"""The most values a vector may have before it is parsed: twice the longest format (Flux's 61), so a vector a few
values too long is still read and reported as a wrong length, and a huge one is refused by its comma count."""


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
            f"{prefix}{echo(value)} is one of LBW's random/XY values (R, U, X), which are drawn only in the "
            "Block Weight tab's vector box and XY grid; write a number here"
        )
    if not value:
        raise BlockWeightError(f"{prefix}empty value (two commas in a row, or a trailing comma?)")
    raise BlockWeightError(f"{prefix}{echo(value)} is not a number")


def check_vector_length(text: str, *, where: str = "") -> None:
    """BlockWeightError when the comma list `text` has more than MAX_VECTOR_VALUES values (counted, not parsed)."""
    count = text.count(",") + 1
    if count > MAX_VECTOR_VALUES:
        prefix = f"{where}: " if where else ""
        raise BlockWeightError(
            f"{prefix}{count} values; a block-weight vector has at most {FLUX_LENGTH} "
            "(17 or 26 for SD1/SD2, 12 or 20 for SDXL)"
        )


def parse_vector(text: str, *, where: str = "") -> tuple[float, ...]:
    """The comma-separated weights in `text` (`1,0,0.5,…`), each a number; the length is not checked here
    beyond MAX_VECTOR_VALUES, which is refused before any value is read. Time is linear in `len(text)`."""
    check_vector_length(text, where=where)
    prefix = f"{where}, " if where else ""
    values = []
    for index, part in enumerate(text.split(","), start=1):
        values.append(parse_value(part, where=f"{prefix}value {index}"))
    return tuple(values)


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
