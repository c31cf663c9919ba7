"""The core never imports the WebUI, and imports without gradio or diffusers (as inside A1111, which has none).

Only lib_lora/hosts/a1111.py, lib_lora/hosts/forge.py, lib_lora/webui/ and scripts/ may name `modules.*`;
gradio belongs to lib_lora/ui/ (and the command line that serves it); diffusers to the diffusers host and
the tiny diffusers builders, imported lazily.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib_lora"
MAY_IMPORT_WEBUI = ("hosts/a1111.py", "hosts/forge.py", "hosts/forge_neo", "hosts/webui_processing.py", "webui/")


def imported_top_levels(path: Path) -> set[str]:
    """Top-level package names imported anywhere in the file (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def core_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_adapters_name_the_webui():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in core_files()
        if {"modules", "launch"} & imported_top_levels(path)
        and not str(path.relative_to(PACKAGE)).startswith(MAY_IMPORT_WEBUI)
    ]
    assert not offenders, f"these lib_lora modules import the WebUI: {offenders}"


def core_module_names() -> list[str]:
    names = []
    for path in core_files():
        relative = path.relative_to(ROOT).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts))
    return names


BLOCKER = """
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'modules', 'launch', 'gradio', 'diffusers'}:
            raise ImportError(f'blocked: {name}')
        return None
sys.meta_path.insert(0, Block())
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as error:
        failed.append(f'{name}: {error}')
print('\\n'.join(failed))
sys.exit(1 if failed else 0)
"""


def test_core_modules_import_without_webui_gradio_or_diffusers():
    names = [n for n in core_module_names() if not n.startswith(("lib_lora.ui", "lib_lora.cli.main"))]
    assert "lib_lora.hosts.a1111" in names and "lib_lora.hosts.diffusers" in names
    result = subprocess.run([sys.executable, "-c", BLOCKER, *names], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"modules that need a blocked package at import time:\n{result.stdout}"


LAYERS_BELOW = {"hosts": ("webui", "ui", "cli", "blocks", "train", "dataset")}
"""Imports point down: a package here imports none of the packages named beside it (relative or absolute)."""


def imported_lib_lora_packages(path: Path) -> set[str]:
    """The lib_lora subpackages a file imports, relative (`from ..webui import x`) or absolute."""
    depth = len(path.relative_to(PACKAGE).parts) - 1
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("lib_lora."):
                found.add(node.module.split(".")[1])
            elif node.level > depth and node.module:
                found.add(node.module.split(".")[0])
            elif node.level > depth:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lib_lora."))
    return found


@pytest.mark.parametrize("layer", sorted(LAYERS_BELOW))
def test_imports_point_down(layer):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(imported_lib_lora_packages(path) & set(LAYERS_BELOW[layer]))
        for path in sorted((PACKAGE / layer).rglob("*.py"))
    }
    offenders = {name: packages for name, packages in offenders.items() if packages}
    assert not offenders, f"{layer}/ imports layers above it: {offenders}"
