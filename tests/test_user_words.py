"""Every string a user can read is in user words: no issue numbers, note file names, note sections or note titles.

The sources walked: the studio UI as built (labels, info, values, placeholders, choices of every component, in
gradio 3.41 and 4.x: this file is `hostcompat`), `--help` of every command and subcommand, the recipe cards and
the block preset sources, the in-browser scripts, and every string literal of `lib_lora/` and `scripts/` that is
not a docstring (messages, infotext, metadata and card text are built from those). Comments and docstrings are
for developers and are not checked.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

INTERNAL = re.compile(
    r"\bissues?\s*#\d+"  # an issue reference
    r"|(?<![\w&#/])#\d{1,4}\b(?![\w-])"  # a bare issue number (#6), not a colour or an anchor
    r"|\bseed\s+notes?\b|\bseeds?\s+\d{3}\b"  # the practitioners' notes by their internal name
    r"|§"  # a note section
    r"|\b[\w.-]+\.md\b"  # a note or design file (DESIGN.md, lbw.md, RESULTS.md)
    r"|\bshared/|\bresearch/|\bseeds/"  # the project's note folders
    r"|[\u3040-\u30ff\u4e00-\u9fff]+",  # Japanese: the notes' titles
    re.IGNORECASE,
)
"""What must not reach a user: the project's internal references."""

ALLOWED_LITERALS = {
    ("lib_lora/blocks/grid_image.py", "/System/Library/Fonts/ヒラギノ角ゴシック W3.ttc"),  # a macOS font file
}
"""(file, literal) pairs that match INTERNAL but are never shown: file system paths the code opens."""


def offending(text: str) -> list[str]:
    """The internal references in `text`."""
    return [match.group(0) for match in INTERNAL.finditer(text)]


@pytest.mark.parametrize(("text", "found"), [
    ("Train a LoRA in-process (issue #6): no second copy", ["issue #6"]),
    ("fixed in #14", ["#14"]),
    ("seed note 001 § キャラLoRAの最適解(SD1.X)", ["seed note", "§", "キャラ", "の最適解"]),
    ("LoRA Studio (DESIGN.md)", ["DESIGN.md"]),
    ("see shared/research/lbw.md", ["shared/", "research/", "lbw.md"]),
    ("seed 002 (CharFramework)", ["seed 002"]),
    ("a practitioner's recipe for character LoRAs on SD1", []),
    ("colour #2563eb, #fff and #333333; prompt #1girl; 1girl, #5-star", []),
    ("the seeds 0 and 1; 3 seeds", []),
    ("`<lora:name:0.8:NCNF>` works in prompts", []),
])
def test_the_check_finds_internal_references(text, found):
    assert offending(text) == found


# --- the sources --------------------------------------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    """Every string inside `value` (nested lists, tuples and dicts)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def ui_strings(standalone: bool) -> Iterator[tuple[str, str]]:
    """(where, text) of every string prop of every component of the studio as built."""
    from lib_lora.ui import StudioContext, build_studio

    def untouched() -> Any:
        raise AssertionError("a folder was read while building the UI")

    context = StudioContext(host_provider=lambda: None, lora_dirs=untouched, trained_dir=untouched,
                            data_roots=untouched, tagger_dir=untouched, work_dir=untouched, standalone=standalone)
    blocks = build_studio(context)
    skipped = {"elem_id", "elem_classes", "root_url", "proxy_url", "name"}
    for component in blocks.config["components"]:
        props = component.get("props", {})
        where = props.get("elem_id") or props.get("label") or component.get("type", "?")
        for key, value in props.items():
            if key not in skipped:
                for text in _strings(value):
                    yield f"{where}.{key}", text
    yield "page title", str(blocks.config.get("title") or "")


@pytest.mark.hostcompat
@pytest.mark.parametrize("standalone", [False, True], ids=["webui", "standalone"])
def test_the_ui_shows_no_internal_reference(standalone):
    strings = list(ui_strings(standalone))
    assert len(strings) > 200  # labels, help and values of every tab were collected
    found = {f"{where}: {text[:120]!r}": offending(text) for where, text in strings if offending(text)}
    assert found == {}


def _parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_command_help_shows_no_internal_reference():
    from lib_lora.cli.main import build_parser

    helps = {name: parser.format_help() for name, parser in _parsers(build_parser(), "lib_lora")}
    assert len(helps) > 10 and {"lib_lora train", "lib_lora serve"} <= set(helps)
    assert {name: offending(text) for name, text in helps.items() if offending(text)} == {}


def test_recipe_cards_and_preset_sources_show_no_internal_reference():
    from lib_lora.blocks.presets import PresetBook
    from lib_lora.train.recipes import RECIPES
    from lib_lora.ui.train.recipes import recipe_markdown

    texts = {f"recipe {name}": "\n".join([recipe.title, recipe.description, recipe_markdown(recipe.title)])
             for name, recipe in RECIPES.items()}
    book = PresetBook.builtin()
    texts |= {f"preset {name}": f"{name} ({book.preset(name).source})" for name in book.names()}
    assert len(texts) > 10
    assert {where: offending(text) for where, text in texts.items() if offending(text)} == {}


def test_the_browser_scripts_show_no_internal_reference():
    comments = re.compile(r"/\*.*?\*/|(?<![:\"'])//[^\n]*", re.DOTALL)
    found = {}
    for path in sorted((ROOT / "javascript").glob("*.js")):
        code = comments.sub("", path.read_text(encoding="utf-8"))
        if offending(code):
            found[path.name] = offending(code)
    assert found == {}


def literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of the string literals of a Python file that are not docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for index, statement in enumerate(body):  # a module/class/function docstring, or one after an assignment
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
                    and isinstance(statement.value.value, str) \
                    and (index == 0 or isinstance(body[index - 1], (ast.Assign, ast.AnnAssign))):
                docstrings.add(id(statement.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_messages_and_texts_in_the_code_show_no_internal_reference():
    files = sorted([*(ROOT / "lib_lora").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])
    assert len(files) > 50
    found = {}
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        for line, text in literals(path):
            if offending(text) and (relative, text) not in ALLOWED_LITERALS:
                found[f"{relative}:{line}: {text[:120]!r}"] = offending(text)
    assert found == {}
