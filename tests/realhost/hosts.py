"""The real WebUI hosts (Forge Neo neo-2.26, AUTOMATIC1111 1.10.1) with LoRA Studio installed, started for tests.

Each host runs from the shared trees' `start.sh` in its own venv (`$LS_REALHOST_VENVS/{neo,a1111}`), in a fresh
work folder `/tmp/ls-realhost-<name>` made at its first start in a session: the tree copy, the cached test
checkpoint linked in (`$LS_REALHOST_MODELS/…`, made by `make test-hosts`), and `extensions/lora-studio` as a
symlink to this checkout. `HostPool` starts a host on first use and keeps at most one server running (Neo needs
about 5 GB of RAM); every server it started is stopped at the end (`close`), by its PID.

`RealHost.txt2img(**payload)` / `.img2img(**payload)` post the fixed base payload (64×64, 4 steps, seed 42,
Euler, cfg 7, "a photo of a cat") updated with `payload`, and cache the answer per (endpoint, payload) for the
session: a test that needs an image another test made gets it for free. `fresh=True` generates again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results import Generated, names_extension, tracebacks

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("LS_REALHOST_CACHE", Path.home() / ".cache" / "lora-studio-hosts"))
HOSTS_DIR = Path(os.environ.get("LS_REALHOST_HOSTS_DIR", ROOT.parent / "shared" / "hosts")).resolve()
NEO_DIR = Path(os.environ.get("LS_REALHOST_NEO_DIR") or HOSTS_DIR / "forge-neo")
A1111_DIR = Path(os.environ.get("LS_REALHOST_A1111_DIR") or HOSTS_DIR / "a1111-1.10.1")
"""The host folders (start.sh, make-model.py, webui/); the Makefile passes NEO_HOST_DIR and A1111_HOST_DIR."""
VENVS = Path(os.environ.get("LS_REALHOST_VENVS", CACHE))
MODELS = Path(os.environ.get("LS_REALHOST_MODELS", CACHE / "models"))
NEO_SDXL_CHECKPOINT = os.environ.get("LS_REALHOST_NEO_SDXL", "")
"""A full-size SDXL checkpoint for Neo (about 7 GB). Empty: the one `make test-hosts HOSTS_FULL=1` makes with
make_neo_sdxl.py (`<models>/neo-sdxl/random-sdxl.safetensors`); the SDXL tests skip while neither exists."""
WORK_ROOT = Path(os.environ.get("LS_REALHOST_WORK", "/tmp"))
NEO_PORT = int(os.environ.get("LS_REALHOST_NEO_PORT", "7871"))
A1111_PORT = int(os.environ.get("LS_REALHOST_A1111_PORT", "7872"))
"""Ports and the folder holding the work folders: change them to run beside another session of these tests."""
DUMP_DIR = os.environ.get("LS_REALHOST_DUMP", "")
"""When set, every generated image is saved there as `<host>-<n>.png` with its payload and infotext in `.txt`."""

BASE_PROMPT = "a photo of a cat"
BASE_PAYLOAD: dict[str, Any] = {
    "prompt": BASE_PROMPT, "negative_prompt": "", "width": 64, "height": 64, "steps": 4, "seed": 42,
    "sampler_name": "Euler", "cfg_scale": 7, "batch_size": 1, "n_iter": 1,
}
GENERATE_TIMEOUT = 900.0
STOP_TIMEOUT = 20.0
READY_TIMEOUT = 300.0
READY_LINE = "Startup time:"
"""Both hosts print this once the `app_started` callbacks ran (they add routes such as `/sdapi/v1/refresh-loras`);
start.sh returns earlier, as soon as `/sdapi/v1/sd-models` answers."""


class HostUnavailable(RuntimeError):
    """A host cannot be started here (venv, tree or checkpoint missing); the message says what to run."""


class HostRequestError(RuntimeError):
    """The host answered an API call with an error; the message holds the answer and the log's tail."""


@dataclass(frozen=True)
class HostSpec:
    """How to start one host: its tree, venv, port, checkpoint (linked into models/Stable-diffusion) and flags."""

    name: str
    kind: str  # "neo" or "a1111"
    arch: str  # "sd1" or "sdxl"
    port: int
    tree: Path
    venv: Path
    checkpoint: Path
    links: tuple[tuple[Path, str], ...] = ()
    """(cached file, path in the work folder) linked in besides the checkpoint."""
    copies: tuple[tuple[Path, str], ...] = ()
    """(cached folder, path in the work folder) copied in (folders the host may write into)."""
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    """Environment variables the server starts with."""
    skip_reason: str = ""

    @property
    def workdir(self) -> Path:
        return WORK_ROOT / f"ls-realhost-{self.name}"


def _a1111(name: str, model: str, arch: str, extra: Iterable[tuple[Path, str]] = ()) -> HostSpec:
    models = MODELS / "a1111"
    stable = models / "models" / "Stable-diffusion"
    return HostSpec(
        name=name, kind="a1111", arch=arch, port=A1111_PORT, tree=A1111_DIR, venv=VENVS / "a1111",
        checkpoint=stable / f"{model}.safetensors",
        links=((stable / f"{model}.yaml", f"models/Stable-diffusion/{model}.yaml"), *extra),
        copies=((models / "hf-home", "hf-home"),),
        flags=("--ckpt", f"models/Stable-diffusion/{model}.safetensors"),
    )


def host_specs() -> dict[str, HostSpec]:
    """Every host variant by name, in run order (Neo first)."""
    neo_tree = NEO_DIR
    sdxl_approx = MODELS / "a1111" / "models" / "VAE-approx" / "vaeapprox-sdxl.pt"
    neo_sdxl = Path(NEO_SDXL_CHECKPOINT) if NEO_SDXL_CHECKPOINT else MODELS / "neo-sdxl" / "random-sdxl.safetensors"
    specs = [
        HostSpec("neo", "neo", "sd1", NEO_PORT, neo_tree, VENVS / "neo",
                 MODELS / "neo" / "models" / "Stable-diffusion" / "random-sd15.safetensors"),
        # `--bf16-unet`: Neo on a CPU keeps everything in fp32 (a 10 GB SDXL UNet, plus what generation and training
        # need, overflows a 24 GB machine); stored in bf16, Neo computes in fp32 one layer at a time, as a user's
        # `--bf16-unet` does, and training recasts those layers in its backward pass. A fixed mmap threshold makes
        # glibc give the per-layer fp32 casts (tens of MB each) back to the system when freed: with its default
        # sliding threshold they stay in the heap (on SD1, 0.8 GB more RSS after one generation with a LoRA).
        HostSpec("neo-sdxl", "neo", "sdxl", NEO_PORT, neo_tree, VENVS / "neo", neo_sdxl, flags=("--bf16-unet",),
                 env=(("MALLOC_MMAP_THRESHOLD_", "131072"),),
                 skip_reason="" if neo_sdxl.exists() else (
                     "SDXL on Forge Neo needs a full-size SDXL checkpoint (about 7 GB; Neo recognises only full-size "
                     "models): `make test-hosts HOSTS_FULL=1` makes one, or set LS_REALHOST_NEO_SDXL to one")),
        _a1111("a1111", "tiny-sd1", "sd1"),
        _a1111("a1111-sdxl", "tiny-sdxl", "sdxl", [(sdxl_approx, "models/VAE-approx/vaeapprox-sdxl.pt")]),
    ]
    return {spec.name: spec for spec in specs}


def _post_json(url: str, body: Any, timeout: float) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


@dataclass
class RealHost:
    """One real WebUI with LoRA Studio: start/stop, its log, its HTTP API, generated images cached per payload."""

    spec: HostSpec
    pid: int | None = None
    starts: int = 0
    start_seconds: list[float] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    before_start: Callable[[], None] | None = field(default=None, repr=False)
    """Called before every start (the pool stops the other hosts there)."""
    _cache: dict[str, Generated] = field(default_factory=dict)
    _prepared: bool = False

    # --- what tests read ---------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def arch(self) -> str:
        return self.spec.arch

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    @property
    def workdir(self) -> Path:
        return self.spec.workdir

    @property
    def lora_dir(self) -> Path:
        return self.workdir / "models" / "Lora"

    @property
    def checkpoint(self) -> Path:
        return self.spec.checkpoint

    @property
    def log_path(self) -> Path:
        return self.workdir / "webui.log"

    @property
    def earlier_log_path(self) -> Path:
        """The logs of this session's earlier starts (start.sh starts `webui.log` afresh each time)."""
        return self.workdir / "webui.earlier.log"

    def _log_bytes(self) -> bytes:
        return b"".join(path.read_bytes() for path in (self.earlier_log_path, self.log_path) if path.exists())

    def log_text(self, since: int = 0) -> str:
        """The server log of every start of this session, from byte `since` on (see `log_mark`)."""
        return self._log_bytes()[since:].decode("utf-8", "replace")

    def log_mark(self) -> int:
        """The log's current size: pass it to `log_text`/`extension_tracebacks` to read what comes after."""
        return len(self._log_bytes())

    def extension_tracebacks(self, since: int = 0) -> list[str]:
        """The tracebacks in the log that name LoRA Studio's files (the hosts' own noise is left out)."""
        return [block for block in tracebacks(self.log_text(since)) if names_extension(block)]

    # --- the API -------------------------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 120.0) -> Any:
        """JSON from `method path`; HostRequestError with the answer and the log's tail on an HTTP error."""
        self.ensure_started()
        url = self.url + path
        try:
            if method == "GET":
                with urllib.request.urlopen(url, timeout=timeout) as answer:
                    return json.loads(answer.read() or b"null")
            return _post_json(url, body if body is not None else {}, timeout)
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:2000]
            tail = "\n".join(self.log_text().splitlines()[-40:])
            raise HostRequestError(f"{method} {path} on {self.name}: HTTP {error.code}: {detail}\n"
                                   f"--- last lines of {self.log_path}:\n{tail}") from None

    def txt2img(self, *, fresh: bool = False, **payload: Any) -> Generated:
        """The base payload updated with `payload`, generated (or from the session's cache unless `fresh`)."""
        return self._generate("txt2img", payload, fresh)

    def img2img(self, *, fresh: bool = False, **payload: Any) -> Generated:
        """As `txt2img`, on `/sdapi/v1/img2img` (give `init_images` and `denoising_strength`)."""
        return self._generate("img2img", payload, fresh)

    def refresh_loras(self) -> None:
        """Ask the built-in Lora to list the LoRA folder again (after writing files into it)."""
        self.api("POST", "/sdapi/v1/refresh-loras")

    def _generate(self, endpoint: str, payload: dict[str, Any], fresh: bool) -> Generated:
        body = {**BASE_PAYLOAD, **payload}
        key = hashlib.sha256(json.dumps([endpoint, body], sort_keys=True).encode()).hexdigest()
        if not fresh and key in self._cache:
            return self._cache[key]
        began = time.monotonic()
        answer = self.api("POST", f"/sdapi/v1/{endpoint}", body, timeout=GENERATE_TIMEOUT)
        seconds = time.monotonic() - began
        result = Generated.from_response(answer, body, seconds)
        self.timings.append((f"{endpoint} {'hires ' if body.get('enable_hr') else ''}{body['prompt']!r}", seconds))
        self._cache.setdefault(key, result)
        if DUMP_DIR:
            self._dump(result)
        return result

    def _dump(self, result: Generated) -> None:
        from PIL import Image

        folder = Path(DUMP_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{self.name}-{len(self.timings):03d}"
        Image.fromarray(result.image).save(stem.with_suffix(".png"))
        payload = {k: v for k, v in result.payload.items() if k != "init_images"}
        stem.with_suffix(".txt").write_text(f"{json.dumps(payload)}\n{result.seconds:.1f} s\n{result.infotext}\n")

    # --- start and stop -----------------------------------------------------------------------------------------

    def missing(self) -> list[str]:
        """What this host needs that is not here (empty when it can start)."""
        needs = [self.spec.tree / "start.sh", self.spec.venv / "bin" / "python", self.spec.checkpoint,
                 *(source for source, _ in self.spec.links), *(source for source, _ in self.spec.copies)]
        if self.kind == "a1111":  # the five repositories A1111 runs from (a copy that lost them cannot start)
            needs.append(self.spec.tree / "webui" / "repositories")
        return [str(path) for path in needs if not path.exists()]

    @property
    def running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    def ensure_started(self) -> None:
        """Start the server unless it runs (after `before_start`, which keeps the one-server rule)."""
        if not self.running:
            if self.before_start is not None:
                self.before_start()
            self.start()

    def start(self) -> None:
        """Prepare the work folder (fresh at the first start of the session), start the server, wait for its API."""
        if self.spec.skip_reason:
            raise HostUnavailable(self.spec.skip_reason)
        missing = self.missing()
        if missing:
            raise HostUnavailable(f"{self.name}: missing {', '.join(missing)} (run `make test-hosts` once)")
        if not self._prepared:
            self._prepare_workdir()
            self._prepared = True
        elif self.log_path.exists():  # keep the earlier start's log: start.sh truncates webui.log
            with self.earlier_log_path.open("ab") as earlier:
                earlier.write(self.log_path.read_bytes())
        began = time.monotonic()
        command = ["bash", str(self.spec.tree / "start.sh"), str(self.spec.venv), str(self.workdir),
                   str(self.spec.port), *self.spec.flags]
        env = dict(os.environ, START_TIMEOUT=os.environ.get("START_TIMEOUT", "600"), **dict(self.spec.env))
        for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_CURRENT_TEST", "HF_HOME"):
            env.pop(name, None)
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.workdir)
        pid_file = self.workdir / "webui.pid"
        if done.returncode != 0:
            if pid_file.exists():  # start.sh gave up waiting: the server may still be running
                self.pid = int(pid_file.read_text().strip() or 0) or None
                self.stop()
            raise HostUnavailable(f"{self.name} did not start (start.sh exit {done.returncode}):\n"
                                  f"{done.stderr[-3000:]}")
        self.pid = int(done.stdout.strip().splitlines()[-1])
        self._wait_until_ready()
        self.starts += 1
        self.start_seconds.append(time.monotonic() - began)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while READY_LINE not in self.log_path.read_text(errors="replace"):
            if not self.running or time.monotonic() > deadline:
                tail = "\n".join(self.log_text().splitlines()[-40:])
                self.stop()
                raise HostUnavailable(f"{self.name} answered but never logged {READY_LINE!r}:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server this object started (SIGTERM, then SIGKILL after STOP_TIMEOUT); no-op when stopped."""
        pid, self.pid = self.pid, None
        if pid is None or not _pid_alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def _prepare_workdir(self) -> None:
        """A fresh work folder: checkpoint and files linked, folders copied, the extension symlinked."""
        workdir = self.workdir
        self._stop_stale_server()
        if workdir.exists():
            shutil.rmtree(workdir)
        targets = [(self.spec.checkpoint, f"models/Stable-diffusion/{self.spec.checkpoint.name}"), *self.spec.links]
        for source, relative in targets:
            _link(source, workdir / relative)
        for source, relative in self.spec.copies:
            shutil.copytree(source, workdir / relative, symlinks=True)
        (workdir / "extensions").mkdir(parents=True, exist_ok=True)
        (workdir / "extensions" / "lora-studio").symlink_to(ROOT, target_is_directory=True)

    def _stop_stale_server(self) -> None:
        """A server an earlier, interrupted session left running in this work folder (its pid file names it)."""
        pid_file = self.workdir / "webui.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            return
        if Path(cwd) == self.workdir and _pid_alive(pid):
            self.pid = pid
            self.stop()


def _link(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (the host sees a plain file), else a symlink."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        target.symlink_to(source.resolve())


class HostPool:
    """The session's hosts by name; `get` starts one on first use and stops any other (one server at a time)."""

    def __init__(self, specs: dict[str, HostSpec] | None = None) -> None:
        self.hosts = {name: RealHost(spec) for name, spec in (specs or host_specs()).items()}
        for host in self.hosts.values():
            host.before_start = lambda host=host: self._stop_others(host)

    def get(self, name: str) -> RealHost:
        """The host called `name`, running (started now if needed; the others stopped first)."""
        host = self.hosts[name]
        host.ensure_started()
        return host

    def _stop_others(self, keep: RealHost) -> None:
        for other in self.hosts.values():
            if other is not keep:
                other.stop()

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop()
