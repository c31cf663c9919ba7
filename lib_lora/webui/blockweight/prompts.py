"""Prompt side of the WebUI block-weight script: rewrite tags before the built-in Lora parses, read what it parsed,
write and read back the infotext field.

A1111 1.10's `process_images_inner` slices `p.prompts` out of `p.all_prompts` for each batch, calls the scripts'
`before_process_batch(p, prompts=p.prompts, …)`, then `p.parse_extra_network_prompts()`, which parses `p.prompts`
and, for txt2img with hires fix, re-slices `p.hr_prompts` out of `p.all_hr_prompts`. So:
- the batch's prompts are rewritten in the `prompts` list itself (a copy: `p.all_prompts`, which the infotext
  reads, keeps the prompts as typed, so "Send to txt2img" gives back `<lora:x:0.8:NCNF>`);
- the hires prompts are rewritten in `p.all_hr_prompts` for this batch and put back as typed once parsed (the
  infotext's "Hires prompt" compares them with the prompt).
A tag our parser rejects (e.g. LBW's `lbwe=`, `step=`) is left exactly as typed, the prompt's other tags are still
rewritten: the built-in (or LBW, if installed) reads that tag as it always did, and the reason is reported once.

The `Lora block weights` field records, per image, the block weights each pass applied: one `name: te=…, unet=…,
blocks=…` item per tag, as before, when the hires pass applied what the first pass did (or there is no hires pass);
else an item applied in one pass only ends in `pass=first` or `pass=hires` (an item without it was applied in both).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

from ...blocks.apply import BLOCK_WEIGHTS_FIELD, block_weights_value
from ...blocks.step_window import is_gated
from ...blocks.syntax import EXTRA_NETWORK_RE, LORA_KINDS, NAMED_KEYS, LoraCall, parse_prompt, rewrite_for_builtin
from ...errors import PromptSyntaxError

__all__ = [
    "PASSES",
    "REFUSED_FIELD",
    "BlockWeightsInfotext",
    "RefusedInfotext",
    "Refusals",
    "RewriteProblem",
    "block_weights_record",
    "calls_from_extra_network_data",
    "calls_with_block_weights",
    "hires_batch",
    "image_hires_prompt",
    "parse_block_weights_record",
    "parse_block_weights_value",
    "restore_prompts",
    "rewrite_hires_prompts",
    "rewrite_prompt",
    "rewrite_prompts",
]


@dataclass(frozen=True)
class RewriteProblem:
    """A tag left as typed, and why (the PromptSyntaxError's message, which names the tag)."""

    tag: str
    reason: str


def rewrite_prompt(prompt: str) -> tuple[str, list[RewriteProblem]]:
    """The prompt with each tag the built-in Lora would reject rewritten; tags we cannot parse stay as typed."""
    pieces: list[str] = []
    problems: list[RewriteProblem] = []
    last = 0
    for match in EXTRA_NETWORK_RE.finditer(prompt):
        try:
            rewritten = rewrite_for_builtin(match.group(0))[0]
        except PromptSyntaxError as error:
            rewritten = match.group(0)
            problems.append(RewriteProblem(match.group(0), str(error)))
        pieces += [prompt[last:match.start()], rewritten]
        last = match.end()
    pieces.append(prompt[last:])
    return "".join(pieces), problems


def rewrite_prompts(prompts: MutableSequence[str]) -> list[RewriteProblem]:
    """`rewrite_prompt` on each prompt, in place; the problems of all of them."""
    problems: list[RewriteProblem] = []
    for index, prompt in enumerate(prompts):
        prompts[index], found = rewrite_prompt(prompt)
        problems += found
    return problems


def hires_batch(p: Any, batch_number: int) -> range:
    """The indices of batch `batch_number`'s hires prompts in `p.all_hr_prompts` (empty without hires fix)."""
    all_hr_prompts = getattr(p, "all_hr_prompts", None)
    if not getattr(p, "enable_hr", False) or not isinstance(all_hr_prompts, list):
        return range(0)
    size = int(p.batch_size)
    return range(batch_number * size, min((batch_number + 1) * size, len(all_hr_prompts)))


def rewrite_hires_prompts(p: Any, batch_number: int) -> tuple[dict[int, str], list[RewriteProblem]]:
    """Rewrite this batch's slice of `p.all_hr_prompts` in place; returns {index: prompt as typed} to restore."""
    indices = hires_batch(p, batch_number)
    if not indices:
        return {}, []
    all_hr_prompts = p.all_hr_prompts
    batch = [all_hr_prompts[index] for index in indices]
    problems = rewrite_prompts(batch)
    typed: dict[int, str] = {}
    for index, rewritten in zip(indices, batch):
        if rewritten != all_hr_prompts[index]:
            typed[index] = all_hr_prompts[index]
            all_hr_prompts[index] = rewritten
    return typed, problems


def restore_prompts(prompts: MutableSequence[str], typed: Mapping[int, str]) -> None:
    """Put the prompts as typed back at their indices (undoes `rewrite_hires_prompts`)."""
    for index, prompt in typed.items():
        if index < len(prompts):
            prompts[index] = prompt


def calls_from_extra_network_data(extra_network_data: Mapping[str, Iterable[Any]] | None,
                                  ) -> tuple[list[LoraCall], list[str]]:
    """The LoRA calls the built-in just activated, from A1111's `{kind: [ExtraNetworkParams]}`; and parse errors.

    Each `ExtraNetworkParams.items` is the tag's text split at ':'; joined again it is the tag as it reached the
    built-in (our rewrite, or a prompt left as typed).
    """
    calls: list[LoraCall] = []
    errors: list[str] = []
    for kind, params_list in (extra_network_data or {}).items():
        if kind not in LORA_KINDS:
            continue
        for params in params_list:
            tag = f"<{kind}:{':'.join(str(item) for item in getattr(params, 'items', []))}>"
            try:
                calls.extend(parse_prompt(tag)[1])
            except PromptSyntaxError as error:
                errors.append(str(error))
    return calls, errors


def calls_with_block_weights(calls: Iterable[LoraCall]) -> list[LoraCall]:
    """The calls this script acts on: those with block weights or a step window."""
    return [call for call in calls if call.blocks is not None or is_gated(call)]


REFUSED_FIELD = "Lora block weights refused"
"""The infotext field that lists each tag whose block weights were not applied, and why."""


class Refusals:
    """The tags of one generation whose block weights were not applied: by call (tags we parsed) or by the text
    of a tag we could not parse, each with its reason. The infotext fields read it per image."""

    def __init__(self) -> None:
        self.by_call: dict[LoraCall, str] = {}
        self.by_text: dict[str, str] = {}

    def refuse(self, call: LoraCall, reason: str) -> None:
        self.by_call.setdefault(call, reason)

    def refuse_text(self, tag: str, reason: str) -> None:
        self.by_text.setdefault(tag, reason)

    def applied(self, calls: Iterable[LoraCall]) -> list[LoraCall]:
        """The calls with block weights or a window that were not refused."""
        return [call for call in calls_with_block_weights(calls) if call not in self.by_call]

    def applied_in(self, prompt: str) -> list[LoraCall]:
        """The calls of `prompt` whose block weights or window were applied, in prompt order; a tag we cannot
        parse was left as typed (refused), the others still count."""
        return self.applied(call for _, calls in _tags_of(prompt) for call in calls)

    def of_prompt(self, prompt: str) -> list[tuple[str, str]]:
        """(tag as typed, reason) for each refused tag in `prompt`, in prompt order."""
        found: list[tuple[str, str]] = []
        for tag, calls in _tags_of(prompt):
            reason = self.by_text.get(tag)
            if reason is None:
                reason = next((self.by_call[call] for call in calls if call in self.by_call), None)
            if reason is not None:
                found.append((tag, reason))
        return found


def _tags_of(prompt: str) -> list[tuple[str, list[LoraCall]]]:
    """(tag as typed, its calls) for each extra-network tag of `prompt`; a tag we cannot parse has no calls."""
    found: list[tuple[str, list[LoraCall]]] = []
    for match in EXTRA_NETWORK_RE.finditer(prompt):
        try:
            calls = parse_prompt(match.group(0))[1]
        except PromptSyntaxError:
            calls = []
        found.append((match.group(0), calls))
    return found


def image_hires_prompt(p: Any, index: int | None, all_prompts: Sequence[str] | None = None,
                       use_main_prompt: bool = False) -> str | None:
    """The hires prompt of the image `create_infotext` describes, as typed; None without a hires pass.

    The WebUI passes, while processing, the batch's prompts and the image's place in the batch (`p.iteration` is the
    batch); afterwards (`Processed.infotext`) every prompt and the image's place among them.
    """
    hires = getattr(p, "all_hr_prompts", None)
    if not getattr(p, "enable_hr", False) or not isinstance(hires, list) or not isinstance(index, int):
        return None
    position = index
    if use_main_prompt:
        position = 0
    elif all_prompts is not None and len(all_prompts) < len(hires):
        position = int(getattr(p, "iteration", 0) or 0) * int(getattr(p, "batch_size", 1) or 1) + index
    return str(hires[position]) if 0 <= position < len(hires) else None


PASSES = ("first", "hires")
"""The `pass=` values of a `Lora block weights` item applied in one pass only."""


def block_weights_record(first: Sequence[LoraCall], hires: Sequence[LoraCall] | None) -> str | None:
    """The `Lora block weights` value for what each pass applied (`hires` None: no hires pass); None if nothing."""
    if hires is None or set(first) == set(hires):
        return block_weights_value(first) if first else None
    items = [(call, None if call in hires else "first") for call in first]
    items += [(call, "hires") for call in dict.fromkeys(hires) if call not in first]
    return "; ".join(block_weights_value([call]) + (f", pass={only}" if only else "") for call, only in items)


class BlockWeightsInfotext:
    """A `p.extra_generation_params` value: the WebUI calls it per image with the `create_infotext` locals
    (`prompt_text`, the prompt as typed; `p`, `index`). It records the block weights and windows each pass applied
    (the first pass from the prompt, the hires pass from the image's hires prompt): refused tags are left out."""

    def __init__(self, refusals: Refusals | None = None) -> None:
        self.refusals = refusals or Refusals()

    def __call__(self, prompt_text: str = "", p: Any = None, index: int | None = None,
                 all_prompts: Sequence[str] | None = None, use_main_prompt: bool = False, **_: Any) -> str | None:
        hires_prompt = image_hires_prompt(p, index, all_prompts, use_main_prompt)
        first = self.refusals.applied_in(str(prompt_text))
        hires = None if hires_prompt is None else self.refusals.applied_in(hires_prompt)
        return block_weights_record(first, hires)

    def __repr__(self) -> str:
        return f"<{BLOCK_WEIGHTS_FIELD} per image>"


class RefusedInfotext:
    """A `p.extra_generation_params` value: per image, `tag: reason; …` for each refused tag of its prompt, then of
    its hires prompt (a tag in both is listed once)."""

    def __init__(self, refusals: Refusals) -> None:
        self.refusals = refusals

    def __call__(self, prompt_text: str = "", p: Any = None, index: int | None = None,
                 all_prompts: Sequence[str] | None = None, use_main_prompt: bool = False, **_: Any) -> str | None:
        found = dict(self.refusals.of_prompt(str(prompt_text)))
        hires_prompt = image_hires_prompt(p, index, all_prompts, use_main_prompt)
        for tag, reason in self.refusals.of_prompt(hires_prompt or ""):
            found.setdefault(tag, reason)
        return "; ".join(f"{tag}: {reason.replace(';', ',')}" for tag, reason in found.items()) or None

    def __repr__(self) -> str:
        return f"<{REFUSED_FIELD} per image>"


_ITEM_RE = re.compile(r"\s*(\w+)=(.*)")
_VALUE_KEYS = ("te", "unet", "blocks", "start", "stop", "pass")


def parse_block_weights_value(value: str) -> list[LoraCall]:
    """The calls a `Lora block weights` value describes, whichever pass applied them (see
    `parse_block_weights_record`)."""
    return [call for call, _ in parse_block_weights_record(value)]


def parse_block_weights_record(value: str) -> list[tuple[LoraCall, str | None]]:
    """(call, the one pass that applied it, or None for every pass) for each item of a `Lora block weights` value
    (the inverse of `block_weights_record`).

    Raises PromptSyntaxError, naming the part, for anything `block_weights_record` cannot have written.
    """
    record: list[tuple[LoraCall, str | None]] = []
    for part in filter(None, (piece.strip() for piece in value.split(";"))):
        name, colon, rest = part.partition(": ")
        if not colon or not name:
            raise PromptSyntaxError(f"expected 'name: te=…, unet=…', got {part!r}", tag=BLOCK_WEIGHTS_FIELD)
        items: dict[str, str] = {}
        last: str | None = None
        for piece in rest.split(","):
            match = _ITEM_RE.fullmatch(piece)
            if match and match.group(1) in _VALUE_KEYS:
                last = match.group(1)
                if last in items:
                    raise PromptSyntaxError(f"{last}= is given twice in {part!r}", tag=BLOCK_WEIGHTS_FIELD)
                items[last] = match.group(2)
            elif last == "blocks":  # a literal vector: its commas (and spaces, as typed) are the vector's
                items["blocks"] += f",{piece}"
            else:
                raise PromptSyntaxError(f"unexpected {piece.strip()!r} in {part!r}", tag=BLOCK_WEIGHTS_FIELD)
        only = items.pop("pass", None)
        if only is not None and only.strip() not in PASSES:
            raise PromptSyntaxError(f"pass={only.strip()!r} in {part!r}: expected pass=first or pass=hires",
                                    tag=BLOCK_WEIGHTS_FIELD)
        if "blocks" in items:
            items["lbw"] = items.pop("blocks")
        items = {key: text.strip() for key, text in items.items()}
        tag = f"<lora:{name}:" + ":".join(f"{key}={text}" for key, text in items.items() if key in NAMED_KEYS) + ">"
        record += [(call, None if only is None else only.strip()) for call in parse_prompt(tag)[1]]
    return record
