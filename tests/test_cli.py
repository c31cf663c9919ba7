"""`python -m lib_lora`: help, the demo without UI, and core errors reported as one line with exit code 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from lib_lora.cli import build_parser, with_default_command

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "lib_lora", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_commands_and_names_later_ones():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "demo" in result.stdout
    for later in ("tag", "train", "generate"):
        assert later in result.stdout
    assert "{serve,demo,lora,blocks,generate,tag,train}" in result.stdout


def test_serve_is_the_default_command_and_listening_is_opt_in():
    args = build_parser().parse_args(with_default_command(["--model", "tiny-sdxl", "--port", "9000"]))
    assert (args.command, args.model, args.port, args.listen) == ("serve", "tiny-sdxl", 9000, False)
    assert build_parser().parse_args(with_default_command([])).port == 7861
    assert build_parser().parse_args(with_default_command(["--listen"])).listen is True


def test_demo_without_ui_says_what_it_did(tmp_path):
    result = run_cli("demo", "--no-ui", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "demo: generated" in result.stdout
    assert "not yet:" in result.stdout and "issue #6" in result.stdout
    assert "Running on" not in result.stdout and "serving on" not in result.stdout
    assert (tmp_path / "out" / "samples" / "sample.png").is_file()
    assert (tmp_path / "out" / "samples" / "sample_lora.png").is_file()
    assert (tmp_path / "out" / "loras" / "tinychar_demo.safetensors").is_file()
    assert "weights bit-identical to before" in result.stdout


def test_missing_model_is_one_line_and_exit_code_2():
    result = run_cli("--model", "/nonexistent")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-studio: error: ") and "/nonexistent" in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line_and_exit_code_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--port", str(port))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("lora-studio: error: cannot serve on")
        and "--port" in lines[0]
    )


def test_unknown_dtype_is_reported_by_the_loader():
    result = run_cli("demo", "--no-ui", "--dtype", "float7")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("lora-studio: error: ") and "float7" in result.stderr
