"""Every command meets OS errors as one line and exit code 2: subcommands × provoked OS errors.

A name too long and a path through a file are real; permission denied, a read-only file system and a full disk
are provoked by refusing, with that errno, every open, folder creation and rename under one folder (the tests
run as root, which permissions do not stop). Each case checks that stderr is one `lora-studio: error:` line
naming the path and the cause, the exit code is 2, and nothing is left half written.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import lib_lora.cli.main as cli_main
from lib_lora.cli.main import main
from lib_lora.networks.files import save_lora_file
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.networks.tools import checkpoint_index
from lib_lora.tiny.checkpoint import tiny_sd1_checkpoint_state_dict
from lib_lora.tiny.images import generate_dataset

LONG = "L" * 252
HOSTILE = "hostile-dir"
A_FILE = "a-file"
CAUSES = {
    errno.ENAMETOOLONG: r"File name too long|a name of \d+ bytes",
    errno.ENOTDIR: r"Not a directory|not a folder|no such folder",  # a folder under a file cannot exist
    errno.EACCES: r"Permission denied",
    errno.EROFS: r"Read-only file system",
    errno.ENOSPC: r"No space left on device",
}
"""What the line must say for each errno (the OS's words, or our check's before any work)."""
READ_ERRORS = (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EACCES)
WRITE_ERRORS = (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EACCES, errno.EROFS, errno.ENOSPC)
PROVOKED = (errno.EACCES, errno.EROFS, errno.ENOSPC)


@dataclass(frozen=True)
class Files:
    """The inputs every case may use: a LoRA (in a LoRA folder), a checkpoint, a train config and its data."""

    root: Path
    lora: Path
    checkpoint: Path
    config: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("inputs")
    tensors = tiny_sd1_checkpoint_state_dict(0)
    checkpoint = root / "base.safetensors"
    save_lora_file(checkpoint, {"x": tensors[next(iter(tensors))]}, {})  # only opened after the output checks
    lora = root / "loras" / "mine.safetensors"
    lora.parent.mkdir()
    save_lora_file(lora, random_lora_state_dict(checkpoint_index(tensors, "sd1"), rank=2, seed=1,
                                                roots=("unet",)), {})
    generate_dataset(root / "data", count=1, repeats=1, sizes=((64, 64),))
    config = root / "cfg.toml"
    config.write_text(f'pretrained_model_name_or_path = "tiny"\ntrain_data_dir = "{root / "data"}"\n'
                      f'output_dir = "{root / "out"}"\nresolution = "64"\nmax_train_steps = 1\n', encoding="utf-8")
    return Files(root, lora, checkpoint, config)


# A case: the argv given where the bad path goes (`place(name)` gives it), and for a read, the input to put there.
Place = Callable[[str], Path]
Argv = Callable[[Files, Place], list[str]]
COMMANDS: dict[str, tuple[str, Argv]] = {
    "lora info": ("read", lambda f, place: ["lora", "info", str(place("in.safetensors"))]),
    "lora resize": ("write", lambda f, place: ["lora", "resize", str(f.lora), "--rank", "1", "-o",
                                               str(place("out.safetensors"))]),
    "lora merge": ("write", lambda f, place: ["lora", "merge", str(f.lora), "-o", str(place("out.safetensors"))]),
    "lora bake": ("write", lambda f, place: ["lora", "bake", str(f.checkpoint), str(f.lora), "-o",
                                             str(place("out.safetensors"))]),
    "lora extract": ("write", lambda f, place: ["lora", "extract", str(f.checkpoint), str(f.lora), "--rank", "1",
                                                "-o", str(place("out.safetensors"))]),
    "blocks presets": ("read", lambda f, place: ["blocks", "presets", "--arch", "sd1", "--file",
                                                 str(place("in.txt"))]),
    "blocks analyze": ("write", lambda f, place: ["blocks", "analyze", "--lora-dir", str(f.lora.parent), "--lora",
                                                  "mine", "--out", str(place("out.png"))]),
    "blocks grid": ("write", lambda f, place: ["blocks", "grid", "--lora-dir", str(f.lora.parent), "--lora", "mine",
                                               "--x", "seed: 1, 2", "--out", str(place("out.png"))]),
    "generate": ("write", lambda f, place: ["generate", "--prompt", "a cat", "--out", str(place("out.png"))]),
    "train config": ("read", lambda f, place: ["train", str(place("in.toml"))]),
    "train": ("write", lambda f, place: ["train", str(f.config), "--set", f"output_dir={place('out')}"]),
    "demo": ("write", lambda f, place: ["demo", "--no-ui", "--output-dir", str(place("demo"))]),
    "tag": ("read", lambda f, place: ["tag", str(place("dataset")), "--model", str(f.root), "--no-download"]),
}
CASES = [(command, code) for command, (kind, _) in COMMANDS.items()
         for code in (READ_ERRORS if kind == "read" else WRITE_ERRORS)
         if not (command == "tag" and code in PROVOKED)]  # the tag command's reads are the dataset tests' own


@contextmanager
def refusing(folder: Path, code: int) -> Iterator[None]:
    """Every open, folder creation, rename and link under `folder` fails with `code`, as the OS would say it."""
    inside = os.path.abspath(folder)

    def refused(path: Any) -> bool:
        if isinstance(path, int) or not isinstance(path, (str, bytes, os.PathLike)):
            return False
        text = os.path.abspath(os.fsdecode(os.fspath(path)))
        return text == inside or text.startswith(inside + os.sep)

    def guard(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            for path in args[:2]:
                if refused(path):
                    raise OSError(code, os.strerror(code), os.fspath(path))
            return original(*args, **kwargs)

        return call

    targets = [(os, "open"), (os, "mkdir"), (os, "replace"), (os, "rename"), (os, "link"), (builtins, "open"),
               (io, "open")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]
    try:
        for owner, name, original in saved:
            setattr(owner, name, guard(original))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


_HOSTS: list[Any] = []


@pytest.fixture(autouse=True)
def tiny_model_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands check their files before loading a model; the demo loads it first (the tiny one, once here)."""
    import lib_lora.hosts.diffusers as diffusers

    original = diffusers.load_diffusers_host

    def load(model: str = "tiny", **kwargs: Any) -> Any:
        if not _HOSTS:
            _HOSTS.append(original("tiny"))
        return _HOSTS[0]

    monkeypatch.setattr(diffusers, "load_diffusers_host", load)


@pytest.mark.parametrize(("command", "code"), CASES, ids=[f"{c}-{errno.errorcode[e]}" for c, e in CASES])
def test_an_os_error_is_one_line_naming_the_path_and_the_cause_with_exit_2(files, tmp_path, capsys, command, code):
    kind, argv = COMMANDS[command]
    (tmp_path / A_FILE).write_text("a file where a folder is expected")
    (tmp_path / HOSTILE).mkdir()
    places: dict[int, tuple[Place, str]] = {
        errno.ENAMETOOLONG: (lambda name: tmp_path / f"{LONG}-{name}", LONG[:40]),
        errno.ENOTDIR: (lambda name: tmp_path / A_FILE / name, A_FILE),
    }
    place, named = places.get(code, (lambda name: tmp_path / HOSTILE / name, HOSTILE))
    if kind == "read" and code in PROVOKED:
        source = {"in.safetensors": files.lora, "in.txt": None, "in.toml": files.config}
        for name, original in source.items():
            if original is not None:
                shutil.copy(original, place(name))
            else:
                place(name).write_text("MINE:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n", encoding="utf-8")
    before = sorted(path.name for path in tmp_path.rglob("*"))
    with refusing(tmp_path / HOSTILE, code):
        result = main(argv(files, place), out=io.StringIO())
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert result == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("lora-studio: error: "), err
    assert named in lines[0], lines[0]  # the path
    assert re.search(CAUSES[code], lines[0]), lines[0]  # the cause
    assert sorted(path.name for path in tmp_path.rglob("*")) == before  # nothing half written


def test_the_line_is_the_same_for_an_os_error_raised_anywhere(capsys, monkeypatch):
    """main's own mapping: an OSError no command turned into its own error still ends as one line, exit 2."""
    def fail(args: Any, out: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/" + "x" * 400)

    monkeypatch.setitem(cli_main.RUNNERS, "lora", fail)
    assert main(["lora", "info", "x"], out=io.StringIO()) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("lora-studio: error: /data/xxx") and "…" in line
    assert line.endswith("No space left on device (free some space or choose a folder on another disk)")
    assert len(line) < 400 and "\n" not in line
