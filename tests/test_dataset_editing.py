"""The caption-editing model is core code: a DatasetSession is driven without gradio (the import rules themselves are
test_architecture.py's and test_import_boundaries.py's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lib_lora

pytestmark = pytest.mark.hostcompat

def test_a_session_is_driven_without_gradio(tmp_path: Path) -> None:
    """Load, edit, undo and save in a Python where gradio cannot be imported."""
    script = f"""
import sys
sys.modules["gradio"] = None  # any import of gradio fails
from pathlib import Path
from PIL import Image
Image.new("RGB", (8, 8)).save({str(tmp_path / "a.png")!r})
Path({str(tmp_path / "a.txt")!r}).write_text("x, y", encoding="utf-8")
from lib_lora.dataset.editing import DatasetSession
session = DatasetSession(lambda: [Path({str(tmp_path)!r})])
session.load({str(tmp_path)!r})
session.remove_tag("a.png", 0, "x")
session.undo()
session.set_caption("a.png", "z")
print(session.save())
assert "gradio" not in [name.split(".")[0] for name in sys.modules if sys.modules[name] is not None]
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(lib_lora.__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Saved 1 caption") and (tmp_path / "a.txt").read_text(encoding="utf-8") == "z"
