"""Fixtures for the real-host acceptance tests (`make test-hosts`): hosts, their LoRA files, a browser.

- `host` (session scope, parametrized): each selected host variant by name, Neo first ("neo", "a1111"; with
  `LS_REALHOST_FULL=1` or `--hosts-full` also "neo-sdxl" (skipped while its checkpoint is missing: `make
  test-hosts HOSTS_FULL=1` makes it) and "a1111-sdxl"). `--hosts=neo,a1111` picks some. The fixtures `neo`,
  `neo_sdxl` and `a1111` are the same objects by name.
- `loras`: the host's test LoRAs (`LoraSet`), written into its LoRA folder once per session; for the `neo`/`a1111`
  fixtures call `loras.host_loras(host)`.
- `host_page`: `host_page(host)` opens a Chromium page on the host's UI (pages closed after the test).
Only one server runs at a time (`hosts.HostPool`): tests are sorted by host, so each host starts once.
A host that cannot start here (no venv/checkpoint) skips its tests, and fails them when CI=true.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from hosts import HostPool, HostUnavailable, RealHost, host_specs  # noqa: E402
from loras import LoraSet, host_loras  # noqa: E402

SMOKE_HOSTS = ("neo", "a1111")
FILE_ORDER = ("test_real_startup", "test_real_records", "test_real_block_weights", "test_real_dataset")
"""Within a host, these files run first and in this order, then any other file, then LAST_FILE."""
LAST_FILE = "test_real_log"
"""The whole-log check runs after every generation and UI action on its host."""

_POOL: HostPool | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("realhost", "real WebUI hosts")
    group.addoption("--hosts-full", action="store_true", default=False,
                    help="also the SDXL hosts (A1111 tiny-sdxl; Neo with LS_REALHOST_NEO_SDXL)")
    group.addoption("--hosts", default="", help="comma-separated host names to run (default: all of the mode)")


def selected_hosts(config: pytest.Config) -> list[str]:
    """The host names this run uses, in run order: `--hosts` as given, else the smoke hosts or (full) all."""
    chosen = [name.strip() for name in str(config.getoption("--hosts") or "").split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(host_specs()))
    if unknown:
        raise pytest.UsageError(f"unknown host(s) {unknown}; known: {', '.join(host_specs())}")
    if chosen:
        return [name for name in host_specs() if name in chosen]
    full = config.getoption("--hosts-full") or os.environ.get("LS_REALHOST_FULL", "") not in ("", "0")
    return list(host_specs()) if full else list(SMOKE_HOSTS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host" in metafunc.fixturenames:
        names = selected_hosts(metafunc.config)
        metafunc.parametrize("host", names, indirect=True, scope="session", ids=names)


def _host_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "host" in callspec.params:
        return str(callspec.params["host"])
    names = getattr(item, "fixturenames", ())
    return next((name for name in host_specs() if name.replace("-", "_") in names), None)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests by host (Neo first) and order the files within a host, so each host starts once."""
    order = list(host_specs())
    position = {id(item): index for index, item in enumerate(items)}

    def key(item: pytest.Item) -> tuple[int, int, int]:
        host = _host_of(item)
        module = Path(str(item.fspath)).stem
        rank = FILE_ORDER.index(module) if module in FILE_ORDER else len(FILE_ORDER) + (module == LAST_FILE)
        return (order.index(host) if host in order else len(order), rank, position[id(item)])

    items.sort(key=key)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def host_pool() -> Iterator[HostPool]:
    global _POOL
    pool = _POOL = HostPool()
    atexit.register(pool.close)  # also when the session dies before its teardown
    try:
        yield pool
    finally:
        pool.close()


def _running(pool: HostPool, name: str) -> RealHost:
    host = pool.hosts[name]
    if host.spec.skip_reason:
        pytest.skip(host.spec.skip_reason)
    missing = host.missing()
    if missing:
        _unavailable(f"{name}: missing {', '.join(missing)} (run `make test-hosts` once; the host folders are "
                     "NEO_HOST_DIR/A1111_HOST_DIR there, LS_REALHOST_NEO_DIR/LS_REALHOST_A1111_DIR here)")
    try:
        return pool.get(name)
    except HostUnavailable as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def host(request: pytest.FixtureRequest, host_pool: HostPool) -> RealHost:
    """The parametrized host, started (the others stopped)."""
    return _running(host_pool, request.param)


@pytest.fixture(scope="session")
def neo(request: pytest.FixtureRequest, host_pool: HostPool) -> RealHost:
    """Forge Neo on SD1.5 (random full-size checkpoint), started."""
    if "neo" not in selected_hosts(request.config):
        pytest.skip("neo is not among the selected hosts")
    return _running(host_pool, "neo")


@pytest.fixture(scope="session")
def neo_sdxl(request: pytest.FixtureRequest, host_pool: HostPool) -> RealHost:
    """Forge Neo on SDXL (random full-size checkpoint, the full set only), started."""
    if "neo-sdxl" not in selected_hosts(request.config):
        pytest.skip("neo-sdxl is not among the selected hosts")
    return _running(host_pool, "neo-sdxl")


@pytest.fixture(scope="session")
def a1111(request: pytest.FixtureRequest, host_pool: HostPool) -> RealHost:
    """A1111 1.10.1 on tiny-sd1, started."""
    if "a1111" not in selected_hosts(request.config):
        pytest.skip("a1111 is not among the selected hosts")
    return _running(host_pool, "a1111")


@pytest.fixture
def loras(host: RealHost) -> LoraSet:
    """The host's test LoRAs (loras.host_loras: written once per session, then listed by the host)."""
    return host_loras(host)


@pytest.fixture(scope="session")
def host_browser() -> Iterator[Any]:
    from ui import HostBrowser

    browser = HostBrowser()
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def host_page(host_browser: Any) -> Iterator[Callable[..., tuple[Any, Any]]]:
    """`host_page(host)` → (page, watch): a page on the host's UI; closed after the test."""
    try:
        yield host_browser.open
    finally:
        host_browser.close_pages()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Per host: starts and their seconds, images generated and their seconds (the figures the README quotes)."""
    if _POOL is None:
        return
    lines = []
    for host in _POOL.hosts.values():
        if not host.starts and not host.timings:
            continue
        starts = ", ".join(f"{seconds:.0f}" for seconds in host.start_seconds)
        line = f"{host.name}: {host.starts} start(s) [{starts} s]"
        if host.timings:
            seconds = [s for _, s in host.timings]
            median = sorted(seconds)[len(seconds) // 2]
            line += (f", {len(seconds)} image(s): first {seconds[0]:.1f} s, median {median:.1f} s, "
                     f"max {max(seconds):.1f} s, total {sum(seconds):.0f} s")
        lines.append(line)
    if lines:
        terminalreporter.write_sep("-", "real hosts")
        for line in lines:
            terminalreporter.write_line(line)
