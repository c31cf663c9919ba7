"""Generation with `<lora:…>` tags on one host, keeping the last LoRA set merged between images.

`LoraSession.generate(request)` parses the prompt's tags, resolves names in the LoRA folders and presets for the
host's family, and renders through the host:
- a diffusers host: the LoRAs are merged into the weights by `networks.attach.WeightMerger` and stay merged, so
  a second image with an unchanged set merges nothing (only changed weights are rebuilt; `unmerge()` restores
  the base weights exactly, and must run before training). Tags with `start=`/`stop=` switch their UNet part
  between steps through the host's `on_step` callback.
- a host that reads tags itself (`handles_lora_tags`, the WebUI): the prompt goes through as typed.
The infotext keeps the prompt as typed and records `Lora block weights`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ..hosts.base import GenerationRequest, Host
from ..networks.attach import AppliedLora, ApplyReport, WeightMerger
from ..networks.keys import build_target_index
from ..networks.network import LoraNetwork, load_network
from ..pnginfo import parameters_text
from .apply import BLOCK_WEIGHTS_FIELD, LoraLibrary, block_weights_value, resolve_calls
from .presets import PresetBook
from .steps import active_steps, is_gated
from .syntax import LoraCall, parse_prompt

if TYPE_CHECKING:
    from PIL import Image

LibrarySource = Union[LoraLibrary, Callable[[], LoraLibrary]]
PresetSource = Union[PresetBook, Callable[[], PresetBook]]


@dataclass(frozen=True)
class Generated:
    """One image, its A1111-style infotext (prompt as typed) and the tags that were applied."""

    image: Image.Image
    parameters: str
    calls: tuple[LoraCall, ...]
    merge: ApplyReport | None = None


class _NetworkCache:
    """LoRA files loaded once while unchanged on disk (keyed by path, size and mtime)."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple[int, int], LoraNetwork]] = {}

    def load(self, path: Path) -> LoraNetwork:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        network = load_network(path)
        self._cache[path] = (stamp, network)
        return network


class LoraSession:
    """Generation with `<lora:…>` tags on `host`; one per host (see `session_for`). Not for concurrent use."""

    def __init__(self, host: Host, library: LibrarySource, presets: PresetSource, *,
                 model_name: str | None = None) -> None:
        self.host = host
        self._library = library
        self._presets = presets
        self.model_name = model_name or host.model_name
        self._networks = _NetworkCache()
        self._merger: WeightMerger | None = None
        self._lock = threading.Lock()

    @property
    def library(self) -> LoraLibrary:
        return self._library() if callable(self._library) else self._library

    @property
    def presets(self) -> PresetBook:
        return self._presets() if callable(self._presets) else self._presets

    @property
    def merged(self) -> bool:
        """Whether some LoRA weights are merged into the host right now."""
        return self._merger is not None and self._merger.merged_slots > 0

    def check(self, prompt: str) -> list[LoraCall]:
        """The prompt's calls, with names, presets and families checked (files loaded); raises what generate would."""
        _, calls = parse_prompt(prompt)
        if not self.host.handles_lora_tags:
            self._resolve(calls)
        else:
            library, presets = self.library, self.presets
            for call in calls:
                library.resolve(call.name)
                if call.blocks is not None:
                    presets.resolve(call.blocks, self.host.arch)
        return calls

    def generate(self, request: GenerationRequest) -> Generated:
        """Render `request` (its prompt carries the tags); the LoRA set stays merged afterwards."""
        with self._lock:
            clean, calls = parse_prompt(request.prompt)
            report: ApplyReport | None = None
            if self.host.handles_lora_tags:
                self.check(request.prompt)
                image = self.host.generate(request)
            else:
                applied = self._resolve(calls)
                report, image = self._render(replace(request, prompt=clean), calls, applied)
            fields = {BLOCK_WEIGHTS_FIELD: f'"{block_weights_value(calls)}"'} if calls else {}
            text = parameters_text(request.prompt, request, model=self.model_name, extra_fields=fields)
            return Generated(image=image, parameters=text, calls=tuple(calls), merge=report)

    def unmerge(self) -> None:
        """Restore the host's base weights exactly (before training, or when LoRAs are no longer wanted)."""
        with self._lock:
            if self._merger is not None:
                self._merger.restore()

    def _resolve(self, calls: Sequence[LoraCall]) -> list[AppliedLora]:
        return resolve_calls(calls, self.library, self.presets, self.host.arch, loader=self._networks.load,
                             step_windows=True)

    def _render(self, request: GenerationRequest, calls: Sequence[LoraCall],
                applied: list[AppliedLora]) -> tuple[ApplyReport, Image.Image]:
        merger = self._merger_for_host()
        if not any(is_gated(call) for call in calls):
            return merger.apply(applied), self.host.generate(request)
        windows = [active_steps(call, request.steps) for call in calls]
        off = [replace(lora, unet_multiplier=0.0) for lora in applied]

        def at_step(step: int) -> list[AppliedLora]:
            return [lora if step in window else idle for lora, idle, window in zip(applied, off, windows)]

        def set_step(step: int) -> None:
            merger.apply(at_step(step))

        report = merger.apply(at_step(0))  # the text encoders get their full part; the UNet step 0's

        try:
            return report, self.host.generate(request, on_step=set_step)
        except BaseException:
            merger.restore()  # a half-switched set is not left behind
            raise

    def _merger_for_host(self) -> WeightMerger:
        if self._merger is None:
            self._merger = WeightMerger(build_target_index(self.host))
        return self._merger




_SESSIONS: weakref.WeakKeyDictionary[object, LoraSession] = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()


def session_for(host: Host, library: LibrarySource, presets: PresetSource) -> LoraSession:
    """The one session of `host` (created on first use; its library and presets sources are updated)."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(host)
        if session is None:
            session = _SESSIONS[host] = LoraSession(host, library, presets)
        else:
            session._library, session._presets = library, presets
        return session


def unmerge_host(host: Host) -> None:
    """Restore `host`'s base weights if a session merged LoRAs into it (call before training on it)."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(host)
    if session is not None:
        session.unmerge()
