"""Tagging shared by several processes: the split, done-markers, and 2 processes under torchrun writing exactly the
captions of 1 process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib_lora.cli.main import main
from lib_lora.dataset.tagging.journal import JOURNAL_DIR_NAME
from lib_lora.dataset.tagging.models import resolve_model
from lib_lora.dataset.tagging.run import tag_folder
from lib_lora.dataset.tagging.shards import Shard, TagShardError
from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions
from lib_lora.tiny.images import generate_dataset, make_corrupt_files
from lib_lora.tiny.tagger import write_tiny_wd14_tagger

pytestmark = pytest.mark.hostcompat

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
OPTIONS = TaggerOptions(recursive=True, existing="append", trigger="tinychar", include_rating=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wd14_tagger(tmp_path_factory.mktemp("model")).directory


@pytest.fixture(scope="module")
def tagger(model: Path) -> Tagger:
    return Tagger.load(resolve_model(str(model)), providers=["cpu"])


def dataset(folder: Path, count: int = 11) -> Path:
    """Images in two subfolders, some captioned, one unreadable; the folder."""
    generate_dataset(folder, count=count, seed=2)
    data = generate_dataset(folder, count=5, seed=3, repeats=3, name="other")
    for path in data.caption_paths[::2]:
        path.unlink()
    make_corrupt_files(data.folder)
    return folder


def caption_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.txt"))
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)}


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, (0, 1, 0, 1)),
    ({"WORLD_SIZE": "1", "RANK": "0"}, (0, 1, 0, 1)),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, (3, 4, 1, 2)),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, (1, 2, 1, 2)),
])
def test_the_launchers_environment_is_read(environ: dict[str, str], expected: tuple[int, ...]) -> None:
    shard = Shard.from_environment(environ)
    assert (shard.rank, shard.world_size, shard.local_rank, shard.local_world_size) == expected


@pytest.mark.parametrize(("environ", "message"), [
    ({"WORLD_SIZE": "2", "RANK": "2"}, "process 2 of 2: the rank must be"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"}, "local process 3 of 2"),
])
def test_a_bad_environment_is_a_clear_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TagShardError, match=message):
        Shard.from_environment(environ)


def test_the_split_is_by_sorted_key_disjoint_and_complete() -> None:
    keys = [f"{i % 7}/{i:03d}.png" for i in range(50)]
    shares = [Shard(rank, 3, launch="x").take(keys, str) for rank in range(3)]
    assert sorted(k for share in shares for k in share) == sorted(keys)
    assert shares[0][:2] == sorted(keys)[0:6:3] and {len(s) for s in shares} == {16, 17}
    assert Shard(1, 3).take(list(reversed(keys)), str) == shares[1]  # the folder order does not matter


def test_processes_share_the_cores(tagger: Tagger, monkeypatch: pytest.MonkeyPatch) -> None:
    from lib_lora.dataset.tagging import tagger as tagger_module

    monkeypatch.setattr(tagger_module, "_physical_cores", lambda: 4)
    assert (tagger.plan().model_runs, tagger.plan(processes=2).model_runs, tagger.plan(processes=8).model_runs) == (
        4, 2, 1)


def test_two_shards_write_the_captions_of_one_process(tagger: Tagger, tmp_path: Path) -> None:
    single, sharded = dataset(tmp_path / "single"), dataset(tmp_path / "sharded")
    whole = tag_folder(single, tagger, OPTIONS)
    second = tag_folder(sharded, tagger, OPTIONS, shard=Shard(1, 2, launch="launch-1"))
    assert (sharded / JOURNAL_DIR_NAME).exists()  # the main process has not finished yet
    first = tag_folder(sharded, tagger, OPTIONS, shard=Shard(0, 2, launch="launch-1"))
    assert caption_bytes(sharded) == caption_bytes(single) and len(caption_bytes(single)) == 16
    assert not {r.image for r in first.results} & {r.image for r in second.results}
    assert first.counts() == whole.counts() and first.missing == []  # the main process sums both
    assert [Path(f[1]).name for f in first.failures()] == [Path(f[1]).name for f in whole.failures()] == [
        "truncated.png"]
    assert first.summary().endswith("2 processes)")
    assert not (sharded / JOURNAL_DIR_NAME).exists()  # every process done: the journal goes


def test_the_main_process_waits_for_the_others_with_a_bound(tagger: Tagger, tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    run_folder = folder / JOURNAL_DIR_NAME
    run_folder.mkdir()
    tag_folder(folder, tagger, OPTIONS, shard=Shard(1, 2, launch="earlier launch"))  # its marker is stale now
    from lib_lora.dataset.tagging.run import prepare_tagging

    run = prepare_tagging(folder, tagger, OPTIONS, shard=Shard(0, 2, launch="this launch"))
    report = run.run(patience=0.3)
    assert report.missing == [1] and "1" not in json.dumps(report.others)
    assert list(run_folder.iterdir())  # kept: process 2's share may be unfinished


def torchrun() -> Path:
    path = Path(sys.executable).parent / "torchrun"
    if not path.exists():
        pytest.skip("torchrun is not installed in this Python")
    return path


def test_two_processes_under_torchrun_write_exactly_the_captions_of_one(model: Path, tmp_path: Path) -> None:
    """The acceptance check: `torchrun --nproc_per_node 2 -m lib_lora tag` against one process, byte for byte."""
    launcher = torchrun()
    single, sharded = dataset(tmp_path / "single", count=20), dataset(tmp_path / "sharded", count=20)
    arguments = ["--model", str(model), "--recursive", "--existing", "append", "--trigger", "tinychar", "--rating"]
    out = io.StringIO()
    assert main(["tag", str(single), *arguments], out=out) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([str(launcher), "--nproc_per_node", "2", "-m", "lib_lora", "tag", str(sharded),
                             *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert caption_bytes(sharded) == caption_bytes(single) and len(caption_bytes(single)) == 25
    summaries = [line for line in result.stdout.splitlines() if line.startswith("tag: tagged")]
    expected = out.getvalue().splitlines()[-1].split(" in ")[0]
    assert len(summaries) == 1 and summaries[0].startswith(expected)  # printed once, for both processes
    assert "tagging [process 1 of 2]" in result.stderr and "tagging [process 2 of 2]" in result.stderr
    assert not (sharded / JOURNAL_DIR_NAME).exists()
