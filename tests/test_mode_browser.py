"""A training mode from the Train tab in a real headless Chromium: the slider recipe, a prompt, Start, progress."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from browser_app import choose, field, open_page, tiny_app

pytestmark = pytest.mark.browser

QUICK = {"resolution": "64", "network_dim": "2", "network_alpha": "2", "max_train_steps": "400",
         "train_batch_size": "1"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The app on the tiny model, with an empty workspace: a slider needs no dataset."""
    with tiny_app(tmp_path_factory.mktemp("mode_app")) as app:
        yield app


def test_a_slider_starts_from_its_recipe_without_a_dataset_and_shows_progress(app):
    from playwright.sync_api import expect

    from lib_lora.train.recipes import RECIPES
    from lib_lora.ui.train.form import SECTION_TITLES

    url, workspace = app
    with open_page(url, height=1000) as (page, watch):
        expect(page.locator("#lora_studio_model_info")).to_contain_text("tiny", timeout=60_000)
        page.get_by_role("tab", name="Train").click()
        choose(page, "lora_studio_train_recipe", RECIPES["slider"].title)
        expect(page.locator("#lora_studio_train_status")).to_contain_text("loaded", timeout=30_000)
        expect(field(page, "lora_studio_train_training_mode")).to_have_value("slider")
        field(page, "lora_studio_train_output_name").fill("erase_red")
        page.locator("#lora_studio_train_advanced").get_by_text("Advanced", exact=True).click()
        section = "training_mode_arguments"
        page.locator(f"#lora_studio_train_section_{section}").get_by_text(SECTION_TITLES[section], exact=True).click()
        field(page, "lora_studio_train_slider_prompt").fill("red hair")
        for elem_id, value in QUICK.items():
            field(page, f"lora_studio_train_{elem_id}").fill(value)
        page.locator("#lora_studio_train_start").click()
        progress = page.locator("#lora_studio_train_progress")
        expect(progress).to_contain_text("step", timeout=60_000)
        first = progress.inner_text()
        expect(progress).not_to_have_text(first, timeout=60_000)
        page.locator("#lora_studio_train_stop").click()
        expect(page.locator("#lora_studio_train_status")).to_contain_text("Stopped and saved", timeout=60_000)
        saved = Path(field(page, "lora_studio_train_output").input_value())
        assert saved.parent.resolve() == (workspace / "Lora").resolve() and saved.is_file()
    watch.assert_clean()
