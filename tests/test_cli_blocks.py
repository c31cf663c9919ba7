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

from lib_lora.cli.main import main
from lib_lora.pnginfo import read_parameters

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


# --- blocks analyze / blocks grid (tiny SD1; skipped where diffusers is absent) --------------------------------

FAST_ARGS = ["--steps", "2", "--width", "64", "--height", "64", "--cfg", "1", "--prompt", "a cat"]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    from blocks_testing import write_lora

    from lib_lora.hosts.diffusers import load_diffusers_host

    folder = tmp_path_factory.mktemp("loras")
    write_lora(load_diffusers_host("tiny"), folder / "part.safetensors", blocks={"IN04", "OUT05"})
    return folder


def run_blocks(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["blocks", *args], out=out)
    return code, out.getvalue()


def test_analyze_prints_the_ranking_and_writes_the_grid(lora_dir, tmp_path):
    target = tmp_path / "analysis.png"
    code, text = run_blocks("analyze", "--model", "tiny", "--lora-dir", str(lora_dir), "--lora", "part",
                            "--threshold", "1", *FAST_ARGS, "--out", str(target))
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == "effective blocks of part at 1 (sd1, 17-value format, seed 0, threshold 1)"
    assert "most effective" in lines[1] and "15 of 17 blocks change nothing" in lines[1]
    table = [line.split() for line in lines[3:20]]
    assert table[0][0] == "1" and table[1][0] in ("1", "2") and [row[0] for row in table[2:]] == ["-"] * 15
    assert {row[1] for row in table[:2]} == {"IN04", "OUT05"} and all(row[2] == "0%" for row in table[2:])
    assert lines[-1] == f"wrote {target}" and target.is_file()


def test_analyze_json(lora_dir):
    code, text = run_blocks("analyze", "--model", "tiny", "--lora-dir", str(lora_dir), "--lora", "part",
                            "--weight", "0.8", "--threshold", "1", *FAST_ARGS, "--json")
    assert code == 0
    data = json.loads(text)
    assert (data["lora"], data["weight"], data["format"], data["threshold"], data["path"]) == ("part", 0.8, 17, 1, None)
    assert data["rows"][0]["rank"] == 1 and [row["rank"] for row in data["rows"][2:]] == [None] * 15
    assert {row["block"] for row in data["rows"][:2]} == {"IN04", "OUT05"}
    assert all(row["share"] == 0.0 for row in data["rows"][2:]) and data["rows"][0]["share"] > 0


def test_grid_writes_the_png(lora_dir, tmp_path):
    target = tmp_path / "grid.png"
    code, text = run_blocks("grid", "--model", "tiny", "--lora-dir", str(lora_dir), "--lora", "part",
                            "--x", "preset: NONE, CHAR", *FAST_ARGS, "--out", str(target))
    assert code == 0 and text.startswith(f"grid: wrote {target} (") and "2x1 images" in text
    assert target.is_file()


def test_grid_sweeps_blocks_of_a_preset_and_records_the_random_seed(lora_dir, tmp_path):
    target = tmp_path / "sweep.png"
    code, text = run_blocks("grid", "--model", "tiny", "--lora-dir", str(lora_dir), "--lora", "part",
                            "--x", "block-off: IN04, OUT05", "--preset", "1,R" + ",1" * 15, "--random-seed", "3",
                            *FAST_ARGS, "--out", str(target))
    assert code == 0 and "2x1 images" in text
    assert "Random seed: 3" in read_parameters(target)
    code, text = run_blocks("grid", "--model", "tiny", "--lora-dir", str(lora_dir), "--lora", "part",
                            "--x", "block-only: each", "--preset", "CHAR", *FAST_ARGS, "--out", str(target),
                            "--force")  # a preset's name is read in the loaded model's format
    assert code == 0 and "17x1 images" in text


@pytest.mark.parametrize(("args", "needle"), [
    (["analyze", "--lora", "prat"], "no LoRA named 'prat'"),
    (["analyze", "--lora", "part", "--threshold", "300"], "threshold must be a whole number from 0 to 254"),
    (["grid", "--lora", "part", "--x", "preset: NONE, CHRA", "--out", "x.png"], "did you mean CHAR"),
    (["grid", "--lora", "part", "--x", "strength: a", "--out", "x.png"], "'a' is not a number"),
])
def test_bad_analyze_and_grid_inputs_are_one_line_exit_2(lora_dir, tmp_path, args, needle):
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    result = subprocess.run(
        [sys.executable, "-m", "lib_lora", "blocks", *args, "--lora-dir", str(lora_dir), *FAST_ARGS],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("lora-studio: error: ") and needle in lines[0], lines
    assert "Traceback" not in result.stderr
