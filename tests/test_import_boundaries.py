"""The core imports without the WebUI, gradio or diffusers (as inside A1111, which has no diffusers).

gradio belongs to lib_lora/ui/ (and the command line that serves it); diffusers to the diffusers host and
the tiny diffusers builders, imported lazily. Which code may name the WebUI at all, and the import direction,
are checked on the source by test_architecture.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib_lora"
def core_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


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
