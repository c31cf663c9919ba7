"""What the WebUI's built-in Lora took of each LoRA in the prompt: its modules that found a layer of the model.

The built-ins apply a LoRA whose keys match nothing, or match in part, without a word in the image's records:
- A1111 1.10 (extensions-builtin/Lora networks.py `load_network`): keys it cannot place on a layer are logged at
  debug level and left out of `Network.modules`, whose entries each keep the tensor key that placed them
  (`network_key`). Count: the file's modules (from its safetensors header) that have an entry.
- Forge Neo (sd_forge_lora networks.py `load_lora_for_models`): a LoRA with more than half of its keys unmatched is
  skipped with a console line, a UNet part with more than a quarter skipped is dropped; the rest becomes patch
  entries on clones of the UNet and CLIP patchers, which it returns. `NeoLoadCounts` wraps that function on the
  module for one generation; count: the file's modules with a tensor in an entry the call added. Neo skips loading
  while its LoRA set is unchanged, so the counts are kept per file across generations.
`MatchRecords` is the `Lora modules matched` infotext value: per image, `name: matched of total` for each LoRA of
its prompt (`, looks like SDXL` when some did not match and the file names or suggests another family).
Counting never fails a generation: a file we cannot read is left out of the records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from ...blocks.syntax import EXTRA_NETWORK_RE, LORA_KINDS
from ...errors import LoraStudioError
from ...networks.matching import (
    MATCHED_FIELD,
    ModuleMatch,
    count_match,
    file_family,
    file_module_names,
    matched_field_value,
    module_names,
    module_of,
)
from .networks import network_name

__all__ = ["MatchRecords", "NeoLoadCounts", "a1111_match"]

logger = logging.getLogger("lora_studio")
_ADAPTER_DEPTH = 3


def _filename(network: Any) -> str | None:
    filename = getattr(getattr(network, "network_on_disk", None), "filename", None)
    return str(filename) if filename else None


def a1111_match(network: Any, family: str) -> ModuleMatch | None:
    """How many of the file's modules A1111's `load_network` placed on a layer; None when the file is unreadable."""
    filename = _filename(network)
    if filename is None:
        return None
    try:
        modules = file_module_names(filename)
    except (LoraStudioError, OSError) as error:
        logger.debug("LoRA Studio: modules of %s not counted: %s", filename, error)
        return None
    placed = {module_of(str(module.network_key)) for module in (getattr(network, "modules", None) or {}).values()
              if getattr(module, "network_key", None)}
    return count_match(network_name(network), modules, placed, family, family=lambda: file_family(filename))


class NeoLoadCounts:
    """Wraps Neo's `networks.load_lora_for_models` until `restore()`; remembers per file what each load placed."""

    def __init__(self) -> None:
        self._networks: Any = None
        self._original: Callable[..., Any] | None = None
        self._own_attribute = True
        self.by_file: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        """{filename: (its modules, those with a patch entry)} of the loads seen."""

    def install(self, networks: Any) -> None:
        """Wrap the loader's `load_lora_for_models` (a WebUI without one is left as it is)."""
        self.restore()
        original = getattr(networks, "load_lora_for_models", None)
        if not callable(original):
            return
        self._networks, self._original = networks, original
        self._own_attribute = "load_lora_for_models" in vars(networks)
        networks.load_lora_for_models = self._load_lora_for_models

    def restore(self) -> None:
        """Put Neo's function back, unless someone replaced our wrapper meanwhile; the counts are kept."""
        current = vars(self._networks).get("load_lora_for_models") if self._networks is not None else None
        if current is not None and current == self._load_lora_for_models:
            if self._own_attribute:
                self._networks.load_lora_for_models = self._original
            else:
                del self._networks.load_lora_for_models
        self._networks = self._original = None

    def match(self, network: Any, family: str) -> ModuleMatch | None:
        """The count of the last load of this network's file, or None when no load was seen."""
        filename = _filename(network)
        seen = self.by_file.get(filename) if filename else None
        if seen is None:
            return None
        return count_match(network_name(network), seen[0], seen[1], family, family=lambda: file_family(filename))

    def _load_lora_for_models(self, model: Any, clip: Any, lora: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        patchers = (model, getattr(clip, "patcher", None))
        before = [_entry_counts(patcher) for patcher in patchers]
        assert self._original is not None
        result = self._original(model, clip, lora, *args, **kwargs)
        try:
            filename = kwargs.get("filename", args[2] if len(args) > 2 else None)
            if filename is not None:
                after = (result[0], getattr(result[1], "patcher", None))
                self.by_file[str(filename)] = (frozenset(module_names(lora)),
                                               frozenset(_placed(lora, zip(patchers, after, before))))
        except Exception as error:  # noqa: BLE001 - a count must never break Neo's load
            logger.debug("LoRA Studio: Neo's load not counted: %r", error)
        return result


def _entry_counts(patcher: Any) -> dict[str, int]:
    patches = getattr(patcher, "patches", None)
    return {key: len(entries) for key, entries in patches.items()} if isinstance(patches, dict) else {}


def _placed(lora: Mapping[str, Any], pairs: Iterable[tuple[Any, Any, dict[str, int]]]) -> set[str]:
    """The modules of `lora` with a tensor in a patch entry a load added (new entries of a clone it returned). By
    tensor identity: an adapter's `loaded_keys` is the set its whole pass shares in Neo, not its own keys."""
    by_id = {id(tensor): key for key, tensor in lora.items() if isinstance(tensor, torch.Tensor)}
    placed: set[str] = set()
    for old, new, counts in pairs:
        patches = getattr(new, "patches", None)
        if new is old or not isinstance(patches, dict):
            continue
        for key, entries in patches.items():
            for entry in list(entries)[counts.get(key, 0):]:
                adapter = entry[1] if len(entry) > 1 else None
                found = {by_id[i] for i in _tensor_ids(adapter, _ADAPTER_DEPTH) if i in by_id}
                placed.update(module_of(str(name)) for name in found)
    return placed


def _tensor_ids(value: Any, depth: int) -> Iterator[int]:
    """The ids of the tensors an adapter holds: its `weights`, or the nested tuples of a ("diff", (w,)) patch."""
    if isinstance(value, torch.Tensor):
        yield id(value)
    elif depth > 0:
        inner = getattr(value, "weights", value)
        if isinstance(inner, (tuple, list)):
            for item in inner:
                yield from _tensor_ids(item, depth - 1)


class MatchRecords:
    """A `p.extra_generation_params` value, called per image with the prompt as typed: the counts of its LoRAs."""

    def __init__(self) -> None:
        self.by_name: dict[str, ModuleMatch] = {}

    def record(self, match: ModuleMatch) -> bool:
        """Keep `match` for its name; True when it is new or its counts changed (so it is reported once)."""
        changed = self.by_name.get(match.name) != match
        self.by_name[match.name] = match
        return changed

    def __call__(self, prompt_text: str = "", **_: Any) -> str | None:
        prompt = str(prompt_text)
        found = []
        for tag in EXTRA_NETWORK_RE.finditer(prompt, 0, prompt.rfind(">") + 1):
            name = tag.group(2).split(":", 1)[0].strip()
            if tag.group(1) in LORA_KINDS and name in self.by_name:
                found.append(self.by_name[name])
        return matched_field_value(found) or None

    def __repr__(self) -> str:
        return f"<{MATCHED_FIELD} per image>"
