"""pytest fixtures over the Forge Neo stand-in: import the ones a test file uses (`pytest_plugins`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lib_lora.hosts.forge_neo import ForgeNeoHost

from .forge_modules import Options, install_neo_modules, make_neo_opts
from .forge_neo import build_engine


@pytest.fixture
def neo_opts() -> Options:
    return make_neo_opts()


@pytest.fixture(params=["sd1", "sdxl"])
def neo_arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def neo_engine(neo_arch: str, neo_opts: Options):
    return build_engine(neo_arch, neo_opts)


@pytest.fixture
def neo(monkeypatch: pytest.MonkeyPatch, neo_engine, neo_opts: Options) -> SimpleNamespace:
    """The fake Neo packages, installed for the test's duration, serving `neo_engine`."""
    return install_neo_modules(monkeypatch, neo_engine, neo_opts)


@pytest.fixture
def neo_host(neo: SimpleNamespace) -> ForgeNeoHost:
    return ForgeNeoHost.from_webui()

