"""Every image-LoRA recipe starts on the real A1111 (headless Chromium, the Train tab): chosen in the tab on the
checkpoint of its family (tiny-sd1, tiny-sdxl in the full set), with only the size of the run made small (1 step at
64 px), Start trains the step and writes the LoRA, or, when the recipe's optimizer needs a package the WebUI's venv
lacks, is refused before any work with a message naming the package and the fix, while the recipe's card and the
optimizer's card say so and offer its Install button. Then choosing AdamW drops the recipe's DAdaptation arguments
(the page says which) and the same run trains. The Install button is not pressed: the host venvs are shared.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ui import choose, field_input, open_studio_tab

from lib_lora.train.optim import OPTIMIZERS
from lib_lora.train.recipes import RECIPES

RUN_TIMEOUT_MS = 600_000
SMALL = {"resolution": "64", "max_train_steps": "1", "train_batch_size": "1"}
ENDED = re.compile(r"Done:|Error|failed|Stopped|Unexpected")
IMAGE_LORA = [name for name, recipe in RECIPES.items() if recipe.values.get("training_mode", "lora") == "lora"]
"""The recipes that train from the dataset folder alone (the slider, difference and rounds recipes need their
mode's own inputs; tests/test_mode_browser.py starts one in the standalone app)."""
SD1 = [name for name in IMAGE_LORA if "sdxl" not in name]
SDXL = [name for name in IMAGE_LORA if "sdxl" in name]


@pytest.fixture(scope="module")
def a1111_sdxl(request: pytest.FixtureRequest, host_pool: Any) -> Any:
    """A1111 1.10.1 on tiny-sdxl (the full set), started."""
    from conftest import _running, selected_hosts

    if "a1111-sdxl" not in selected_hosts(request.config):
        pytest.skip("a1111-sdxl is not among the selected hosts (the full set, or --hosts=a1111-sdxl)")
    return _running(host_pool, "a1111-sdxl")


def host_lacks(host: Any, package: str | None) -> bool:
    """Whether the host's venv lacks the module of `package` (asked of its own Python)."""
    if package is None:
        return False
    module = next(spec.module for spec in OPTIMIZERS.values() if spec.package == package).split(".")[0]
    python = host.spec.venv / "bin" / "python"
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(python), "-c", probe], timeout=60).returncode != 0


def shown(page: Any, elem_id: str) -> Any:
    """Our component `elem_id` (gradio 3.41 gives a Markdown's id to its block and to its text: the first)."""
    return page.locator(f"#{elem_id}").first


def open_train_tab(page: Any, dataset: Path) -> None:
    from playwright.sync_api import expect

    open_studio_tab(page)
    page.locator("#lora_studio_root button").filter(has_text=re.compile(r"^\s*Train\s*$")).first.click()
    expect(shown(page, "lora_studio_train_tab")).to_be_visible()
    dataset_field = field_input(page, "lora_studio_train_dataset")
    dataset_field.fill(str(dataset))
    dataset_field.press("Enter")
    expect(shown(page, "lora_studio_train_dataset_info")).to_contain_text("1_tinychar", timeout=60_000)


def start(page: Any) -> str:
    """Press Start, wait until the status says how it ended; its text."""
    from playwright.sync_api import expect

    status = shown(page, "lora_studio_train_status")
    page.locator("#lora_studio_train_start").click()
    expect(status).to_contain_text(ENDED, timeout=RUN_TIMEOUT_MS)
    return status.inner_text()


def assert_trained(page: Any, text: str, host: Any) -> None:
    assert "Done:" in text and "(1 steps" in text, text
    saved = Path(field_input(page, "lora_studio_train_output").input_value())
    assert saved.is_file() and host.lora_dir.resolve() in saved.resolve().parents


def recipe_starts(host: Any, host_page: Any, name: str) -> None:
    """The module docstring's acceptance for one recipe on `host`."""
    from playwright.sync_api import expect

    from lib_lora.tiny.images import generate_dataset

    recipe = RECIPES[name]
    dataset = host.workdir / "datasets" / "lsrecipes"
    if not dataset.is_dir():
        generate_dataset(dataset, count=2, seed=5, repeats=1, name="tinychar", sizes=((64, 64),))
    mark = host.log_mark()
    page, watch = host_page(host)
    open_train_tab(page, dataset)
    choose(page, "lora_studio_train_recipe", recipe.title)
    expect(shown(page, "lora_studio_train_status")).to_contain_text("loaded", timeout=60_000)
    field_input(page, "lora_studio_train_output_name").fill(f"lsrecipe-{name}")
    for field, value in SMALL.items():
        field_input(page, f"lora_studio_train_{field}").fill(value)
    recipe_card = shown(page, "lora_studio_train_recipe_info")
    optimizer_card = shown(page, "lora_studio_train_optimizer_info")
    expect(recipe_card).to_contain_text("Needs:", timeout=60_000)

    if host_lacks(host, recipe.package):
        package = str(recipe.package)
        expect(recipe_card).to_contain_text(f"{package} (for", timeout=60_000)
        expect(recipe_card).to_contain_text("not installed")
        expect(optimizer_card).to_contain_text(f"needs the Python package {package}", timeout=60_000)
        expect(shown(page, "lora_studio_train_install")).to_have_text(f"Install {package}")
        text = start(page)
        assert "Error" in text and f"'{package}'" in text and f"pip install {package}" in text, text
        assert not (host.lora_dir / f"lsrecipe-{name}.safetensors").exists()
        choose(page, "lora_studio_train_optimizer_type", "AdamW")
        status = shown(page, "lora_studio_train_status")
        expect(status).to_contain_text("dropped d0=1e-06", timeout=60_000)
        expect(status).to_contain_text("learning_rate 1.0 → 0.0001")
        expect(shown(page, "lora_studio_train_install")).to_be_hidden(timeout=60_000)
    assert_trained(page, start(page), host)
    assert host.extension_tracebacks(mark) == []
    assert watch.ours() == []


@pytest.mark.smoke
@pytest.mark.parametrize("name", SD1)
def test_each_sd1_recipe_starts_on_a1111(a1111: Any, host_page: Any, name: str) -> None:
    recipe_starts(a1111, host_page, name)


@pytest.mark.parametrize("name", SDXL)
def test_each_sdxl_recipe_starts_on_a1111_sdxl(a1111_sdxl: Any, host_page: Any, name: str) -> None:
    recipe_starts(a1111_sdxl, host_page, name)
