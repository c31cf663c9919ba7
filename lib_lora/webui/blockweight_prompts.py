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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableSequence
from dataclasses import dataclass
from typing import Any

from ..blocks.apply import BLOCK_WEIGHTS_FIELD, block_weights_value
from ..blocks.steps import is_gated
from ..blocks.syntax import EXTRA_NETWORK_RE, LORA_KINDS, NAMED_KEYS, LoraCall, parse_prompt, rewrite_for_builtin
from ..errors import PromptSyntaxError

__all__ = [
    "REFUSED_FIELD",
    "BlockWeightsInfotext",
    "RefusedInfotext",
    "Refusals",
    "RewriteProblem",
    "calls_from_extra_network_data",
    "calls_with_block_weights",
    "hires_batch",
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

    def of_prompt(self, prompt: str) -> list[tuple[str, str]]:
        """(tag as typed, reason) for each refused tag in `prompt`, in prompt order."""
        found: list[tuple[str, str]] = []
        for match in EXTRA_NETWORK_RE.finditer(prompt):
            tag = match.group(0)
            reason = self.by_text.get(tag)
            if reason is None:
                try:
                    calls = parse_prompt(tag)[1]
                except PromptSyntaxError:
                    continue
                reason = next((self.by_call[call] for call in calls if call in self.by_call), None)
            if reason is not None:
                found.append((tag, reason))
        return found


class BlockWeightsInfotext:
    """A `p.extra_generation_params` value: the WebUI calls it per image with `prompt_text` (the prompt as typed).
    It records the block weights and windows that were applied: refused tags are left out."""

    def __init__(self, refusals: Refusals | None = None) -> None:
        self.refusals = refusals or Refusals()

    def __call__(self, prompt_text: str = "", **_: Any) -> str | None:
        try:
            calls = parse_prompt(str(prompt_text))[1]
        except PromptSyntaxError:
            return None
        applied = self.refusals.applied(calls)
        return block_weights_value(applied) if applied else None

    def __repr__(self) -> str:
        return f"<{BLOCK_WEIGHTS_FIELD} per image>"


class RefusedInfotext:
    """A `p.extra_generation_params` value: per image, `tag: reason; …` for each refused tag of its prompt."""

    def __init__(self, refusals: Refusals) -> None:
        self.refusals = refusals

    def __call__(self, prompt_text: str = "", **_: Any) -> str | None:
        found = self.refusals.of_prompt(str(prompt_text))
        return "; ".join(f"{tag}: {reason.replace(';', ',')}" for tag, reason in found) or None

    def __repr__(self) -> str:
        return f"<{REFUSED_FIELD} per image>"


_ITEM_RE = re.compile(r"\s*(\w+)=(.*)")
_VALUE_KEYS = ("te", "unet", "blocks", "start", "stop")


def parse_block_weights_value(value: str) -> list[LoraCall]:
    """The calls a `Lora block weights` value describes (the inverse of `block_weights_value`).

    Raises PromptSyntaxError, naming the part, for anything `block_weights_value` cannot have written.
    """
    calls: list[LoraCall] = []
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
        if "blocks" in items:
            items["lbw"] = items.pop("blocks")
        items = {key: text.strip() for key, text in items.items()}
        tag = f"<lora:{name}:" + ":".join(f"{key}={text}" for key, text in items.items() if key in NAMED_KEYS) + ">"
        calls.extend(parse_prompt(tag)[1])
    return calls

