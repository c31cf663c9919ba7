"""The `<lora:…>` prompt syntax: A1111's numeric forms, LBW's named forms and block presets or vectors
(research/a1111.md §3 "Prompt parsing", research/lbw.md §3), and a rewrite the built-in Lora accepts."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from lib_lora.errors import PromptSyntaxError
from lib_lora.wording import echo, shorten

from .vectors import FLUX_LENGTH, MAX_VECTOR_VALUES

__all__ = [
    "LORA_KINDS",
    "NAMED_KEYS",
    "LoraCall",
    "find_tags",
    "format_call",
    "parse_prompt",
    "rewrite_for_builtin",
    "validate_name",
]

# modules/extra_networks.py: the same pattern, so tags are found exactly where A1111 finds them
EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS: frozenset[str] = frozenset({"lora", "lyco"})
NAMED_KEYS: tuple[str, ...] = ("te", "unet", "dyn", "lbw", "start", "stop")

_PRESET_RE = re.compile(r"[^\W\d][\w.\-]*")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_NOT_A_PATH = "LoRA names resolve only inside the LoRA folders, never as paths"
_MAX_BLOCK_POSITIONALS = 4  # te, unet, dyn, BLOCKS after the name


@dataclass(frozen=True)
class LoraCall:
    """One LoRA tag as understood: multipliers, block spec as written, and UNet step window.

    `start`/`stop` are a step number when int, a fraction of the sampling steps when float; they gate the UNet
    only (the text-encoder part is applied to the conditioning). `span` and `raw` locate the tag and do not take
    part in equality, so a call formatted and parsed again compares equal.
    """

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    blocks: str | None = None
    start: int | float | None = None
    stop: int | float | None = None
    span: tuple[int, int] = field(default=(0, 0), compare=False)
    raw: str = field(default="", compare=False)


def find_tags(prompt: str) -> Iterator[re.Match[str]]:
    """EXTRA_NETWORK_RE's matches in `prompt`, in linear time.

    No tag can end after the last `>`, so the search stops there; without that bound a prompt such as
    `<a:<a:<a:…` with no `>` costs a scan to its end from every `<` (quadratic).
    """
    return EXTRA_NETWORK_RE.finditer(prompt, 0, prompt.rfind(">") + 1)


def validate_name(name: str) -> None:
    """Raise PromptSyntaxError unless `name` can only resolve inside the LoRA folders (no path, no `..`)."""
    tag = f"<lora:{name}>"
    if not isinstance(name, str) or not name.strip():
        raise PromptSyntaxError("the LoRA name is empty", tag=tag)
    if "/" in name or "\\" in name:
        raise PromptSyntaxError(f"{echo(name)} has a path separator; {_NOT_A_PATH}", tag=tag)
    if ".." in name:
        raise PromptSyntaxError(f"{echo(name)} contains '..'; {_NOT_A_PATH}", tag=tag)
    if _DRIVE_RE.match(name) or ":" in name:
        raise PromptSyntaxError(f"{echo(name)} has a drive letter or ':'; {_NOT_A_PATH}", tag=tag)
    if "\x00" in name:
        raise PromptSyntaxError(f"{echo(name)} contains a NUL character", tag=tag)
    if "=" in name or ">" in name:
        raise PromptSyntaxError(f"{echo(name)} contains '=' or '>', which the tag syntax cannot carry", tag=tag)


def parse_prompt(prompt: str) -> tuple[str, list[LoraCall]]:
    """The prompt with every `<lora:…>`/`<lyco:…>` tag removed (as A1111 does) and the calls in order.

    Raises PromptSyntaxError, and nothing else, on the first malformed tag.
    """
    calls: list[LoraCall] = []
    pieces: list[str] = []
    last = 0
    for match in find_tags(prompt):
        if match.group(1) not in LORA_KINDS:
            continue
        calls.append(_parse_tag(match))
        pieces.append(prompt[last : match.start()])
        last = match.end()
    pieces.append(prompt[last:])
    return "".join(pieces), calls


def rewrite_for_builtin(prompt: str) -> tuple[str, list[LoraCall]]:
    """The prompt with each tag the built-in Lora would reject rewritten to `<lora:name:te:unet…:lbw=…>`.

    Tags the built-in already accepts are left byte-identical, so rewriting twice equals rewriting once.
    """
    calls: list[LoraCall] = []
    pieces: list[str] = []
    last = 0
    for match in find_tags(prompt):
        kind = match.group(1)
        if kind not in LORA_KINDS:
            continue
        call = _parse_tag(match)
        calls.append(call)
        pieces.append(prompt[last : match.start()])
        pieces.append(match.group(0) if _builtin_accepts(match.group(2)) else format_call(call, kind=kind))
        last = match.end()
    pieces.append(prompt[last:])
    return "".join(pieces), calls


def format_call(call: LoraCall, *, kind: str = "lora") -> str:
    """Canonical text of `call`, valid for the built-in Lora: `<lora:name:te:unet[:dyn][:lbw=…][:start=…][:stop=…]>`."""
    if kind not in LORA_KINDS:
        raise PromptSyntaxError(f"tag kind {kind!r} is not one of {sorted(LORA_KINDS)}")
    validate_name(call.name)
    items = [call.name, _format_float(call.te), _format_float(call.unet)]
    if call.dyn is not None:
        items.append(str(call.dyn))
    if call.blocks is not None:
        _check_blocks(call.blocks, f"<{kind}:{call.name}:…>")
        items.append(f"lbw={call.blocks}")
    for key, value in (("start", call.start), ("stop", call.stop)):
        if value is not None:
            items.append(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}")
    text = f"<{kind}:{':'.join(items)}>"
    match = EXTRA_NETWORK_RE.fullmatch(text)
    if match is None:
        raise PromptSyntaxError("the call cannot be written as a tag", tag=text)
    _parse_tag(match)  # same checks as a typed tag: finite numbers, step window, dyn
    return text


# --- internals ---------------------------------------------------------------------------------------------


def _split_items(items: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """A1111's ExtraNetworkParams: an item is named when split('=') gives exactly two parts."""
    positional: list[str] = []
    named: list[tuple[str, str]] = []
    for item in items:
        parts = item.split("=")
        if len(parts) == 2:
            named.append((parts[0], parts[1]))
        else:
            positional.append(item)
    return positional, named


def _builtin_accepts(args: str) -> bool:
    """Whether A1111's/Forge's built-in Lora reads these tag args without error and with no stray positional."""
    items = args.split(":")
    positional, named_pairs = _split_items(items)
    named = dict(named_pairs)
    if not positional or positional[0] != items[0] or len(positional) > 4:
        return False
    try:
        te = float(positional[1]) if len(positional) > 1 else 1.0
        te = float(named.get("te", te))
        unet = float(positional[2]) if len(positional) > 2 else te
        float(named.get("unet", unet))
        if len(positional) > 3:
            int(positional[3])
        if "dyn" in named:
            int(named["dyn"])
    except (ValueError, OverflowError):
        return False
    return True


def _parse_tag(match: re.Match[str]) -> LoraCall:
    """The call one matched tag writes; raises PromptSyntaxError on its first malformed item."""
    tag = match.group(0)
    items = match.group(2).split(":")
    name = _parse_name(items[0], tag)
    positional, named = _checked_items(items[1:], tag)
    te, unet, dyn, blocks = _read_positional(positional, tag)
    if "te" in named:
        te = _parse_float(named["te"], "te=", tag)
    if unet is None:
        unet = te
    if "unet" in named:
        unet = _parse_float(named["unet"], "unet=", tag)
    if "dyn" in named:
        parsed = _try_int(named["dyn"])
        if parsed is None:
            raise PromptSyntaxError(f"dyn= must be a whole number, got {echo(named['dyn'])}", tag=tag)
        dyn = _check_dyn(parsed, tag)
    if "lbw" in named:
        if blocks is not None:
            raise PromptSyntaxError("blocks are given both positionally and as lbw=", tag=tag)
        blocks = _check_blocks(named["lbw"], tag, label="lbw=")
    start = _parse_step(named["start"], "start=", tag) if "start" in named else None
    stop = _parse_step(named["stop"], "stop=", tag) if "stop" in named else None
    if start is not None and stop is not None and type(start) is type(stop) and start > stop:
        raise PromptSyntaxError(f"start={start} is after stop={stop}", tag=tag)
    return LoraCall(
        name=name, te=te, unet=unet, dyn=dyn, blocks=blocks, start=start, stop=stop,
        span=match.span(), raw=tag,
    )


def _parse_name(name: str, tag: str) -> str:
    """The tag's first item when it is a LoRA name that resolves only inside the LoRA folders."""
    if "=" in name:
        raise PromptSyntaxError(f"the first item must be the LoRA name, got {echo(name)}", tag=tag)
    try:
        validate_name(name)
    except PromptSyntaxError as exc:
        raise PromptSyntaxError(exc.reason, tag=tag) from None
    return name


def _checked_items(items: list[str], tag: str) -> tuple[list[str], dict[str, str]]:
    """The items after the name split into positional ones and known keys, each key given once."""
    positional, named_pairs = _split_items(items)
    for item in positional:
        if "=" in item:
            raise PromptSyntaxError(f"{echo(item)} has more than one '='", tag=tag)
    named: dict[str, str] = {}
    for key, value in named_pairs:
        if key not in NAMED_KEYS:
            raise PromptSyntaxError(f"unknown key {echo(key)}; known keys are {', '.join(NAMED_KEYS)}", tag=tag)
        if key in named:
            raise PromptSyntaxError(f"key {echo(key)} is given twice", tag=tag)
        named[key] = value
    if len(positional) > _MAX_BLOCK_POSITIONALS:
        raise PromptSyntaxError(
            f"{len(positional)} items after the name; at most te:unet:dyn:BLOCKS are allowed", tag=tag
        )
    return positional, named


def _read_positional(positional: list[str], tag: str) -> tuple[float, float | None, int | None, str | None]:
    """`te`, `unet` (None when not given), `dyn` and the block spec from `te:unet:dyn:BLOCKS`, where a block
    preset or vector may stand in for `unet` or `dyn` and must come last."""
    te = 1.0
    unet: float | None = None
    dyn: int | None = None
    blocks: str | None = None
    for index, item in enumerate(positional):
        if blocks is not None:
            raise PromptSyntaxError(f"{echo(item)} follows the block preset or vector, which must come last", tag=tag)
        if index == 0:
            te = _parse_float(item, "the text-encoder multiplier", tag)
        elif index == 1:
            number = _try_float(item)
            if number is not None:
                unet = _finite(number, item, "the UNet multiplier", tag)
            else:
                blocks = _check_blocks(item, tag)
        elif index == 2:
            dyn_value = _try_int(item)
            if dyn_value is not None:
                dyn = _check_dyn(dyn_value, tag)
            elif _try_float(item) is not None:
                raise PromptSyntaxError(f"dyn must be a whole number, got {echo(item)}", tag=tag)
            else:
                blocks = _check_blocks(item, tag)
        else:
            if dyn is None:
                raise PromptSyntaxError(f"{echo(item)} follows the block preset or vector, which must come last",
                                        tag=tag)
            blocks = _check_blocks(item, tag)
    return te, unet, dyn, blocks


def _try_float(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def _try_int(text: str) -> int | None:
    try:
        return int(text)
    except (ValueError, OverflowError):
        return None


def _finite(number: float, text: str, what: str, tag: str) -> float:
    if not math.isfinite(number):
        raise PromptSyntaxError(f"{what} must be a finite number, got {echo(text)}", tag=tag)
    return number


def _parse_float(text: str, what: str, tag: str) -> float:
    number = _try_float(text)
    if number is None:
        hint = f" (write lbw={shorten(text.strip())} for a block preset)" if _PRESET_RE.fullmatch(text.strip()) else ""
        raise PromptSyntaxError(f"{what} must be a number, got {echo(text)}{hint}", tag=tag)
    return _finite(number, text, what, tag)


def _check_dyn(value: int, tag: str) -> int:
    if value < 0:
        raise PromptSyntaxError(f"dyn must not be negative, got {value}", tag=tag)
    return value


def _check_blocks(text: str, tag: str, *, label: str = "block spec") -> str:
    """A preset name token or a comma list of finite numbers; returns it stripped. Lengths are checked later."""
    spec = text.strip()
    if not spec:
        raise PromptSyntaxError(f"{label} is empty", tag=tag)
    if _PRESET_RE.fullmatch(spec):
        return spec
    if "," not in spec:
        raise PromptSyntaxError(f"{label} {echo(text)} is neither a number, a preset name nor a vector", tag=tag)
    count = spec.count(",") + 1
    if count > MAX_VECTOR_VALUES:
        raise PromptSyntaxError(f"{label} vector has {count} values; a block-weight vector has at most "
                                f"{FLUX_LENGTH} (17 or 26 for SD1/SD2, 12 or 20 for SDXL)", tag=tag)
    for element in spec.split(","):
        number = _try_float(element)
        if number is None or not math.isfinite(number):
            raise PromptSyntaxError(f"{label} vector {echo(text)} has a non-number {echo(element)}", tag=tag)
    return spec


def _parse_step(text: str, what: str, tag: str) -> int | float:
    """An int is a sampling step; a float is a fraction of the steps within [0, 1]."""
    whole = _try_int(text)
    if whole is not None:
        if whole < 0:
            raise PromptSyntaxError(f"{what} must not be negative, got {echo(text)}", tag=tag)
        return whole
    number = _try_float(text)
    if number is None or not math.isfinite(number):
        raise PromptSyntaxError(f"{what} must be a step number or a fraction, got {echo(text)}", tag=tag)
    if not 0.0 <= number <= 1.0:
        raise PromptSyntaxError(f"{what} as a fraction of the steps must be within 0..1, got {echo(text)}", tag=tag)
    return number


def _format_float(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
