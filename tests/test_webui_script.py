"""scripts/lora_studio.py loaded as A1111 loads it, on the fake `modules`; install.py with a fake `launch`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from webui_standin.fake_extension_api import OptionInfo, install_extension_api
from webui_standin.fake_modules import install_fake_modules, make_opts

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]
SECTION = ("lora_studio", "LoRA Studio")


def exec_script(path: Path) -> ModuleType:
    """What `modules.script_loading.load_module` does: a spec named by the basename, not in sys.modules."""
    spec = importlib.util.spec_from_file_location(path.name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def webui(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    fake = install_fake_modules(monkeypatch, None, make_opts())
    return install_extension_api(
        monkeypatch, fake, models_path=tmp_path / "models", lora_dir=tmp_path / "my_loras"
    )


@pytest.fixture
def script(webui: SimpleNamespace) -> ModuleType:
    return exec_script(ROOT / "scripts" / "lora_studio.py")


def test_script_registers_tab_and_settings_callbacks(webui, script):
    assert [name for name, _ in webui.callbacks["ui_tabs"]] == ["lora_studio_tabs"]
    assert [name for name, _ in webui.callbacks["ui_settings"]] == ["lora_studio_settings"]
    assert webui.sd_model_reads == []


def test_on_ui_tabs_builds_the_tab_without_reading_the_model(webui, script):
    import gradio as gr

    ((_, on_ui_tabs),) = webui.callbacks["ui_tabs"]
    tabs = on_ui_tabs()
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert isinstance(blocks, gr.Blocks)
    assert (title, elem_id) == ("LoRA Studio", "lora_studio")
    assert webui.sd_model_reads == []


def test_refresh_in_the_webui_describes_the_loaded_model(webui, script):
    pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")
    from webui_standin.models import build_sd_model_standin

    from lib_lora.ui.compat import event_functions

    ((_, on_ui_tabs),) = webui.callbacks["ui_tabs"]
    blocks = on_ui_tabs()[0][0]
    (refresh, *_) = [fn for fn in event_functions(blocks) if fn.__name__ == "describe"]
    webui.allow_sd_model()
    assert (
        "no model is loaded" in refresh().lower()
    )  # A1111Host.from_webui raised HostError: shown, not raised
    webui.sd_model = build_sd_model_standin("sd1", make_opts())
    text = refresh()
    assert "a1111" in text and "sd1" in text and "ldm" in text


def test_settings_are_registered_headless_with_webui_paths(webui, script, tmp_path):
    templates = webui.shared.options_templates
    ours = {key: info for key, info in templates.items() if info.section == SECTION}
    assert set(ours) == {"lora_studio_output_dir", "lora_studio_tagger_dir", "lora_studio_dataset_roots"}
    assert ours["lora_studio_output_dir"].default == str(tmp_path / "my_loras")
    assert ours["lora_studio_tagger_dir"].default == str(tmp_path / "models" / "lora_studio" / "tagger")
    assert all(isinstance(info, OptionInfo) and info.label for info in ours.values())

    from lib_lora.webui import settings

    assert settings.trained_lora_dir() == tmp_path / "my_loras"
    webui.shared.opts.lora_studio_output_dir = str(tmp_path / "elsewhere")
    assert settings.trained_lora_dir() == tmp_path / "elsewhere"
    assert settings.tagger_model_dir() == tmp_path / "models" / "lora_studio" / "tagger"
    assert settings.dataset_roots() == [tmp_path]  # the WebUI's data folder
    webui.shared.opts.lora_studio_dataset_roots = f"{tmp_path / 'a'}; {tmp_path / 'b'}\n\n~/c"
    assert settings.dataset_roots() == [tmp_path, tmp_path / "a", tmp_path / "b", Path("~/c").expanduser()]


def test_lora_dir_defaults_to_models_lora_without_the_builtin_flag(monkeypatch, tmp_path):
    fake = install_fake_modules(monkeypatch, None, make_opts())
    webui = install_extension_api(monkeypatch, fake, models_path=tmp_path / "models")
    exec_script(ROOT / "scripts" / "lora_studio.py")
    assert webui.shared.options_templates["lora_studio_output_dir"].default == str(
        tmp_path / "models" / "Lora"
    )


def test_on_ui_settings_adds_missing_options_once(webui, script):
    ((_, on_ui_settings),) = webui.callbacks["ui_settings"]
    webui.shared.opts.data_labels.pop(
        "lora_studio_tagger_dir"
    )  # as if options_templates were not data_labels
    on_ui_settings()
    on_ui_settings()
    assert webui.shared.opts.data_labels["lora_studio_tagger_dir"].section == SECTION
    assert sum(key.startswith("lora_studio_") for key in webui.shared.opts.data_labels) == 3


# --- install.py ------------------------------------------------------------------------------------------

FAKE_LAUNCH = '''
"""A fake of the WebUI's `launch` module: records what install.py asks for."""
import json, os
INSTALLED = set(json.loads(os.environ["FAKE_LAUNCH_INSTALLED"]))
LOG = os.environ["FAKE_LAUNCH_LOG"]

def is_installed(package):
    with open(LOG, "a") as log:
        log.write("is_installed " + package + "\\n")
    return package in INSTALLED

def run_pip(command, desc=None):
    with open(LOG, "a") as log:
        log.write("run_pip " + command + "\\n")
'''


def run_installer(tmp_path: Path, installed: list[str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run install.py as the WebUI does: own process, cwd and PYTHONPATH = the (fake) WebUI root."""
    import json
    import os

    webui_root = tmp_path / "webui"
    webui_root.mkdir()
    (webui_root / "launch.py").write_text(FAKE_LAUNCH)
    log = tmp_path / "launch.log"
    env = dict(
        os.environ,
        PYTHONPATH=str(webui_root),
        FAKE_LAUNCH_LOG=str(log),
        FAKE_LAUNCH_INSTALLED=json.dumps(installed),
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "install.py")],
        cwd=webui_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, log.read_text().splitlines() if log.exists() else []


def requirement_names() -> list[str]:
    spec = importlib.util.spec_from_file_location("lora_studio_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name for name, _ in module.requirements((ROOT / "requirements.txt").read_text().splitlines())]


def test_install_is_silent_and_installs_nothing_when_all_present(tmp_path):
    result, calls = run_installer(tmp_path, installed=requirement_names())
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    assert not [call for call in calls if call.startswith("run_pip")]


def test_install_installs_only_missing_and_never_the_host_stack(tmp_path):
    result, calls = run_installer(tmp_path, installed=[])
    assert result.returncode == 0, result.stderr
    pips = [call.removeprefix("run_pip ") for call in calls if call.startswith("run_pip")]
    assert pips, "every non-host requirement is missing, so some must be installed"
    for host_package in ("torch", "gradio", "transformers", "huggingface_hub", "huggingface-hub"):
        assert not any(f'"{host_package}' in pip for pip in pips), pips
        assert f"is_installed {host_package}" not in calls
    assert all(
        pip.startswith('install "') and pip.endswith('"') for pip in pips
    )  # quoted: run_pip uses a shell


def test_install_skips_host_packages_even_when_listed():
    spec = importlib.util.spec_from_file_location("lora_studio_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launch = SimpleNamespace(is_installed=lambda name: name == "present")
    lines = [
        "torch>=2.0",
        "gradio==4.40",
        "Transformers",
        "huggingface_hub>=0.2",
        "# comment",
        "-r other.txt",
        "present>=1",
        "absent>=2  # trailing comment",
        "",
    ]
    assert module.missing(lines, launch) == ["absent>=2"]
