"""`python -m lib_lora tag`: captions written with the trigger word, a summary line; an unusable folder or
model is one line on stderr and exit code 2."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lib_lora.cli.main import main
from lib_lora.dataset.tagging.models import REGISTRY
from lib_lora.tiny.images import generate_dataset, make_corrupt_files
from lib_lora.tiny.tagger import write_tiny_wd14_tagger

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wd14_tagger(tmp_path_factory.mktemp("model")).directory


def uncaptioned(folder: Path) -> list[Path]:
    data = generate_dataset(folder, count=4, seed=6)
    for path in data.caption_paths[1:]:
        path.unlink()
    return list(data.caption_paths)


def test_tags_a_folder_and_prints_a_summary(model: Path, tmp_path: Path) -> None:
    captions = uncaptioned(tmp_path)
    kept = captions[0].read_text(encoding="utf-8")
    make_corrupt_files(captions[0].parent)
    out = io.StringIO()
    code = main(["tag", str(tmp_path), "--model", str(model), "--recursive", "--trigger", "tinychar",
                 "--general-threshold", "0.3", "--max-tags", "6", "--rating"], out=out)
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"tag: model {model.name} (folder: {model}), running on CPUExecutionProvider"
    assert lines[-1].startswith("tag: tagged 3, skipped 1 (existing caption), unreadable 1, not written 0")
    assert sum("left out" in line for line in lines) == 2 and sum("unreadable:" in line for line in lines) == 1
    assert captions[0].read_text(encoding="utf-8") == kept
    for path in captions[1:]:
        tags = path.read_text(encoding="utf-8").strip().split(", ")
        assert tags[:2] == ["tinychar", "general"] and len(tags) <= 8


def test_existing_policy_and_caption_extension(model: Path, tmp_path: Path) -> None:
    captions = uncaptioned(tmp_path)
    out = io.StringIO()
    assert main(["tag", str(tmp_path), "--model", str(model), "--recursive", "--caption-ext", ".caption",
                 "--existing", "overwrite", "--keep-underscores"], out=out) == 0
    written = [p.with_suffix(".caption") for p in captions]
    assert all(p.is_file() for p in written)
    assert any("_" in p.read_text(encoding="utf-8") for p in written)
    assert not any(p.exists() for p in captions[1:])


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}/missing", "--model", "{model}"], "missing: no such folder"),
    (["{tmp}/data", "--model", "{tmp}/data", "--recursive"], "model.onnx and selected_tags.csv missing"),
    (["{tmp}/data", "--model", "no-such-tagger", "--recursive"], "neither a folder nor a known model"),
    (["{tmp}/data", "--model", "wd-eva02-large-tagger-v3", "--recursive"], "the hub is offline"),
    (["{tmp}/data", "--model", "{model}"], "no images to tag (images in subfolders are tagged with --recursive)"),
    (["{tmp}/data", "--model", "{model}", "--general-threshold", "2"], "general_threshold must be"),
    (["{tmp}/data", "--model", "{model}", "--caption-ext", "txt"], "caption_ext: caption extension 'txt'"),
])
def test_unusable_folder_or_model_is_one_line_and_exit_2(args: list[str], message: str, model: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    generate_dataset(tmp_path / "data", count=1)
    code = main(["tag", *(a.format(tmp=tmp_path, model=model) for a in args)], out=io.StringIO())
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("lora-studio: error: ") and message in err[0]


def test_runs_as_a_module(model: Path, tmp_path: Path) -> None:
    captions = uncaptioned(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "lib_lora", "tag", str(tmp_path), "--model", str(model),
                             "--recursive", "--trigger", "tinychar, 1girl"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tag: tagged 3, skipped 1" in result.stdout and "tagging" in result.stderr  # the bar is on stderr
    assert all(p.read_text(encoding="utf-8").startswith("tinychar, 1girl, ") for p in captions[1:])
    missing = subprocess.run([sys.executable, "-m", "lib_lora", "tag", str(tmp_path / "nope"), "--model",
                              str(model)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0


class FakeHub(http.server.ThreadingHTTPServer):
    """A loopback stand-in for the hub's `/{repo}/resolve/{commit}/{file}`: HEAD gives the commit, ETag and size,
    GET the bytes; any other commit is a 404, so a download that was not pinned fails."""

    def __init__(self, repo_id: str, commit: str, files: dict[str, bytes]) -> None:
        self.routes = {f"/{repo_id}/resolve/{commit}/{name}": data for name, data in files.items()}
        self.commit, self.requests = commit, []
        super().__init__(("127.0.0.1", 0), FakeHubHandler)


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def _head(self) -> bytes | None:
        self.server.requests.append((self.command, self.path))
        data = self.server.routes.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.server.commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._head()

    def do_GET(self) -> None:  # noqa: N802
        data = self._head()
        if data is not None:
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_downloads_a_known_model_at_its_pinned_commit(model: Path, tmp_path: Path) -> None:
    """End to end: the CLI fetches model.onnx and selected_tags.csv from a (loopback) hub, then tags."""
    pinned = REGISTRY["wd-vit-tagger-v3"]
    files = {name: (model / name).read_bytes() for name in ("model.onnx", "selected_tags.csv")}
    hub = FakeHub(pinned.repo_id, pinned.revision, files)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        captions = uncaptioned(tmp_path / "data")
        env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
        result = subprocess.run(
            [sys.executable, "-m", "lib_lora", "tag", str(tmp_path / "data"), "--model", "wd-vit-tagger-v3",
             "--recursive", "--cache-dir", str(tmp_path / "cache")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        hub.shutdown()
        hub.server_close()
    assert result.returncode == 0, result.stderr
    assert "tag: model wd-vit-tagger-v3 (download: " in result.stdout and "tag: tagged 3" in result.stdout
    assert "downloading wd-vit-tagger-v3/model.onnx" in result.stderr  # the download's progress bar
    assert {path.split("/")[-1] for method, path in hub.requests if method == "GET"} == set(files)
    snapshot = tmp_path / "cache" / "models--SmilingWolf--wd-vit-tagger-v3" / "snapshots" / pinned.revision
    assert (snapshot / "model.onnx").read_bytes() == files["model.onnx"]
    assert all(p.exists() for p in captions)
