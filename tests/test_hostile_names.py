"""Hostile output names and failing saves: every name a command writes is checked against the real file system
before any work, an overwrite keeps the old file, and a save that fails anyway keeps the trained weights.

The file-system limits come from `os.pathconf` (255 bytes a name and 4096 a path on the test machines); the
tables derive their boundaries from what it says, so they hold on any file system.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from lib_lora.atomic import write_atomically
from lib_lora.backups import BACKUP_DIR_NAME, BackupError, back_up, replacing
from lib_lora.cli.main import main
from lib_lora.file_names import (
    FileNameError,
    check_output_files,
    cut_to_bytes,
    encoded_length,
    name_limit,
)
from lib_lora.networks.files import load_lora_file
from lib_lora.tiny.images import generate_dataset
from lib_lora.train import saving
from lib_lora.train.config import TrainConfig
from lib_lora.train.outputs import check_run_outputs, planned_files
from lib_lora.train.queue import TrainQueue
from lib_lora.train.saving import save_or_rescue

# --- names against the file system's limits ----------------------------------------------------------------------


@pytest.mark.parametrize("character", ["a", "é", "😀"], ids=["ascii", "2-byte", "4-byte"])
def test_a_name_is_measured_in_encoded_bytes_against_the_folders_limit(tmp_path, character):
    limit = name_limit(tmp_path)
    width = encoded_length(character)
    fits = character * (limit // width)
    too_long = fits + character
    check_output_files([tmp_path / fits], option="--out", value=fits)
    with pytest.raises(FileNameError) as caught:
        check_output_files([tmp_path / too_long], option="--out", value=too_long)
    message = str(caught.value)
    assert message.startswith("--out = ") and f"a name of {encoded_length(too_long)} bytes" in message
    assert f"allows {limit}: shorten --out to at most {limit} bytes" in message


@pytest.mark.parametrize("make_path, fragment", [
    (lambda root: root / ("d" * 300) / "x.png", "it would write dddd"),  # a folder still to be made
    (lambda root: root.joinpath(*["p" * 200] * 25, "x.png"), "more than the"),  # the whole path
    (lambda root: root / "a\0b.png", "NUL"),
], ids=["new-folder-name", "path-length", "nul"])
def test_folders_to_be_made_the_whole_path_and_nul_are_checked(tmp_path, make_path, fragment):
    with pytest.raises(FileNameError, match=fragment):
        check_output_files([make_path(tmp_path)], option="--out", value=str(make_path(tmp_path)))


@pytest.mark.parametrize("pathconf, expected", [
    (None, 255),  # no pathconf (Windows): the usual 255 bytes
    (lambda path, key: 143 if key == "PC_NAME_MAX" else 4096, 143),  # eCryptfs-style file systems allow fewer
    (lambda path, key: (_ for _ in ()).throw(OSError(errno.EINVAL, "no limit")), 255),
])
def test_the_limit_is_the_file_systems_own_with_255_when_it_cannot_say(tmp_path, monkeypatch, pathconf, expected):
    if pathconf is None:
        monkeypatch.delattr(os, "pathconf", raising=False)
    else:
        monkeypatch.setattr(os, "pathconf", pathconf)
    assert name_limit(tmp_path / "not" / "made") == expected
    with pytest.raises(FileNameError, match=f"allows {expected}"):
        check_output_files([tmp_path / ("n" * (expected + 1))], option="--out", value="n")


def test_an_atomic_write_of_a_name_at_the_limit_works(tmp_path):
    """The hidden temp file beside it is cut to fit, so any legal name can be written."""
    target = tmp_path / ("a" * (name_limit(tmp_path) - 4) + ".txt")
    write_atomically(target, [b"ok"])
    assert target.read_bytes() == b"ok" and os.listdir(tmp_path) == [target.name]


def test_cut_to_bytes_never_splits_a_character():
    assert cut_to_bytes("ééé", 5) == "éé" and cut_to_bytes("abc", 10) == "abc" and cut_to_bytes("😀", 3) == ""


# --- every file a training run writes ------------------------------------------------------------------------------


def config(tmp_path: Path, **options: Any) -> TrainConfig:
    return TrainConfig.from_dict({"pretrained_model_name_or_path": "tiny", "train_data_dir": str(tmp_path),
                                  "output_dir": str(tmp_path / "out"), "max_train_steps": 4, **options})


@pytest.mark.parametrize("options, longest_ending", [
    ({}, "-step00000004.safetensors"),  # a stop saves what was learned under a step name
    ({"save_on_cancel": False}, ".safetensors"),  # also ".preview.png": 12 bytes as well
    ({"save_on_cancel": False, "save_every_n_epochs": 1}, "-000001.safetensors"),
    ({"save_on_cancel": False, "save_state": True}, "-state.00000000.tmp"),  # the state folder's temp name
    ({"save_on_cancel": False, "sample_prompts": "p.txt", "sample_every_n_steps": 2}, "_000004_00.png"),
    ({"save_on_cancel": False, "save_every_n_steps": 2, "max_train_epochs": 3}, "-step00000001.safetensors"),
], ids=["default", "no-stop-save", "epoch-saves", "states", "samples", "step-saves"])
def test_the_longest_output_name_a_run_takes_is_checked_before_any_work(tmp_path, options, longest_ending):
    extra = encoded_length(longest_ending) + (1 if longest_ending.startswith("-state") else 0)  # hidden: ".name"
    room = name_limit(tmp_path) - extra
    check_run_outputs(config(tmp_path, output_name="n" * room, **options), tmp_path / "out")
    with pytest.raises(FileNameError) as caught:
        check_run_outputs(config(tmp_path, output_name="n" * (room + 1), **options), tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("output_name = 'nnn") and f"shorten output_name to at most {room} bytes" in message
    assert not (tmp_path / "out").exists()  # checking writes nothing


def test_the_issues_243_character_name_is_refused_up_front_or_written(tmp_path):
    name = "x" * 243  # a legal name: 243 + ".safetensors" = 255 bytes
    with pytest.raises(FileNameError, match="at most 230 bytes"):  # its stop save would be 268 bytes
        check_run_outputs(config(tmp_path, output_name=name), tmp_path)
    files = planned_files(config(tmp_path, output_name=name, save_on_cancel=False), tmp_path)
    assert max(encoded_length(path.name) for path in files) == 255
    check_run_outputs(config(tmp_path, output_name=name, save_on_cancel=False), tmp_path)


@pytest.mark.parametrize("make_folder, fragment", [
    (lambda root: root / "file" / "out", "is a file, not a folder"),
    (lambda root: root / ("o" * 300), "output_dir = "),
], ids=["under-a-file", "folder-name-too-long"])
def test_the_output_folder_is_checked_before_any_work(tmp_path, make_folder, fragment):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNameError, match=fragment):
        check_run_outputs(config(tmp_path), make_folder(tmp_path))


def test_the_queue_refuses_a_run_whose_names_do_not_fit(tmp_path):
    queue = TrainQueue()
    with pytest.raises(FileNameError, match="output_name"):
        queue.add(config(tmp_path, output_name="q" * 250))
    assert len(queue) == 0


@pytest.mark.parametrize("action", ["prepare", "export_toml"])  # Start and Add to queue prepare; Export exports
def test_the_train_tab_refuses_before_writing_its_prompt_file(tmp_path, action):
    from lib_lora.ui.context import StudioContext
    from lib_lora.ui.train import form as train_form
    from lib_lora.ui.train.session import OwnFields, TrainSession

    generate_dataset(tmp_path / "datasets", count=1, repeats=1, name="c")
    session = TrainSession(StudioContext.for_folder(lambda: None, tmp_path))
    own = OwnFields(dataset=str(tmp_path / "datasets"), output_name="t" * 240, prompts="a cat")
    with pytest.raises(FileNameError, match="output_name"):
        getattr(session, action)(own, {**train_form.default_values(), "resolution": "64"})
    train_folder = tmp_path / "lora_studio" / "train"
    assert not train_folder.exists() or not os.listdir(train_folder)


# --- backups of what an overwrite replaces -------------------------------------------------------------------------


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "copy"])
def test_a_backup_keeps_the_old_bytes_after_the_file_is_replaced(tmp_path, monkeypatch, links):
    if not links:
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"old")
    with replacing(target, stamp="20250101T000000000000Z") as backup:
        write_atomically(target, [b"new"])
    assert backup == tmp_path / BACKUP_DIR_NAME / "lora.20250101T000000000000Z.safetensors.bak"
    assert backup.read_bytes() == b"old" and target.read_bytes() == b"new"
    again = back_up(target, stamp="20250101T000000000000Z")  # same time: a counter, never a replaced backup
    assert again is not None and again.name == "lora.20250101T000000000000Z-1.safetensors.bak"


def test_a_backup_of_a_name_at_the_limit_fits_and_nothing_is_kept_when_the_write_fails(tmp_path):
    target = tmp_path / ("b" * (name_limit(tmp_path) - 12) + ".safetensors")
    target.write_bytes(b"old")
    with pytest.raises(OSError), replacing(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old" and not list((tmp_path / BACKUP_DIR_NAME).iterdir())
    backup = back_up(target)
    assert backup is not None and encoded_length(backup.name) <= name_limit(tmp_path)


def test_a_file_that_cannot_be_backed_up_is_not_replaced(tmp_path):
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"old")
    (tmp_path / BACKUP_DIR_NAME).write_text("a file where the backup folder goes")
    with pytest.raises(BackupError, match="kept as it is"), replacing(target):
        write_atomically(target, [b"new"])
    assert target.read_bytes() == b"old"


# --- a save that fails anyway keeps the weights -----------------------------------------------------------------


def failing_saves(monkeypatch: pytest.MonkeyPatch, fails: Any, code: int = errno.ENOSPC) -> None:
    """Make the LoRA writer raise OSError `code` for the paths `fails(path)` picks."""
    original = saving.save_lora_file

    def save(path: Any, tensors: Any, metadata: Any) -> str:
        if fails(Path(path)):
            raise OSError(code, os.strerror(code), str(path))
        return original(path, tensors, metadata)

    monkeypatch.setattr(saving, "save_lora_file", save)


TENSORS = {"lora_unet_x.lora_down.weight": torch.ones(2, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 2),
           "lora_unet_x.alpha": torch.tensor(2.0)}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.ENAMETOOLONG, errno.EIO])
@pytest.mark.parametrize("where, expected", [
    ("name", "beside"),  # only the asked name is refused: a safe name in the same folder
    ("folder", "temp"),  # the whole folder fails: the temp folder
    ("everywhere", None),  # nothing takes it: kept in memory, said so
])
def test_a_failed_save_goes_to_a_safe_name_then_the_temp_folder_then_memory(tmp_path, monkeypatch, code, where,
                                                                              expected):
    asked = tmp_path / "out" / "my lora: v2.safetensors"
    temp = tmp_path / "temp"
    monkeypatch.setattr(saving.tempfile, "gettempdir", lambda: str(temp))
    rules = {"name": lambda path: path == asked, "folder": lambda path: path.parent == asked.parent,
             "everywhere": lambda path: True}
    failing_saves(monkeypatch, rules[where], code)
    went, problem = save_or_rescue(asked, TENSORS, {"ss_output_name": "x"})
    assert problem is not None and str(asked) in problem and os.strerror(code) in problem
    if expected is None:
        assert went is None and "only in memory" in problem
        return
    assert went is not None and went.parent == (asked.parent if expected == "beside" else temp)
    assert went.name.startswith("my_lora_v2-rescued-") and f"saved to {went} instead" in problem
    assert torch.equal(load_lora_file(went).tensors["lora_unet_x.lora_down.weight"], TENSORS[
        "lora_unet_x.lora_down.weight"])


# --- end to end on the tiny model ----------------------------------------------------------------------------------

CONFIG = """
pretrained_model_name_or_path = "tiny"
train_data_dir = "data"
caption_extension = ".txt"
resolution = "64"
output_dir = "out"
output_name = "mine"
network_dim = 2
network_alpha = 2
train_batch_size = 1
max_train_steps = 1
seed = 3
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    generate_dataset(tmp_path / "data", count=1, repeats=1, sizes=((64, 64),))
    (tmp_path / "cfg.toml").write_text(CONFIG, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def train(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["train", "cfg.toml", "--quiet", *args], out=out), out.getvalue()


def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded: the check came after work")

    monkeypatch.setattr("lib_lora.cli.train._load_host", refuse)


@pytest.mark.parametrize("args, fragment", [
    (["--set", f"output_name={'y' * 243}"], "shorten output_name to at most 230 bytes"),
    (["--set", f"output_dir=out/{'d' * 300}"], "output_dir = "),
    (["--set", "output_dir=cfg.toml/out"], "is a file, not a folder"),
], ids=["name", "folder-name", "folder-under-a-file"])
def test_cli_train_checks_every_name_before_loading_the_model(workdir, monkeypatch, capsys, args, fragment):
    no_model(monkeypatch)
    assert train(*args) == (2, "")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-studio: error: ") and fragment in lines[0], lines


def test_cli_train_refuses_to_replace_a_lora_without_force_and_backs_it_up_with_it(workdir, monkeypatch, capsys):
    old = workdir / "out" / "mine.safetensors"
    old.parent.mkdir()
    old.write_bytes(b"the user's LoRA")
    with monkeypatch.context() as patch:
        no_model(patch)
        assert train() == (2, "")
    error = capsys.readouterr().err.strip()
    assert error == (f"lora-studio: error: output_name = 'mine': {Path('out/mine.safetensors')} already exists; "
                     "pass --force to replace it (the old file is kept in .lora_studio_backup/ beside it) or "
                     "choose another output_name")
    assert old.read_bytes() == b"the user's LoRA"
    code, out = train("--force")
    assert code == 0 and out.startswith("train: wrote out/mine.safetensors"), out
    backups = list((workdir / "out" / BACKUP_DIR_NAME).glob("mine.*.safetensors.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == b"the user's LoRA"
    assert load_lora_file(old).metadata["ss_steps"] == "1"


def test_cli_train_says_where_the_weights_went_when_the_save_fails(workdir, monkeypatch, capsys):
    failing_saves(monkeypatch, lambda path: path.name == "mine.safetensors")
    code, out = train()
    err = capsys.readouterr().err.strip().splitlines()
    rescued = next((workdir / "out").glob("mine-rescued-*.safetensors"))
    assert code == 2 and out.startswith(f"train: wrote out/{rescued.name} (1 step") and "No space left" in out
    assert len(err) == 1 and err[0].startswith("lora-studio: error: the LoRA was not written to out/mine")
    assert f"saved to out/{rescued.name} instead" in err[0]
    assert load_lora_file(rescued).metadata["ss_steps"] == "1"


def test_the_train_tab_shows_where_the_weights_went_and_keeps_them_in_memory_at_worst(workdir, monkeypatch):
    from lib_lora.hosts.diffusers import load_diffusers_host
    from lib_lora.train.loop import TrainRun
    from lib_lora.ui.train.view import result_text

    monkeypatch.setattr(saving.tempfile, "gettempdir", lambda: str(workdir / "no-temp"))
    failing_saves(monkeypatch, lambda path: True)
    run = TrainRun(TrainConfig.from_toml(workdir / "cfg.toml"), load_diffusers_host("tiny"))
    snapshot = run.job().start().wait(timeout=300)
    result = snapshot.result
    assert snapshot.state == "done" and result.output is None and result.unsaved is not None
    assert result.unsaved["tensors"] and all(isinstance(t, torch.Tensor) for t in result.unsaved["tensors"].values())
    assert result.unsaved["metadata"]["ss_output_name"] == "mine"
    text = result_text(snapshot)
    assert "only in memory" in text and "mine.safetensors" in text
    assert "only in memory" in result.summary()
