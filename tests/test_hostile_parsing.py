"""Hostile text for the parsers: every way a block-weight vector, a prompt tag or a preset file reaches us is
refused fast with a short message when it is huge, and parse time grows linearly with the input.

The place for the next hostile-parsing case: a row in HUGE_INPUTS (entry point, input) or in LINEAR_PARSERS.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lib_lora.blocks.presets import FLUX_LENGTH, MAX_VECTOR_VALUES, PresetBook, parse_vector
from lib_lora.blocks.syntax import LoraCall, format_call, parse_prompt, rewrite_for_builtin
from lib_lora.blocks.userpresets import with_preset_line
from lib_lora.errors import LoraStudioError
from lib_lora.train.config import TrainConfig
from lib_lora.wording import ECHO_LIMIT, echo, shorten

pytestmark = pytest.mark.hostcompat

HUGE = 300_000
VECTOR = ",".join(["1"] * HUGE)  # the hostile case: 300k values took 31-49 s and echoed 600 kB
NUMBER = "1" * HUGE
WORD = "A" * HUGE
MAX_MESSAGE = 1000  # characters: what a one-line error may say, however long the input was
FAST = 1.0  # seconds for any refusal below, on a loaded 2-core machine

HUGE_INPUTS: list[tuple[str, Callable[[], object]]] = [
    ("preset book: vector", lambda: PresetBook.builtin().resolve(VECTOR, "sd1")),
    ("preset book: SDXL vector", lambda: PresetBook.builtin().resolve(VECTOR, "sdxl")),
    ("preset book: unknown name", lambda: PresetBook.builtin().resolve(WORD, "sd1")),
    ("parse_vector", lambda: parse_vector(VECTOR, where="block weights")),
    ("parse_vector: one huge value", lambda: parse_vector(f"{WORD},1", where="block weights")),
    ("prompt: positional vector", lambda: parse_prompt(f"<lora:x:1:{VECTOR}>")),
    ("prompt: vector after dyn", lambda: parse_prompt(f"<lora:x:1:1:4:{VECTOR}>")),
    ("prompt: lbw=", lambda: parse_prompt(f"a cat <lora:x:lbw={VECTOR}> on a mat")),
    ("prompt: vector with a non-number", lambda: parse_prompt(f"<lora:x:1:{VECTOR[:1000]},{WORD}>")),
    ("prompt: huge multiplier", lambda: parse_prompt(f"<lora:x:{NUMBER}>")),
    ("prompt: huge name with a path", lambda: parse_prompt(f"<lora:{WORD}/x>")),
    ("prompt: huge unknown key", lambda: parse_prompt(f"<lora:x:{WORD}=1>")),
    ("prompt: huge start=", lambda: parse_prompt(f"<lora:x:start={NUMBER}.5>")),
    ("rewrite for the built-in Lora", lambda: rewrite_for_builtin(f"<lora:x:1:{VECTOR}>")),
    ("format_call", lambda: format_call(LoraCall(name="x", blocks=VECTOR))),
    ("preset file line", lambda: PresetBook.parse_preset_text(f"BIG:{VECTOR}\n")),
    ("preset file: huge name", lambda: PresetBook.parse_preset_text(f"{WORD}:{','.join(['1'] * 17)}\n")),
    ("user preset save", lambda: with_preset_line("", "BIG", [1.0] * HUGE)),
    ("network_args block_dims", lambda: TrainConfig.from_dict({"network_args": [f"block_dims={VECTOR}"]})),
    ("network_args down_lr_weight", lambda: TrainConfig.from_dict({"network_args": [f"down_lr_weight={VECTOR}"]})),
    ("network_args train_blocks", lambda: TrainConfig.from_dict({"network_args": [f"train_blocks={VECTOR}"]})),
    ("training option as text", lambda: TrainConfig.from_dict({"resolution": VECTOR})),
    ("training text option", lambda: TrainConfig.from_dict({"training_comment": WORD})),
]


@pytest.mark.parametrize(("what", "call"), HUGE_INPUTS, ids=[what for what, _ in HUGE_INPUTS])
def test_huge_input_is_refused_fast_with_a_short_message(what: str, call: Callable[[], object]) -> None:
    started = time.perf_counter()
    with pytest.raises(LoraStudioError) as caught:
        call()
    elapsed = time.perf_counter() - started
    message = str(caught.value)
    assert elapsed < FAST, f"{what}: {elapsed:.2f} s"
    assert len(message) < MAX_MESSAGE, f"{what}: a {len(message)}-character message: {message[:300]}…"


@pytest.mark.parametrize("count", [MAX_VECTOR_VALUES + 1, 1000, HUGE])
def test_a_vector_longer_than_any_format_says_its_count_and_the_longest_format(count: int) -> None:
    text = ",".join(["0.5"] * count)
    for call in (lambda: parse_vector(text), lambda: parse_prompt(f"<lora:x:lbw={text}>")):
        with pytest.raises(LoraStudioError, match=f"{count} values.*at most {FLUX_LENGTH}"):
            call()


def test_a_vector_a_few_values_too_long_is_still_reported_as_a_wrong_length() -> None:
    text = ",".join(["1"] * (FLUX_LENGTH + 1))
    with pytest.raises(LoraStudioError, match=f"expected 17 or 26 values for SD1.*got {FLUX_LENGTH + 1}"):
        PresetBook.builtin().resolve(text, "sd1")


# --- linear time ------------------------------------------------------------------------------------------------


def _tags(count: int) -> str:
    return " ".join(f"<lora:n{index}:0.5:lbw=1,0,0.5,1,0,0,0,0,1,1,1,1,1,1,1,1,1>" for index in range(count))


LINEAR_PARSERS: list[tuple[str, Callable[[int], str], Callable[[str], object]]] = [
    ("prompt with many tags", _tags, parse_prompt),
    ("prompt of unclosed tags", lambda n: "<a:" * n, parse_prompt),  # A1111's tag regex alone is quadratic here
    ("prompt of unclosed tags, rewritten", lambda n: "<lora:x:" * n, rewrite_for_builtin),
    ("one long LoRA name", lambda n: f"<lora:{'a' * (60 * n)}>", parse_prompt),
    ("preset file of many lines", lambda n: "".join(f"P{i}:{','.join(['1'] * 17)}\n" for i in range(n)),
     PresetBook.parse_preset_text),
    ("refusing a huge vector", lambda n: f"<lora:x:lbw={','.join(['1'] * (40 * n))}>", parse_prompt),
]


def _seconds(parse: Callable[[str], object], text: str) -> float:
    """The best of five timings of `parse(text)` (a refusal counts as a parse): the best is what a busy machine
    disturbs least."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        try:
            parse(text)
        except LoraStudioError:
            pass
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize(("what", "make", "parse"), LINEAR_PARSERS, ids=[what for what, _, _ in LINEAR_PARSERS])
def test_parse_time_grows_linearly(what: str, make: Callable[[int], str], parse: Callable[[str], object]) -> None:
    """16 times the input takes at most about 16 times as long (a quadratic parser would take 256 times); the bound,
    6 × 16, leaves room for a loaded machine and still refuses quadratic growth."""
    small, large = make(250), make(4000)
    ratio_of_sizes = len(large) / len(small)
    small_time = max(_seconds(parse, small), 2e-4)  # below this the timer and the interpreter dominate
    large_time = _seconds(parse, large)
    assert large_time < 6 * ratio_of_sizes * small_time, (
        f"{what}: {len(small)} characters took {small_time:.4f} s, {len(large)} took {large_time:.4f} s")


# --- echoing what a user typed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("1,1", "'1,1'"),
    ("", "''"),
    (3, "3"),
    (1.5, "1.5"),
    (None, "None"),
    (10**5000, "a number too long to show"),
], ids=["short text", "empty text", "int", "float", "None", "huge int"])
def test_echo_keeps_short_values_as_repr(value: object, expected: str) -> None:
    assert echo(value) == expected


@pytest.mark.parametrize("value", [VECTOR, WORD, list(range(10_000)), {"k": NUMBER}],
                         ids=["vector", "word", "list", "dict"])
def test_echo_shortens_long_values_and_says_their_length(value: object) -> None:
    shown = echo(value)
    length = len(value) if isinstance(value, str) else len(repr(value))
    assert len(shown) < ECHO_LIMIT + 40 and f"({length} characters)" in shown and "…" in shown
    text = value if isinstance(value, str) else repr(value)
    head, _, tail = shorten(text).partition("…")
    assert text.startswith(head) and text.endswith(tail) and len(shorten(text)) == ECHO_LIMIT
