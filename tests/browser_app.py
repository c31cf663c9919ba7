"""Drive the standalone app in a real headless Chromium: start the server, open a page that records errors.

Used by every `test_browser*.py`: `chromium_path()` (skip locally, fail in CI when Debian chromium is missing),
`serve_app(args, log_dir)` (`python -m lib_lora serve …` on a free port, always terminated) and `open_page(...)`
(a page whose console errors and outside requests are collected in `PageWatch`), `tiny_app(...)` (the app on the
tiny model with a workspace), and the two ways a test reaches a gradio field: `field(page, elem_id)` and
`choose(page, elem_id, option)`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# gradio 4.40's page template loads this script (iframe auto-resizing when embedded) from a CDN. Offline it
# fails with a console error that no app setting avoids, so the page is answered with an empty script. It is
# the only request allowed to leave 127.0.0.1; any other is recorded and fails the test.
GRADIO_TEMPLATE_CDN_SCRIPT = re.compile(
    r"^https://cdnjs\.cloudflare\.com/ajax/libs/iframe-resizer/[\d.]+/"
    r"iframeResizer\.contentWindow\.min\.js$"
)


SCREENSHOT_DIR_ENV = "LS_SCREENSHOT_DIR"
"""Where `save_screenshot` writes (default /tmp); `make screenshots` points it at docs/screenshots for the README."""


def save_screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot as `lora_studio_<name>.png` in $LS_SCREENSHOT_DIR (default /tmp); returns its path."""
    folder = Path(os.environ.get(SCREENSHOT_DIR_ENV) or "/tmp")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"lora_studio_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def chromium_path() -> str:
    """Debian's chromium; skips the test locally and fails it in CI when it is missing."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        reason = "Debian chromium is not installed (make browser, or apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM if os.path.exists(CHROMIUM) else str(shutil.which("chromium"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_app(args: Sequence[str], log_dir: Path, *, timeout: float = 180) -> Iterator[str]:
    """`python -m lib_lora serve --port P *args` until it answers; yields its URL, always terminated."""
    pytest.importorskip("diffusers")
    port = free_port()
    log_path = Path(log_dir) / "server.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lib_lora", "serve", "--port", str(port), *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, process, log_path, timeout)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the app did not answer on {url} within {timeout:.0f}s:\n{log_path.read_text()}")


@dataclass
class PageWatch:
    """Console errors, page errors and outside requests seen by a page; `assert_clean()` at the end."""

    errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.external == []


@contextmanager
def open_page(url: str, *, width: int = 1280, height: int = 900) -> Iterator[tuple[Any, PageWatch]]:
    """A Chromium page on `url` (loaded to DOMContentLoaded) and its PageWatch; the browser is always closed."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    watch = PageWatch()

    def answer_external(route: Any) -> None:
        if GRADIO_TEMPLATE_CDN_SCRIPT.match(route.request.url):
            route.fulfill(status=200, content_type="application/javascript", body="")
        else:
            watch.external.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda message: watch.errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: watch.errors.append(f"page error: {error}"))
            page.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z]+://"), answer_external)
            page.goto(url, wait_until="domcontentloaded")
            yield page, watch
        finally:
            browser.close()


@contextmanager
def tiny_app(root: Path, *, dataset: tuple[int, str] | None = None) -> Iterator[tuple[str, Path]]:
    """The app on the tiny model with `root/workspace` as its workspace (holding `datasets/<repeats>_<name>`, 2
    generated images, when `dataset` = (repeats, name)); yields (url, workspace)."""
    from lib_lora.tiny.images import generate_dataset

    chromium_path()
    workspace = root / "workspace"
    if dataset is not None:
        generate_dataset(workspace / "datasets", count=2, repeats=dataset[0], name=dataset[1])
    with serve_app(["--model", "tiny", "--workspace", str(workspace)], root) as url:
        yield url, workspace


def field(page: Any, elem_id: str) -> Any:
    """The text field inside one of our gradio textboxes or number boxes (found by our elem_id)."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def choose(page: Any, elem_id: str, option: str) -> None:
    """Pick `option` in the gradio dropdown `elem_id` through its list, as a user does."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()
