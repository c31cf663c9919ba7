"""How much of a LoRA a model took: its modules that found a layer, and the family its keys suggest when some did not.

A LoRA for another family, or one whose modules the model lacks, is otherwise applied in part or not at all without
a word. `ModuleMatch` is one LoRA's count on one model; `matched_field_value` writes the `Lora modules matched`
infotext field; `check_matches` raises `LoraMatchError` where generation can refuse (standalone, the Block Weight
tab): a LoRA none of whose modules matched, or one that matched in part and looks like another family. A module
is what A1111 calls one: the part of a tensor key before its first "." (bundled embeddings are no module).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoraFormatError, LoraStudioError
from ..wording import echo, plural

__all__ = [
    "MATCHED_FIELD",
    "LoraMatchError",
    "ModuleMatch",
    "check_matches",
    "count_match",
    "file_family",
    "file_module_names",
    "guess_family",
    "match_warnings",
    "matched_field_value",
    "module_names",
    "module_of",
]

MATCHED_FIELD = "Lora modules matched"
"""The infotext field that records, per LoRA, how many of its modules matched a layer of the model."""
EXAMPLES = 3
"""How many unmatched module names a match keeps, to show in a message."""

_BUNDLED = "bundle_emb"
_KOHYA_HEAD = re.compile(r"(?:lora|lycoris|oft)_\w+")
_DOTTED_TAIL = re.compile(
    r"\.(?:(?:lora(?:_linear_layer)?\.)?(?:up|down)|lora_(?:up|down|mid|[AB])|hada_\w+|lokr_\w+"
    r"|alpha|scale|dora_scale|diff|diff_b|w_norm|b_norm|reshape_weight|set_weight)(?:\.weight|\.bias)?$"
)


class LoraMatchError(LoraStudioError):
    """A LoRA would change nothing on this model, or looks like another family's: the message gives the counts."""


def module_of(key: str) -> str:
    """The module a tensor key belongs to: `lora_unet_x.lora_up.weight` -> `lora_unet_x` (kohya: up to the first
    "."); a dotted diffusers/PEFT key loses its LoRA part (`unet.….to_q.lora_A.weight` -> `unet.….to_q`)."""
    head = key.split(".", 1)[0]
    if _KOHYA_HEAD.fullmatch(head):
        return head
    tail = _DOTTED_TAIL.search(key)
    return key[:tail.start()] if tail and tail.start() > 0 else head


def module_names(keys: Iterable[str]) -> set[str]:
    """The modules of a LoRA's tensor keys; bundled textual-inversion embeddings are left out."""
    return {module_of(key) for key in keys if key.split(".", 1)[0] != _BUNDLED}


@dataclass(frozen=True)
class ModuleMatch:
    """One LoRA on one model: `matched` of its `total` modules found a layer; `lora_family` (sd1/sd2/sdxl, from the
    metadata or the keys) is only guessed when some did not; `unmatched` holds a few of the modules that did not."""

    name: str
    matched: int
    total: int
    model_family: str
    lora_family: str | None = None
    unmatched: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.matched >= self.total

    @property
    def none(self) -> bool:
        """Whether the LoRA changes nothing: it has modules and not one matched."""
        return self.total > 0 and self.matched == 0

    @property
    def other_family(self) -> bool:
        """Whether its keys or metadata name a family other than the model's (guessed only when not complete)."""
        return self.lora_family is not None and self.lora_family != self.model_family

    @property
    def refused(self) -> bool:
        """What generation that can refuse refuses: nothing matched, or a part matched and it looks like another
        family (its other modules would change the wrong layers or fail on their shapes)."""
        return not self.complete and (self.none or self.other_family)

    def summary(self) -> str:
        """`264 of 264`, `0 of 264, looks like SDXL`: the infotext's words for this LoRA."""
        looks = f", looks like {self.lora_family.upper()}" if self.other_family and not self.complete else ""
        return f"{self.matched} of {self.total}{looks}"

    def message(self) -> str:
        """A warning where the LoRA is applied anyway (a WebUI's built-in, a partial match): counts, an example of
        a module that matched nothing, the guessed family and the fix."""
        if self.none:
            return self._sentence("so it changes nothing")
        return self._sentence("and are not applied")

    def error(self) -> str:
        """The same for a refusal (nothing generated): counts, an example, the guessed family and the fix."""
        return self._sentence("so it would change nothing" if self.none else "")

    def _sentence(self, consequence: str) -> str:
        model = self.model_family.upper()
        example = f" (e.g. {echo(self.unmatched[0], 80)})" if self.unmatched else ""
        then = f" {consequence}" if consequence else ""
        if self.none:
            facts = f"none of its {plural(self.total, 'module')} matches a layer of this {model} model{example}{then}"
        else:
            facts = (f"{self.matched} of its {plural(self.total, 'module')} match a layer of this {model} model; "
                     f"the other {self.total - self.matched} match none{example}{then}")
        if self.other_family:
            family = self.lora_family.upper() if self.lora_family else ""
            return (f"LoRA {echo(self.name)}: {facts}; it looks like an {family} LoRA: load an {family} model or use "
                    f"a LoRA made for {model}")
        return f"LoRA {echo(self.name)}: {facts}" + (f"; use a LoRA made for {model} models" if self.none else "")


def matched_field_value(matches: Iterable[ModuleMatch]) -> str:
    """The `Lora modules matched` value: `name: 264 of 264; other: 0 of 264, looks like SDXL` (each name once)."""
    seen: dict[str, ModuleMatch] = {}
    for match in matches:
        seen.setdefault(match.name, match)
    return "; ".join(f"{name}: {match.summary()}" for name, match in seen.items())


def check_matches(matches: Sequence[ModuleMatch]) -> list[str]:
    """Raise LoraMatchError for the first refused match; else return `match_warnings(matches)`."""
    for match in matches:
        if match.refused:
            raise LoraMatchError(match.error())
    return match_warnings(matches)


def match_warnings(matches: Iterable[ModuleMatch]) -> list[str]:
    """The warning of each match that is not complete, each once (never raises)."""
    return list(dict.fromkeys(match.message() for match in matches if not match.complete))


def count_match(name: str, modules: Iterable[str], matched: Iterable[str], model_family: str, *,
                family: Callable[[], str | None] | None = None) -> ModuleMatch:
    """The match of a LoRA with `modules` of which `matched` found a layer (names outside `modules` are ignored);
    `family()` guesses the LoRA's family, called only when some module did not match."""
    every = set(modules)
    hit = every & set(matched)
    missing = tuple(sorted(every - hit)[:EXAMPLES])
    guessed = family() if missing and family is not None else None
    return ModuleMatch(name, len(hit), len(every), model_family, guessed, missing)


# --- families ----------------------------------------------------------------------------------------------------


def guess_family(modules: Mapping[str, object], metadata: Mapping[str, object]) -> str | None:
    """sd1, sd2 or sdxl as the metadata names it, else as the module names suggest (`families.arch_of`)."""
    from .families import arch_of

    return arch_of(modules, metadata)  # type: ignore[arg-type]


_FILES_LOCK = threading.Lock()
_FILE_MODULES: dict[Path, tuple[tuple[int, int], frozenset[str]]] = {}
_FILE_FAMILIES: dict[Path, tuple[tuple[int, int], str | None]] = {}


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def file_module_names(path: str | os.PathLike[str]) -> frozenset[str]:
    """The modules of a LoRA file, from a safetensors header alone (a pickle is loaded); cached while unchanged.

    Raises LoraFormatError (naming the file) for a file it cannot read.
    """
    from .files import PICKLE_SUFFIXES, load_lora_file, read_header

    path = Path(path)
    stamp = _stamp(path)
    with _FILES_LOCK:
        cached = _FILE_MODULES.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    if path.suffix.lower() in PICKLE_SUFFIXES:
        keys: Iterable[str] = load_lora_file(path).tensors
    else:
        keys = read_header(path).tensors
    names = frozenset(module_names(keys))
    with _FILES_LOCK:
        _FILE_MODULES[path] = (stamp, names)
    return names


def file_family(path: str | os.PathLike[str]) -> str | None:
    """The family of a LoRA file (metadata, else keys); None when neither tells or the file cannot be read.

    Reads the whole file: call it only for a LoRA that did not match completely. Cached while unchanged.
    """
    from .loaded import load_network

    path = Path(path)
    try:
        stamp = _stamp(path)
    except OSError:
        return None
    with _FILES_LOCK:
        cached = _FILE_FAMILIES.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        network = load_network(path)
        family = guess_family(network.modules, network.metadata)
    except LoraFormatError:
        family = None
    with _FILES_LOCK:
        _FILE_FAMILIES[path] = (stamp, family)
    return family
