"""`python -m lib_lora generate` on the tiny diffusers model: tags applied per block, PNG infotext, one-line errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from lib_lora.cli.main import main  # noqa: E402
from lib_lora.hosts.diffusers import load_diffusers_host  # noqa: E402
from lib_lora.networks.files import save_lora_file  # noqa: E402
from lib_lora.networks.keys import build_target_index  # noqa: E402
from lib_lora.networks.random_files import random_lora_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("--steps", "3", "--width", "64", "--height", "64", "--seed", "7")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    index = build_target_index(load_diffusers_host("tiny"))
    tensors = random_lora_state_dict(index, kind="locon", seed=5, strength=1.0)
    (folder / "styles").mkdir()
    save_lora_file(folder / "styles" / "tinychar.safetensors", tensors, {"ss_base_model_version": "sd_v1"})
    return folder


def generate(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["generate", *SMALL, *args], out=out), out.getvalue()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_generate_with_a_block_preset_writes_png_and_infotext(tmp_path, lora_dir):
    prompt = "a tinychar portrait <lora:tinychar:0.8:NCNF>"
    code, said = generate("--prompt", prompt, "--negative", "blurry", "--lora-dir", str(lora_dir),
                          "--out", str(tmp_path / "with.png"))
    assert code == 0
    wrote = f"generate: wrote {tmp_path / 'with.png'} (64x64, seed 7, 1 LoRA(s): tinychar)"
    assert said.strip().splitlines() == [wrote]
    with Image.open(tmp_path / "with.png") as image:
        parameters = image.text["parameters"]
    lines = parameters.splitlines()
    assert lines[0] == prompt and lines[1] == "Negative prompt: blurry"
    assert "Steps: 3" in lines[2] and "Seed: 7" in lines[2] and "Size: 64x64" in lines[2] and "Model: tiny" in lines[2]
    assert 'Lora block weights: "tinychar: te=0.8, unet=0.8, blocks=NCNF"' in lines[2]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    code, _ = generate("--prompt", "a tinychar portrait", "--negative", "blurry", "--out", str(tmp_path / "plain.png"))
    assert code == 0
    with Image.open(tmp_path / "plain.png") as image:
        assert "Lora block weights" not in image.text["parameters"]
    assert np.abs(pixels(tmp_path / "with.png") - pixels(tmp_path / "plain.png")).max() > 0

    code, _ = generate("--prompt", "a tinychar portrait <lora:tinychar:0.8:NONE>", "--negative", "blurry",
                       "--lora-dir", str(lora_dir), "--out", str(tmp_path / "none.png"))
    assert code == 0  # NONE: BASE 0 and every block 0, and this LoRA has nothing outside the blocks
    assert np.array_equal(pixels(tmp_path / "none.png"), pixels(tmp_path / "plain.png"))


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    target = tmp_path / "taken.png"
    target.write_bytes(b"old")
    code, _ = generate("--prompt", "a cat", "--out", str(target))
    assert code == 2 and target.read_bytes() == b"old"
    assert capsys.readouterr().err.strip() == f"lora-studio: error: {target} exists; pass --force to overwrite it"
    code, _ = generate("--prompt", "a cat", "--out", str(target), "--force")
    assert code == 0 and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "lib_lora", "generate", *SMALL, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat <lora:tinychar:0.8:NCNG>", "unknown block-weight preset 'NCNG'"),
        ("a cat <lora:../x:1>", "never as paths"),
        ("a cat <lora:tinychr:1>", "did you mean tinychar"),
        ("a cat <lora:tinychar:1:dyn=8>", "dyn"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, lora_dir, prompt, expected):
    result = run_cli("--prompt", prompt, "--lora-dir", str(lora_dir), "--out", str(tmp_path / "x.png"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-studio: error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "x.png").exists()
