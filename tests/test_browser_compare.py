"""Choosing an epoch in a real headless Chromium: a tiny run saves 4 epochs, the Train tab's "Choose an epoch" panel
takes the finished run, renders the grid, shows the recommendation and the loader check, and Keep moves the other
files into epochs/ — with a clean console."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from browser_app import choose, field, open_page, save_screenshot, tiny_app

pytestmark = pytest.mark.browser

RUN = {"resolution": "64", "network_dim": "2", "network_alpha": "2", "max_train_steps": "400",
       "max_train_epochs": "4", "train_batch_size": "2", "caption_extension": ".txt"}
"""A run of 4 epochs of one step each (2 images, batch 2)."""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The app on the tiny model, with a generated `datasets/1_tinychar` (2 images) in its workspace."""
    with tiny_app(tmp_path_factory.mktemp("compare_app"), dataset=(1, "tinychar")) as app:
        yield app


def train_four_epochs(page: Any, workspace: Path) -> None:
    """Fill the form for a 4-epoch run saving every epoch, start it, wait for its end."""
    from playwright.sync_api import expect

    from lib_lora.ui.train.form import SECTION_TITLES

    expect(page.locator("#lora_studio_model_info")).to_contain_text("tiny", timeout=60_000)
    page.get_by_role("tab", name="Train").click()
    choose(page, "lora_studio_train_dataset", str((workspace / "datasets").resolve()))
    expect(page.locator("#lora_studio_train_dataset_info")).to_contain_text("1_tinychar", timeout=30_000)
    field(page, "lora_studio_train_output_name").fill("epochy")
    field(page, "lora_studio_train_prompts").fill("tinychar, solo --s 1")
    for elem_id, value in RUN.items():
        field(page, f"lora_studio_train_{elem_id}").fill(value)
    page.locator("#lora_studio_train_advanced").get_by_text("Advanced", exact=True).click()
    page.locator("#lora_studio_train_section_saving_arguments").get_by_text(
        SECTION_TITLES["saving_arguments"], exact=True).click()
    field(page, "lora_studio_train_save_every_n_epochs").fill("1")
    page.locator("#lora_studio_train_start").click()
    expect(page.locator("#lora_studio_train_status")).to_contain_text("Done:", timeout=120_000)


def test_compare_the_epochs_of_a_finished_run_and_keep_the_recommended_one(app):
    from playwright.sync_api import expect

    url, workspace = app
    lora = workspace / "Lora"
    with open_page(url, height=1200) as (page, watch):
        train_four_epochs(page, workspace)
        assert sorted(p.name for p in lora.glob("*.safetensors")) == [
            "epochy-000001.safetensors", "epochy-000002.safetensors", "epochy-000003.safetensors",
            "epochy.safetensors"]

        page.locator("#lora_studio_train_compare_panel").get_by_text("Choose an epoch", exact=True).click()
        page.locator("#lora_studio_train_compare_use_run").click()
        status = page.locator("#lora_studio_train_compare_status")
        expect(status).to_contain_text("The files of the run epochy: 4", timeout=30_000)
        expect(field(page, "lora_studio_train_compare_width")).to_have_value("64")
        result = page.locator("#lora_studio_train_compare_result")
        expect(result).to_contain_text("Loader check: every key of every file applies in")  # before any image
        field(page, "lora_studio_train_compare_strengths").fill("0.5, 1")
        page.locator("#lora_studio_train_compare_analyze").get_by_text("none", exact=True).click()
        page.locator("#lora_studio_train_compare_run").click()

        expect(status).to_contain_text("Recommended: epochy", timeout=120_000)
        expect(page.locator("#lora_studio_train_compare_grid img")).to_be_visible()
        expect(result).to_contain_text("combined score")
        expect(result).to_contain_text("Loader check:")
        best = field(page, "lora_studio_train_compare_keep_pick").input_value()
        assert best.startswith("epochy")

        page.locator("#lora_studio_train_compare_keep").click()
        expect(status).to_contain_text("3 other LoRA files (with their cards) moved into", timeout=30_000)
        assert (lora / "epochy.safetensors").is_file()
        assert len(list((lora / "epochs").glob("*.safetensors"))) == 3
        page.wait_for_timeout(500)  # let late console messages arrive
        save_screenshot(page, "train_compare")
    watch.assert_clean()
