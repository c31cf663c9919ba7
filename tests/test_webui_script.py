"""scripts/lora_studio.py loaded as A1111 loads it, on the fake `modules` (install.py: tests/test_install.py)."""

from __future__ import annotations

import importlib.util
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
