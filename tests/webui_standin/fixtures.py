"""pytest fixtures over the stand-in: import the ones a test file uses (`from webui_standin.fixtures import ...`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lib_lora.hosts.a1111 import A1111Host

from .fake_modules import install_fake_modules, make_opts
from .models import build_sd_model_standin


@pytest.fixture
def webui_opts() -> SimpleNamespace:
    return make_opts()


@pytest.fixture(params=["sd1", "sdxl"])
def standin_arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sd_model(standin_arch: str, webui_opts: SimpleNamespace):
    return build_sd_model_standin(standin_arch, webui_opts)


@pytest.fixture
def webui(monkeypatch: pytest.MonkeyPatch, sd_model, webui_opts: SimpleNamespace) -> SimpleNamespace:
    """The fake `modules` package, installed for the test's duration, serving `sd_model`."""
    return install_fake_modules(monkeypatch, sd_model, webui_opts)


@pytest.fixture
def a1111_host(webui: SimpleNamespace) -> A1111Host:
    return A1111Host.from_webui()
