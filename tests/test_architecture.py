"""The import rules docs/architecture.md states, checked on the source (ast; lazy, type-only and string imports too).

- Floors: a unit of lib_lora (a folder or a top-level module) imports only units on floors below its own.
- No circle between sibling folders at any depth (e.g. networks/loaders and networks/tools).
- Only the WebUI glue reaches the WebUI's own modules, by import or by a `sys.modules` look-up.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib_lora"

# Bottom to top; docs/architecture.md draws the same table. A unit may import any unit on a lower floor.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("wording",),
    ("errors",),
    ("file_names", "jobs", "arch"),
    ("atomic", "backups", "unet_blocks"),
    ("pnginfo", "tiny"),
    ("hosts",),
    ("networks",),
    ("blocks", "dataset"),
    ("train",),
    ("packages",),
    ("ui",),
    ("webui", "demo"),
    ("cli",),
    ("__main__", "__init__"),
)
FLOOR_OF = {unit: level for level, units in enumerate(FLOORS) for unit in units}

# The WebUI's own top-level modules (A1111 and Forge Neo), and the files allowed to reach them.
WEBUI_ROOTS = frozenset({"modules", "modules_forge", "backend", "networks", "lora", "extra_networks",
                         "extensions", "extensions_builtin", "launch", "webui"})
WEBUI_GLUE = ("lib_lora/hosts/a1111*.py", "lib_lora/hosts/forge*.py", "lib_lora/hosts/webui_*.py",
              "lib_lora/webui/**/*.py", "scripts/*.py")


@dataclass(frozen=True)
class Reference:
    """One module named by a source file: by an import (at any depth), `import_module("…")` or `sys.modules`."""

    source: str
    line: int
    target: str


def _package_of(path: Path) -> list[str]:
    """The package a relative import in `path` starts from (an `__init__.py`'s own folder, else its parent)."""
    return list(path.relative_to(ROOT).with_suffix("").parts)[:-1]


def references(path: Path, text: str | None = None) -> Iterator[Reference]:
    """Every module `path` names, absolute, with lazy and `TYPE_CHECKING` imports and string look-ups included."""
    tree = ast.parse(path.read_text() if text is None else text)
    package = _package_of(path)
    source = str(path.relative_to(ROOT))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Reference(source, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            base = base + (node.module.split(".") if node.module else [])
            yield Reference(source, node.lineno, ".".join(base))
            for alias in node.names:
                yield Reference(source, node.lineno, ".".join(base + [alias.name]))
        elif (name := _module_named_by(node)) is not None:
            yield Reference(source, node.lineno, name)


def _module_named_by(node: ast.AST) -> str | None:
    """The string in `sys.modules[...]`, `sys.modules.get(...)` or `import_module(...)`, else None."""
    key: ast.expr | None = None
    if isinstance(node, ast.Subscript) and _is_sys_modules(node.value):
        key = node.slice
    elif isinstance(node, ast.Call) and node.args:
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "get" and _is_sys_modules(func.value)) or \
                (isinstance(func, ast.Name) and func.id == "import_module") or \
                (isinstance(func, ast.Attribute) and func.attr == "import_module"):
            key = node.args[0]
    return key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None


def _is_sys_modules(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "modules" and isinstance(node.value, ast.Name) \
        and node.value.id == "sys"


def unit_of(module: str) -> str | None:
    """The floor unit of a lib_lora module name (`lib_lora.train.loop` → train), None outside lib_lora."""
    parts = module.split(".")
    if parts[0] != "lib_lora":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(sources: dict[Path, str] | None = None) -> list[str]:
    """Each reference from a unit to one on its own floor or above, as 'file:line unit -> unit'."""
    found = []
    for path, text in (sources or _library_sources()).items():
        own = unit_of(".".join(_module_parts(path)))
        for ref in references(path, text):
            other = unit_of(ref.target)
            if other is None or other == own:
                continue
            finding = f"{ref.source}:{ref.line} {own} -> {other}"
            if FLOOR_OF[other] >= FLOOR_OF[own] and finding not in found:
                found.append(finding)
    return found


def sibling_circles(sources: dict[Path, str] | None = None) -> list[str]:
    """Pairs of sibling folders (same parent) that reach each other through imports."""
    edges: dict[str, set[str]] = {}
    for path, text in (sources or _library_sources()).items():
        package = _package_of(path)
        for ref in references(path, text):
            target = ref.target.split(".")
            common = 0
            while common < min(len(package), len(target)) and package[common] == target[common]:
                common += 1
            if common < len(package) and common < len(target) and (ROOT.joinpath(*target[: common + 1])).is_dir():
                edges.setdefault(".".join(package[: common + 1]), set()).add(".".join(target[: common + 1]))
    circles = []
    for start, targets in sorted(edges.items()):
        for target in sorted(targets):
            if start in _reachable(edges, target):
                circles.append(f"{start} -> {target} -> … -> {start}")
    return circles


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for following in edges.get(stack.pop(), ()):
            if following not in seen:
                seen.add(following)
                stack.append(following)
    return seen


def webui_reaches(paths: list[Path] | None = None, texts: dict[Path, str] | None = None) -> list[str]:
    """References to the WebUI's own modules from files outside the WebUI glue."""
    glue = {p for pattern in WEBUI_GLUE for p in ROOT.glob(pattern)}
    found = []
    for path in paths if paths is not None else [*PACKAGE.rglob("*.py"), *ROOT.glob("scripts/*.py")]:
        if path in glue:
            continue
        for ref in references(path, (texts or {}).get(path)):
            if ref.target.split(".")[0] in WEBUI_ROOTS:
                found.append(f"{ref.source}:{ref.line} {ref.target}")
    return found


def _module_parts(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _library_sources() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_of_the_package_has_a_floor():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert units - set(FLOOR_OF) == set(), "place the new unit in FLOORS and in docs/architecture.md"
    assert set(FLOOR_OF) - units == set(), "a unit in FLOORS no longer exists"


def test_no_unit_imports_its_own_floor_or_one_above():
    assert upward_imports() == []


def test_no_circle_between_sibling_folders():
    assert sibling_circles() == []


def test_only_the_webui_glue_reaches_the_webui():
    assert webui_reaches() == []


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def oversized(paths: list[Path] | None = None, root: Path = ROOT) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES, as 'file[:function] lines'."""
    found = []
    for path in paths if paths is not None else [*PACKAGE.rglob("*.py"), *ROOT.glob("scripts/*.py")]:
        text = path.read_text()
        source = str(path.relative_to(root))
        if text.count("\n") > MAX_MODULE_LINES:
            found.append(f"{source} {text.count(chr(10))}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{source}:{node.name} {length}")
    return found


def test_no_module_over_400_lines_and_no_function_over_60():
    assert oversized() == []


def test_an_oversized_module_or_function_is_found(tmp_path):
    (tmp_path / "f.py").write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    (tmp_path / "m.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert oversized(sorted(tmp_path.glob("*.py")), root=tmp_path) == ["f.py:f 61", "m.py 401"]


def test_the_docs_draw_the_same_floors():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for units in FLOORS:
        assert " · ".join(f"`{u}`" for u in units) in text, units


# The checks themselves can fail: the same functions on sources with one bad import added.
@pytest.mark.parametrize(("relative", "line", "expected"), [
    ("lib_lora/networks/loaded.py", "from ..ui import studio", "networks -> ui"),
    ("lib_lora/dataset/folder.py", "    from ..blocks import presets", "dataset -> blocks"),
    ("lib_lora/hosts/base.py", "if TYPE_CHECKING:\n    from ..train.loop import TrainRun", "hosts -> train"),
    ("lib_lora/errors.py", "x = __import__('sys').modules\nfrom importlib import import_module\n"
                           "m = import_module('lib_lora.jobs')", "errors -> jobs"),
])
def test_an_added_upward_import_is_found(relative, line, expected):
    path = ROOT / relative
    sources = {path: path.read_text() + "\n" + line + "\n"}
    assert any(expected in found for found in upward_imports(sources))


def test_an_added_circle_between_sibling_folders_is_found():
    loaders, tools = PACKAGE / "networks" / "loaders" / "__init__.py", PACKAGE / "networks" / "tools" / "info.py"
    sources = {loaders: "from ..tools import info\n", tools: "from ..loaders import LOADERS\n"}
    assert sibling_circles(sources) == ["lib_lora.networks.loaders -> lib_lora.networks.tools -> … -> "
                                        "lib_lora.networks.loaders",
                                        "lib_lora.networks.tools -> lib_lora.networks.loaders -> … -> "
                                        "lib_lora.networks.tools"]


@pytest.mark.parametrize("line", ["import sys\nshared = sys.modules.get('modules.shared')",
                                  "def f():\n    from modules import shared",
                                  "import sys\nx = sys.modules['backend.memory_management']"])
def test_an_added_reach_into_the_webui_is_found(line):
    path = PACKAGE / "train" / "loop.py"
    assert webui_reaches([path], {path: path.read_text() + "\n" + line + "\n"}) != []
