"""`python -m lib_lora blocks presets`: the JSON schema and lengths per family, the text table, user files,
and bad inputs reported as one line with exit code 2."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib_lora.cli import main

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["blocks", "presets", *args], out=out)
    return code, out.getvalue()


@pytest.mark.parametrize(("arch", "fmt", "length"),
                         [("sd1", None, 17), ("sd2", None, 17), ("sdxl", None, 12), ("sd1", 26, 26),
                          ("sdxl", 20, 20), ("sd2", 17, 17)])
def test_json_is_one_object_of_vectors_in_the_format(arch, fmt, length):
    code, text = run("--arch", arch, "--json", *(["--format", str(fmt)] if fmt else []))
    assert code == 0
    data = json.loads(text)
    assert isinstance(data, dict) and data
    for name, values in data.items():
        assert isinstance(name, str) and len(values) == length
        assert all(isinstance(v, float) for v in values)
    if arch == "sdxl":
        # only presets with an SDXL vector
        assert sorted(data) == ["ALL", "ALL0.5", "CHAR", "INALL", "NCNF", "NFACE", "NIN", "NONE", "OUTALL"]
        if length == 12:
            assert data["CHAR"] == [float(v) for v in "1,0,0,1,1,1,1,1,1,0,0,0".split(",")]
        else:  # BASE, IN00..IN08, M00, OUT00..OUT08: BASE, IN07, IN08, M00, OUT00..OUT02 on
            assert data["CHAR"] == [1.0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    else:
        assert {"NONE", "ALL", "FACE", "BODY", "CHAR"} <= set(data) and "FLUXALL" not in data
    if length == 26:
        assert data["FACE"] == [float(v) for v in "0,1,1,1,1,1,0,0,0,1,0,0,0,0,1,0,1,1,1,0,1,1,1,0,0,1".split(",")]


def test_text_table_marks_presets_the_format_cannot_show():
    code, text = run("--arch", "sd1")
    assert code == 0
    assert text.splitlines()[0].startswith("sd1 presets, 17-value format: BASE,IN01,IN02,IN04")
    assert any(line.startswith("FACE") and "*" in line for line in text.splitlines())
    assert "--format 26" in text


def test_user_file_adds_and_overrides(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# mine\nMYXL:1,0,0,0,0,0,0,0,0,0,0,0.5\nCHAR:0,0,0,0,0,0,0,0,0,0,0,0\n", encoding="utf-8")
    code, text = run("--arch", "sdxl", "--json", "--file", str(path))
    assert code == 0
    data = json.loads(text)
    assert data["MYXL"][-1] == 0.5 and data["CHAR"] == [0.0] * 12


def test_bad_file_and_bad_format_are_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("OK:1,1,1,1,1,1,1,1,1,1,1,1\nBAD:1,2,3\n", encoding="utf-8")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    for args, needle in (
        (["--arch", "sd1", "--file", str(path)], f"{path}, line 2: BAD has 3 values"),
        (["--arch", "sd1", "--file", str(tmp_path / "missing.txt")], "cannot read preset file"),
        (["--arch", "sdxl", "--format", "17"], "expected 12 or 20 values for SDXL"),
    ):
        result = subprocess.run([sys.executable, "-m", "lib_lora", "blocks", "presets", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lora-studio: error: ") and needle in lines[0], lines
        assert result.stdout == ""
