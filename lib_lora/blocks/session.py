"""Generation with `<lora:…>` tags on one host, keeping the last LoRA set merged between images.

`LoraSession.generate(request)` parses the prompt's tags, resolves names in the LoRA folders and presets for the
host's family, and renders through the host:
- a diffusers host: the LoRAs are merged into the weights by `networks.attach.WeightMerger` and stay merged, so
  a second image with an unchanged set merges nothing (only changed weights are rebuilt; `unmerge()` restores
  the base weights exactly, and must run before training). Tags with `start=`/`stop=` switch their UNet part
  between steps through the host's `on_step` callback.
- a host that reads tags itself (`handles_lora_tags`, the WebUI): the prompt goes through as typed.
Before anything is rendered each LoRA's modules are matched against the model's layers (`networks.matching`): a
LoRA none of whose modules match, or one that matches in part and looks like another family, is refused
(LoraMatchError); one that matches in part is a warning (`Generated.warnings`). The infotext keeps the prompt as
typed and records `Lora block weights` and `Lora modules matched`. `generate(request, on_step=…)` reports the
sampling steps on every host (diffusers: its step callback; a WebUI: its own step count, `hosts.webui_progress`);
when `on_step` raises, the image stops there (a WebUI through its own interrupt) and that error propagates.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..hosts.base import GenerationRequest, Host, StepCallback
from ..hosts.webui_progress import following_steps
from ..networks.attach import AppliedLora, ApplyReport, WeightMerger
from ..networks.keys import TargetIndex, build_target_index
from ..networks.loaded import LoraNetwork, load_network
from ..networks.matching import (
    MATCHED_FIELD,
    ModuleMatch,
    check_matches,
    count_match,
    file_family,
    file_module_names,
    guess_family,
    match_warnings,
    matched_field_value,
)
from ..pnginfo import PARAMETERS_KEY, parameters_text
from .apply import BLOCK_WEIGHTS_FIELD, LoraLibrary, block_weights_value, resolve_calls
from .presets import PresetBook
from .step_window import active_steps, is_gated
from .syntax import LoraCall, parse_prompt

if TYPE_CHECKING:
    from PIL import Image

LibrarySource = Union[LoraLibrary, Callable[[], LoraLibrary]]
PresetSource = Union[PresetBook, Callable[[], PresetBook]]


@dataclass(frozen=True)
class Generated:
    """One image, its A1111-style infotext (prompt as typed), the tags that were applied and how each LoRA's modules
    matched the model."""

    image: Image.Image
    parameters: str
    calls: tuple[LoraCall, ...]
    merge: ApplyReport | None = None
    matches: tuple[ModuleMatch, ...] = ()

    @property
    def warnings(self) -> list[str]:
        """One sentence per LoRA whose modules matched only in part (counts, an example, the guessed family)."""
        return match_warnings(self.matches)


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

    reports_steps = True
    """`generate` takes `on_step` (grids and the analyzer then show and cancel within an image)."""

    def __init__(self, host: Host, library: LibrarySource, presets: PresetSource, *,
                 model_name: str | None = None) -> None:
        self.host = host
        self._library = library
        self._presets = presets
        self.model_name = model_name or host.model_name
        self._networks = _NetworkCache()
        self._merger: WeightMerger | None = None
        self._index: tuple[weakref.ref[Any], TargetIndex] | None = None
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
        """The prompt's calls, with names, presets, families and module matches checked; raises what generate would
        (LoraMatchError for a LoRA that would change nothing or looks like another family)."""
        _, calls = parse_prompt(prompt)
        check_matches(self._checked(calls)[0])
        return calls

    def warnings(self, prompt: str) -> list[str]:
        """What generating `prompt` would warn about (LoRAs whose modules match in part); raises what check raises."""
        return check_matches(self._checked(parse_prompt(prompt)[1])[0])

    def generate(self, request: GenerationRequest, *, on_step: StepCallback | None = None) -> Generated:
        """Render `request` (its prompt carries the tags); the LoRA set stays merged afterwards. `on_step(step)`
        gets the 0-based step about to run (on a WebUI, polled: steps may repeat); an error it raises stops
        the image and propagates."""
        with self._lock:
            clean, calls = parse_prompt(request.prompt)
            report: ApplyReport | None = None
            matches, applied = self._checked(calls)
            check_matches(matches)
            if applied is None:
                with following_steps(on_step):
                    image = self.host.generate(request)
            else:
                report, image = self._render(replace(request, prompt=clean), calls, applied, on_step)
            host_record = image.info.get(PARAMETERS_KEY) if self.host.handles_lora_tags else None
            if host_record:  # the WebUI's own infotext: its sampler and seed, the block weights its script applied
                text = host_record
            else:
                fields = {}
                if calls:
                    fields[BLOCK_WEIGHTS_FIELD] = f'"{block_weights_value(calls)}"'
                    fields[MATCHED_FIELD] = f'"{matched_field_value(matches)}"'
                text = parameters_text(request.prompt, request, model=self.model_name, extra_fields=fields)
            return Generated(image=image, parameters=text, calls=tuple(calls), merge=report, matches=tuple(matches))

    def unmerge(self) -> None:
        """Restore the host's base weights exactly (before training, or when LoRAs are no longer wanted)."""
        with self._lock:
            if self._merger is not None:
                self._merger.restore()

    def _checked(self, calls: Sequence[LoraCall]) -> tuple[list[ModuleMatch], list[AppliedLora] | None]:
        """Names, presets and families checked; each call's module match; the AppliedLoras where we merge (None on
        a host that reads the tags itself: there only the files' module names are read, from their headers)."""
        if self.host.handles_lora_tags and not calls:
            return [], None
        family, index, library = self.host.arch.name, self._target_index(), self.library
        if not self.host.handles_lora_tags:
            networks: dict[str, LoraNetwork] = {}

            def load(path: Path) -> LoraNetwork:
                network = self._networks.load(path)
                networks[network.identity] = network
                return network

            applied = resolve_calls(calls, library, self.presets, self.host.arch, loader=load, step_windows=True)
            matches = []
            for call, lora in zip(calls, applied):
                network = networks[lora.identity]
                matches.append(count_match(call.name, lora.modules, [key for key in lora.modules if key in index],
                                           family, family=lambda n=network: guess_family(n.modules, n.metadata)))
            return matches, applied
        presets = self.presets
        matches = []
        for call in calls:
            path = library.resolve(call.name)
            if call.blocks is not None:
                presets.resolve(call.blocks, self.host.arch)
            modules = file_module_names(path)
            matches.append(count_match(call.name, modules, [name for name in modules if name in index], family,
                                       family=lambda p=path: file_family(p)))
        return matches, None

    def _target_index(self) -> TargetIndex:
        """The host's layers under every kohya name: the merger's, or (a WebUI host) one built per loaded UNet."""
        if not self.host.handles_lora_tags:
            return self._merger_for_host().index
        unet = self.host.unet
        if self._index is None or self._index[0]() is not unet:
            self._index = (weakref.ref(unet), build_target_index(self.host))
        return self._index[1]

    def _render(self, request: GenerationRequest, calls: Sequence[LoraCall], applied: list[AppliedLora],
                on_step: StepCallback | None = None) -> tuple[ApplyReport, Image.Image]:
        merger = self._merger_for_host()
        if not any(is_gated(call) for call in calls):
            report = merger.apply(applied)
            image = self.host.generate(request, on_step=on_step) if on_step else self.host.generate(request)
            return report, image
        windows = [active_steps(call, request.steps) for call in calls]
        off = [replace(lora, unet_multiplier=0.0) for lora in applied]

        def at_step(step: int) -> list[AppliedLora]:
            return [lora if step in window else idle for lora, idle, window in zip(applied, off, windows)]

        def set_step(step: int) -> None:
            merger.apply(at_step(step))
            if on_step is not None:
                on_step(step)

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
