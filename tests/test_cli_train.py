"""`python -m lib_lora train CONFIG.toml`: headless runs, --set, errors as one line with exit 2, two processes."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lib_lora.cli.main import main
from lib_lora.networks.files import load_lora_file
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.config import TrainConfig

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]

# an sd-scripts style config file: sections, sd-scripts names, options that do not apply here
CONFIG = """
[model_arguments]
pretrained_model_name_or_path = "tiny"

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 4
network_alpha = 2

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 1e-3

[dataset_arguments]
train_data_dir = "data"
caption_extension = ".txt"
resolution = "64"

[training_arguments]
output_dir = "out"
output_name = "headless"
train_batch_size = 1
max_train_steps = 2
seed = 3
xformers = true
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    generate_dataset(tmp_path / "data", count=2, repeats=1, sizes=((64, 64),))
    (tmp_path / "cfg.toml").write_text(CONFIG, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the config's relative folders are read from the working directory, as sd-scripts
    return tmp_path


def train(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["train", *args], out=out), out.getvalue()


def test_train_writes_the_lora_and_prints_one_line(workdir, capsys):
    code, out = train("cfg.toml")
    assert code == 0
    assert out.startswith("train: wrote out/headless.safetensors (2 steps, 1 full epoch, loss ")
    assert out.count("\n") == 1
    err = capsys.readouterr().err
    assert "note: xformers = True is not used" in err and "step 2/2" in err
    metadata = load_lora_file(workdir / "out" / "headless.safetensors").metadata
    assert (metadata["ss_network_alpha"], metadata["ss_steps"], metadata["ss_seed"]) == ("2.0", "2", "3")


def test_set_overrides_options_and_print_config_shows_them(workdir):
    code, out = train("cfg.toml", "--set", "max_train_steps=7", "--set", 'network_args=["conv_dim=4"]',
                      "--set", "output_name=other", "--set", "noise_offset=0.05", "--print-config")
    assert code == 0
    config = TrainConfig.from_toml_text(out)
    assert (config.max_train_steps, config.output_name, config.noise_offset) == (7, "other", 0.05)
    assert config.network_args == {"conv_dim": "4"} and config.network_dim == 4
    assert not (workdir / "out").exists()


def test_v_parameterization_trains_a_v_prediction_lora(workdir):
    code, _ = train("cfg.toml", "--set", "v_parameterization=true", "--set", "max_train_steps=1", "--quiet")
    assert code == 0
    assert load_lora_file(workdir / "out" / "headless.safetensors").metadata["modelspec.prediction_type"] == "v"


def test_vram_prints_the_estimate(workdir):
    code, out = train("cfg.toml", "--vram")
    assert code == 0 and "activations:" in out and "training adds" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.toml"], "config file = 'missing.toml': cannot read it"),
        (["cfg.toml", "--set", "learning_rat=1"], "learning_rat = 1: unknown option; did you mean learning_rate?"),
        (["cfg.toml", "--set", "max_train_steps=-1"], "max_train_steps = -1: must be at least 1"),
        (["cfg.toml", "--set", "nothing"], "--set = 'nothing': expected key=value"),
        (["cfg.toml", "--set", "train_data_dir=nowhere"], "train_data_dir = 'nowhere': no such folder"),
        (["cfg.toml", "--set", "optimizer_type=NoSuchOpt"], "optimizer_type = 'NoSuchOpt': unknown optimizer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(workdir, capsys, args, message):
    code, out = train(*args)
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("lora-studio: error:")]
    assert len(lines) == 1 and message in lines[0], err


def test_a_config_without_a_model_is_refused(workdir, capsys):
    (workdir / "cfg.toml").write_text(CONFIG.replace('pretrained_model_name_or_path = "tiny"', ""), encoding="utf-8")
    assert train("cfg.toml")[0] == 2
    assert "pretrained_model_name_or_path = None: set the model to train on" in capsys.readouterr().err


def test_two_processes_train_data_parallel(workdir):
    """torchrun (what `accelerate launch --multi_gpu` runs on GPUs; accelerate's own CPU multi-process launcher
    needs MPI): two gloo processes, each its share of the batches, gradients averaged, rank 0 writes."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    generate_dataset(workdir / "data", count=4, repeats=1, sizes=((64, 64),))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lib_lora", "train", "cfg.toml",
         "--set", "max_train_steps=4"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("train: wrote out/headless.safetensors (4 steps") == 1, result.stdout
    assert "2 processes" in result.stderr and "the 2 processes ended with identical weights" in result.stderr
    metadata = load_lora_file(workdir / "out" / "headless.safetensors").metadata
    assert metadata["ss_steps"] == "4" and metadata["ss_num_batches_per_epoch"] == "2"  # 4 images over 2 ranks
