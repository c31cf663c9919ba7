"""The `<lora:…>` syntax: A1111's numeric meanings, LBW's named forms, presets and vectors, the rewrite the
built-in Lora accepts (research/a1111.md §3, research/lbw.md §3), and properties over random prompts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.blocks.syntax import LoraCall, format_call, parse_prompt, rewrite_for_builtin, validate_name
from lib_lora.errors import LoraStudioError, PromptSyntaxError

pytestmark = pytest.mark.hostcompat

VEC17 = "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"

# tag → (name, te, unet, dyn, blocks, start, stop)
FORMS = [
    ("<lora:x>", ("x", 1.0, 1.0, None, None, None, None)),
    ("<lora:x:0.5>", ("x", 0.5, 0.5, None, None, None, None)),
    ("<lora:x:0.5:0.8>", ("x", 0.5, 0.8, None, None, None, None)),
    ("<lora:x:0.5:0.8:16>", ("x", 0.5, 0.8, 16, None, None, None)),
    ("<lora:x:0.8:NCNF>", ("x", 0.8, 0.8, None, "NCNF", None, None)),
    ("<lora:x:0.5:0.8:NCNF>", ("x", 0.5, 0.8, None, "NCNF", None, None)),
    ("<lora:x:0.5:0.8:8:MIDD>", ("x", 0.5, 0.8, 8, "MIDD", None, None)),
    (f"<lora:x:1:{VEC17}>", ("x", 1.0, 1.0, None, VEC17, None, None)),
    (f"<lora:x:1:0.5:{VEC17}>", ("x", 1.0, 0.5, None, VEC17, None, None)),
    ("<lora:x:0.8:lbw=NCNF>", ("x", 0.8, 0.8, None, "NCNF", None, None)),
    ("<lora:x:1:0.6:lbw=MIDD:stop=12>", ("x", 1.0, 0.6, None, "MIDD", None, 12)),
    ("<lora:x:lbw=ALL0.5:start=3:stop=20>", ("x", 1.0, 1.0, None, "ALL0.5", 3, 20)),
    ("<lora:x:start=0.25:stop=0.75>", ("x", 1.0, 1.0, None, None, 0.25, 0.75)),
    ("<lora:x:te=0.3>", ("x", 0.3, 0.3, None, None, None, None)),  # unet defaults to te, named te included
    ("<lora:x:0.5:te=0.3>", ("x", 0.3, 0.3, None, None, None, None)),
    ("<lora:x:0.5:0.8:te=0.1:unet=0.2>", ("x", 0.1, 0.2, None, None, None, None)),  # named wins
    ("<lora:x:unet=0.2>", ("x", 1.0, 0.2, None, None, None, None)),
    ("<lora:x:1:dyn=4>", ("x", 1.0, 1.0, 4, None, None, None)),
    ("<lora:x:lbw=1, 0.5 ,0>", ("x", 1.0, 1.0, None, "1, 0.5 ,0", None, None)),
    ("<lora:x:lbw=NCNF:0.7>", ("x", 0.7, 0.7, None, "NCNF", None, None)),  # named items may come anywhere
    ("<lyco:x:0.7:IND>", ("x", 0.7, 0.7, None, "IND", None, None)),
    ("<lora:my style v1.5-final:0.7>", ("my style v1.5-final", 0.7, 0.7, None, None, None, None)),
    ("<lora:スタイル_ü:1.25>", ("スタイル_ü", 1.25, 1.25, None, None, None, None)),
    ("<lora:x:-1>", ("x", -1.0, -1.0, None, None, None, None)),
]


def fields(call: LoraCall) -> tuple[object, ...]:
    return (call.name, call.te, call.unet, call.dyn, call.blocks, call.start, call.stop)


@pytest.mark.parametrize(("tag", "expected"), FORMS, ids=[tag for tag, _ in FORMS])
def test_forms(tag: str, expected: tuple[object, ...]) -> None:
    rest, calls = parse_prompt(f"a photo, {tag}, best")
    assert rest == "a photo, , best"  # A1111 replaces the tag with nothing
    assert [fields(call) for call in calls] == [expected]
    assert calls[0].raw == tag
    assert calls[0].span == (9, 9 + len(tag))


def test_a1111_numeric_meanings() -> None:
    (one,) = parse_prompt("<lora:x:0.5>")[1]
    assert (one.te, one.unet) == (0.5, 0.5)
    (two,) = parse_prompt("<lora:x:0.5:0.8>")[1]
    assert (two.te, two.unet) == (0.5, 0.8)
    (named,) = parse_prompt("<lora:x:0.5:0.8:unet=0.1:te=0.2>")[1]
    assert (named.te, named.unet) == (0.2, 0.1)


def test_two_loras_keep_their_own_presets() -> None:
    prompt = f"<lora:a:0.8:NCNF> girl <lora:b:1:0.5:lbw={VEC17}:stop=10> <lora:c:lbw=OUTD> <lyco:d:1:1:MIDD>"
    rest, calls = parse_prompt(prompt)
    assert rest == " girl   "
    assert [(c.name, c.blocks, c.stop) for c in calls] == [
        ("a", "NCNF", None), ("b", VEC17, 10), ("c", "OUTD", None), ("d", "MIDD", None),
    ]
    assert [prompt[c.span[0] : c.span[1]] for c in calls] == [c.raw for c in calls]


def test_other_extra_networks_are_left_alone() -> None:
    prompt = "<hypernet:h:0.5> <LORA:x:1> <lora:y> <xlora:z:1>"
    rest, calls = parse_prompt(prompt)
    assert rest == "<hypernet:h:0.5> <LORA:x:1>  <xlora:z:1>"
    assert [c.name for c in calls] == ["y"]
    assert parse_prompt("no tags <lora:> <lora at all")[1] == []


@pytest.mark.parametrize(
    ("tag", "problem"),
    [
        ("<lora::1>", "empty"),
        ("<lora: :1>", "empty"),
        ("<lora:x:abc,1>", "must be a number"),
        ("<lora:x:NCNF>", "lbw=NCNF"),
        ("<lora:x:1:lbw=>", "empty"),
        ("<lora:x:1:lbw=1,0,zz>", "non-number"),
        ("<lora:x:1:lbw=1,,0>", "non-number"),
        ("<lora:x:1:1,0,z>", "non-number"),
        ("<lora:x:1:0.5:1.5>", "whole number"),
        ("<lora:x:start=10:stop=5>", "after"),
        ("<lora:x:start=-1>", "negative"),
        ("<lora:x:stop=-0.5>", "0..1"),
        ("<lora:x:start=1.5>", "0..1"),
        ("<lora:x:start=soon>", "step"),
        ("<lora:x:te=1:te=2>", "twice"),
        ("<lora:x:lbw=A:lbw=B>", "twice"),
        ("<lora:x:NCNF:lbw=MIDD>", "number"),
        ("<lora:x:1:MIDD:lbw=NCNF>", "both"),
        ("<lora:x:1:1:1:NCNF:2>", "at most"),
        ("<lora:x:1:NCNF:1>", "last"),
        ("<lora:x:1:te=zz>", "number"),
        ("<lora:x:1:dyn=1.5>", "whole"),
        ("<lora:x:1:1:-4>", "negative"),
        ("<lora:x:1:w=NCNF>", "unknown key"),
        ("<lora:x:1:a=b=c>", "more than one"),
        ("<lora:x:nan>", "finite"),
        ("<lora:x:1:inf>", "finite"),
        ("<lora:te=1:x>", "first item"),
        ("<lora:x:>", "number"),
    ],
)
def test_malformed_tags_raise(tag: str, problem: str) -> None:
    with pytest.raises(PromptSyntaxError) as info:
        parse_prompt(f"before {tag} after")
    assert tag in str(info.value)
    assert problem in str(info.value)
    with pytest.raises(PromptSyntaxError):
        rewrite_for_builtin(tag)


@pytest.mark.parametrize("name", ["../x", "..", "a/b", "a\\b", "/abs", "\\\\server\\share", "C:x", "x\x00", ""])
def test_path_like_names_are_refused(name: str) -> None:
    with pytest.raises(PromptSyntaxError):
        validate_name(name)


@pytest.mark.parametrize("tag", ["<lora:../x:1>", "<lora:a/b:1>", "<lora:..\\x>", "<lora:/etc/x:1>"])
def test_path_like_tags_are_refused(tag: str) -> None:
    with pytest.raises(PromptSyntaxError, match="LoRA folders"):
        parse_prompt(tag)


# --- the built-in's view of a tag, as modules/extra_networks.py + ExtraNetworkLora.activate read it -------------


def builtin_reads(args: str) -> tuple[str, float, float, int | None]:
    items = args.split(":")
    positional = [item for item in items if len(item.split("=")) != 2]
    named = dict(item.split("=") for item in items if len(item.split("=")) == 2)
    te = float(positional[1]) if len(positional) > 1 else 1.0
    te = float(named.get("te", te))
    unet = float(positional[2]) if len(positional) > 2 else te
    unet = float(named.get("unet", unet))
    dyn = int(positional[3]) if len(positional) > 3 else None
    dyn = int(named["dyn"]) if "dyn" in named else dyn
    return positional[0], te, unet, dyn


def builtin_tags(prompt: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"<(\w+):([^>]+)>", prompt) if m.group(1) in ("lora", "lyco")]


def test_rewrite_leaves_builtin_valid_tags_identical() -> None:
    prompt = "<lora:x> <lora:x:0.5> <lora:x:0.5:0.8> <lora:x: 0.5 :1:8> <lora:x:0.8:lbw=NCNF:stop=5> <lyco:y:1>"
    assert rewrite_for_builtin(prompt)[0] == prompt


@pytest.mark.parametrize(
    "tag",
    ["<lora:x:0.8:NCNF>", "<lora:x:0.5:0.8:NCNF>", f"<lora:x:1:{VEC17}>", "<lora:x:1:1:4:OUTD>", "<lyco:y:0.7:IND>"],
)
def test_rewrite_makes_every_item_numeric_or_named(tag: str) -> None:
    if "OUTD" not in tag:  # the built-in ignores a 5th positional item, but it is ours, so it is still rewritten
        with pytest.raises(ValueError):
            builtin_reads(builtin_tags(tag)[0])  # what the built-in does to the raw tag
    rewritten, calls = rewrite_for_builtin(f"a {tag} b")
    (args,) = builtin_tags(rewritten)
    name, *rest = args.split(":")
    for item in rest:
        assert len(item.split("=")) == 2 or float(item) is not None
    assert builtin_reads(args) == (calls[0].name, calls[0].te, calls[0].unet, calls[0].dyn)
    assert parse_prompt(rewritten)[1] == calls
    assert rewritten.startswith("a <") and rewritten.endswith("> b")
    assert rewritten.split(":")[0].endswith(tag.split(":")[0])  # lora stays lora, lyco stays lyco


def test_rewrite_of_ncnf() -> None:
    assert rewrite_for_builtin("<lora:x:0.8:NCNF>")[0] == "<lora:x:0.8:0.8:lbw=NCNF>"


def test_format_call_is_canonical() -> None:
    call = LoraCall(name="x y", te=0.5, unet=1.0, dyn=8, blocks="NCNF", start=2, stop=0.5)
    assert format_call(call) == "<lora:x y:0.5:1:8:lbw=NCNF:start=2:stop=0.5>"
    assert format_call(call, kind="lyco").startswith("<lyco:")
    with pytest.raises(PromptSyntaxError):
        format_call(LoraCall(name="../x"))
    with pytest.raises(PromptSyntaxError):
        format_call(LoraCall(name="x", te=float("nan")))
    with pytest.raises(PromptSyntaxError):
        format_call(LoraCall(name="x", start=5, stop=1))


# --- properties ------------------------------------------------------------------------------------------------

FRAGMENTS = [
    "<", ">", ":", "=", ",", " ", "lora", "lyco", "<lora:", "<lyco:", "x", "my lora", "NCNF", "lbw", "lbw=",
    "te=", "unet=", "dyn=", "start=", "stop=", "0", "1", "0.5", "-2", "1e3", "nan", "inf", "1,0,1", "..", "/",
    "\\", "C:", "é", "スタ", "\n", "_", "9" * 30, "1_0", "١", "\x00",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=24).map("".join))
def test_parse_raises_only_prompt_syntax_error(prompt: str) -> None:
    try:
        rest, calls = parse_prompt(prompt)
    except PromptSyntaxError as exc:
        assert isinstance(exc, LoraStudioError)
        return
    assert len(rest) <= len(prompt)
    for call in calls:
        assert prompt[call.span[0] : call.span[1]] == call.raw


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=24).map("".join))
def test_rewrite_is_idempotent_and_builtin_valid(prompt: str) -> None:
    try:
        once, calls = rewrite_for_builtin(prompt)
    except PromptSyntaxError:
        return
    twice, calls_again = rewrite_for_builtin(once)
    assert twice == once
    assert calls_again == calls
    assert [c for c in parse_prompt(once)[1]] == calls
    for args in builtin_tags(once):
        builtin_reads(args)  # never raises


NAME = st.text(
    alphabet=st.characters(blacklist_characters=":<>=/\\.\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda s: s.strip() and not re.match(r"[A-Za-z]:", s))
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
BLOCKS = st.sampled_from(["NCNF", "ALL", "MIDD", "ALL0.5", "OUT-D_2"]) | st.lists(
    FINITE, min_size=2, max_size=26
).map(lambda xs: ",".join(repr(x) for x in xs))
STEPS = st.none() | st.integers(0, 10_000) | st.floats(0.0, 1.0)


@st.composite
def calls(draw: st.DrawFn) -> LoraCall:
    start, stop = draw(STEPS), draw(STEPS)
    if start is not None and stop is not None and type(start) is type(stop) and start > stop:
        start, stop = stop, start
    return LoraCall(
        name=draw(NAME), te=draw(FINITE), unet=draw(FINITE), dyn=draw(st.none() | st.integers(0, 4096)),
        blocks=draw(st.none() | BLOCKS), start=start, stop=stop,
    )


@settings(max_examples=300, deadline=None)
@given(calls())
def test_format_parse_round_trip(call: LoraCall) -> None:
    text = format_call(call)
    rest, (parsed,) = parse_prompt(text)
    assert rest == ""
    assert parsed == call
    assert (type(parsed.start), type(parsed.stop)) == (type(call.start), type(call.stop))
    assert rewrite_for_builtin(text)[0] == text
