"""`python -m lib_lora`: help, the demo without UI, and core errors reported as one line with exit code 2."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

from lib_lora.cli.main import COMMANDS, RUNNERS, build_parser, open_ui_command, with_default_command

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
    assert "{serve,demo,lora,blocks,generate,tag,train,validate,compare}" in result.stdout
    assert tuple(RUNNERS) == COMMANDS  # every command listed has what runs it, in the same order


def test_serve_is_the_default_command_and_listening_is_opt_in():
    args = build_parser().parse_args(with_default_command(["--model", "tiny-sdxl", "--port", "9000"]))
    assert (args.command, args.model, args.port, args.listen) == ("serve", "tiny-sdxl", 9000, False)
    assert build_parser().parse_args(with_default_command([])).port == 7861
    assert build_parser().parse_args(with_default_command(["--listen"])).listen is True


def test_demo_without_ui_runs_the_loop_and_lists_what_it_wrote(tmp_path):
    out = tmp_path / "out"
    result = run_cli("demo", "--no-ui", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "Running on" not in result.stdout and "serving on" not in result.stdout
    captions = sorted((out / "datasets" / "5_tinychar").glob("*.txt"))
    assert len(captions) == 8 and all(c.read_text(encoding="utf-8").startswith("tinychar, ") for c in captions)
    lora = out / "Lora" / "tinychar_demo.safetensors"
    assert lora.is_file() and (out / "Lora" / "tinychar_demo.json").is_file()
    assert (out / "samples" / "with_lora.png").is_file() and (out / "samples" / "without_lora.png").is_file()
    (grid,) = (out / "lora_studio" / "grids").glob("*-xy.png")
    with Image.open(grid) as image:
        assert "preset: NONE, ALL, CHAR, NCNF" in image.info["parameters"]
    listed = result.stdout.split("demo: wrote\n", 1)[1]
    for path in (lora, grid, out / "samples" / "with_lora.png"):
        assert f"  {path}\n" in listed
    assert "bit-identical to before the demo" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == f"demo: to open the UI on it: {open_ui_command(out, 'tiny')}"
    ui_command = shlex.split(result.stdout.rstrip().splitlines()[-1].split(": ", 2)[2])
    assert ui_command[:2] == ["make", "serve"] and ui_command[2].startswith("ARGS=")
    assert_serves_the_ui(shlex.split(ui_command[2][len("ARGS="):]))  # what `make serve` runs with those ARGS


def assert_serves_the_ui(args: list[str]) -> None:
    """`python -m lib_lora ARGS --port <free>` starts, serves the page, and stops on SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    server = subprocess.Popen([sys.executable, "-m", "lib_lora", *args, "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and b"<html" in page.read(2000).lower()
                    return
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                time.sleep(1)
        raise AssertionError("the UI did not answer within 240 s")
    finally:
        server.terminate()
        server.wait(timeout=60)


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
