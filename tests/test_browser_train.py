"""Issue #6's acceptance in a real headless Chromium: choose a dataset and the character recipe, start, watch the
progress and a sample appear, stop and save, see the file, with a clean console."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from browser_app import choose, field, open_page, save_screenshot, tiny_app

pytestmark = pytest.mark.browser

TINY = {  # what the tiny CPU model needs on top of the recipe: small, quick, still running when stopped
    "resolution": "64", "network_dim": "4", "network_alpha": "4", "conv_dim": "", "conv_alpha": "",
    "train_batch_size": "1", "max_train_steps": "400", "caption_extension": ".txt", "sample_every_n_steps": "2",
    "mixed_precision": "no",
}


def character_recipe() -> str:
    """The title the recipe dropdown shows for the SD1 character recipe."""
    from lib_lora.train.recipes import RECIPES

    return RECIPES["character-sd1"].title


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The app on the tiny model, with a generated `datasets/10_tinychar` in its workspace."""
    with tiny_app(tmp_path_factory.mktemp("train_app"), dataset=(10, "tinychar")) as app:
        yield app


def test_train_from_the_character_recipe_then_stop_and_save(app):
    from playwright.sync_api import expect

    url, workspace = app
    recipe = character_recipe()
    dataset = str((workspace / "datasets").resolve())
    with open_page(url, height=1000) as (page, watch):
        expect(page.locator("#lora_studio_model_info")).to_contain_text("tiny", timeout=60_000)
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#lora_studio_train_tab")).to_be_visible()

        choose(page, "lora_studio_train_dataset", dataset)
        expect(page.locator("#lora_studio_train_dataset_info")).to_contain_text("10_tinychar", timeout=30_000)
        choose(page, "lora_studio_train_recipe", recipe)
        expect(page.locator("#lora_studio_train_status")).to_contain_text("loaded", timeout=30_000)
        field(page, "lora_studio_train_output_name").fill("tinychar")
        field(page, "lora_studio_train_trigger").fill("tinychar")
        field(page, "lora_studio_train_prompts").fill("tinychar, solo --s 1")
        page.locator("#lora_studio_train_advanced").get_by_text("Advanced", exact=True).click()
        page.locator("#lora_studio_train_section_training_arguments").get_by_text("Training", exact=True).click()
        for elem_id, value in TINY.items():
            if elem_id == "mixed_precision":
                choose(page, "lora_studio_train_mixed_precision", value)
            else:
                field(page, f"lora_studio_train_{elem_id}").fill(value)
        page.locator("#lora_studio_train_estimate_button").click()
        expect(page.locator("#lora_studio_train_estimate")).to_contain_text("LoRA weights", timeout=30_000)

        page.locator("#lora_studio_train_start").click()
        progress = page.locator("#lora_studio_train_progress")
        expect(progress).to_contain_text("step", timeout=60_000)
        first = progress.inner_text()
        expect(progress).not_to_have_text(first, timeout=60_000)  # it moves on while the page stays live
        expect(page.locator("#lora_studio_train_sample img")).to_be_visible(timeout=60_000)
        expect(page.locator("#lora_studio_train_curve img")).to_be_visible()

        page.locator("#lora_studio_train_stop").click()
        status = page.locator("#lora_studio_train_status")
        expect(status).to_contain_text("Stopped and saved", timeout=60_000)
        saved = Path(field(page, "lora_studio_train_output").input_value())
        assert saved.parent.resolve() == (workspace / "Lora").resolve()
        assert saved.name.startswith("tinychar-") and saved.suffix == ".safetensors" and saved.is_file()
        assert (saved.parent / f"{saved.stem}.json").is_file()
        page.wait_for_timeout(500)  # let late console messages arrive
        save_screenshot(page, "train")
    watch.assert_clean()


# --- what the tab says in every state of a run ----------------------------------------------------------------

QUICK = {"resolution": "64", "network_dim": "2", "network_alpha": "2", "max_train_steps": "400",
         "train_batch_size": "1", "caption_extension": ".txt"}
"""The basic fields a tiny run needs (no Advanced panel, no periodic samples: sample_every_n_steps stays empty)."""


def start_run(page: Any, workspace: Path, name: str) -> Any:
    """Open the Train tab, fill the form for a tiny run named `name`, press Start, wait for its first step."""
    from playwright.sync_api import expect

    expect(page.locator("#lora_studio_model_info")).to_contain_text("tiny", timeout=60_000)
    page.get_by_role("tab", name="Train").click()
    choose(page, "lora_studio_train_dataset", str((workspace / "datasets").resolve()))
    expect(page.locator("#lora_studio_train_dataset_info")).to_contain_text("10_tinychar", timeout=30_000)
    field(page, "lora_studio_train_output_name").fill(name)
    field(page, "lora_studio_train_prompts").fill("tinychar, solo --s 1")
    for elem_id, value in QUICK.items():
        field(page, f"lora_studio_train_{elem_id}").fill(value)
    page.locator("#lora_studio_train_start").click()
    progress = page.locator("#lora_studio_train_progress")
    expect(progress).to_contain_text("step", timeout=60_000)
    return progress


def stop_run(page: Any) -> Any:
    from playwright.sync_api import expect

    page.locator("#lora_studio_train_stop").click()
    status = page.locator("#lora_studio_train_status")
    expect(status).to_contain_text("Stopped and saved", timeout=60_000)
    return status


def test_a_reloaded_page_shows_the_run_going_by_itself(app):
    from playwright.sync_api import expect

    url, workspace = app
    with open_page(url, height=1000) as (page, watch):
        start_run(page, workspace, "reattached")
        page.reload(wait_until="domcontentloaded")
        page.get_by_role("tab", name="Train").click()
        status = page.locator("#lora_studio_train_status")
        expect(status).to_contain_text("Training reattached, step", timeout=60_000)  # no Show progress pressed
        progress = page.locator("#lora_studio_train_progress")
        expect(progress).to_contain_text("step", timeout=30_000)
        first = progress.inner_text()
        expect(progress).not_to_have_text(first, timeout=60_000)  # and it follows the run
        stop_run(page)
        page.wait_for_timeout(500)
    watch.assert_clean()


def test_start_pressed_again_says_which_run_is_going(app):
    from playwright.sync_api import expect

    url, workspace = app
    with open_page(url, height=1000) as (page, watch):
        start_run(page, workspace, "twice")
        page.locator("#lora_studio_train_start").click()
        status = page.locator("#lora_studio_train_status")
        expect(status).to_contain_text(re.compile(r"already running: twice, step \d+ of 400"), timeout=30_000)
        stop_run(page)
        page.wait_for_timeout(500)
    watch.assert_clean()


def test_a_stopped_run_is_saved_with_its_preview_and_the_status_says_where(app):
    url, workspace = app
    with open_page(url, height=1000) as (page, watch):
        start_run(page, workspace, "stopped")
        status = stop_run(page).inner_text()
        saved = Path(field(page, "lora_studio_train_output").input_value())
        assert saved.is_file() and saved.name.startswith("stopped-step")
        assert str(saved) in status and f"preview {saved.stem}.preview.png" in status
        assert saved.with_name(f"{saved.stem}.preview.png").is_file()  # made at the stop: no sample came before
        page.wait_for_timeout(500)
    watch.assert_clean()


def test_hints_follow_every_change_including_a_recipe_and_an_optimizer_switch(app):
    """The dataset's caption warning, the VRAM estimate and the optimizer's card are recomputed after one field
    changes and after a recipe or an optimizer switch changes many at once."""
    from playwright.sync_api import expect

    url, workspace = app
    info, estimate = "#lora_studio_train_dataset_info", "#lora_studio_train_estimate"
    with open_page(url, height=1000) as (page, watch):
        expect(page.locator("#lora_studio_model_info")).to_contain_text("tiny", timeout=60_000)
        page.get_by_role("tab", name="Train").click()
        choose(page, "lora_studio_train_dataset", str((workspace / "datasets").resolve()))
        expect(page.locator(info)).to_contain_text("10_tinychar", timeout=30_000)
        field(page, "lora_studio_train_output_name").fill("hinted")
        field(page, "lora_studio_train_caption_extension").fill(".caption")
        field(page, "lora_studio_train_caption_extension").press("Tab")  # one field, left: its blur
        expect(page.locator(info)).to_contain_text("have no .caption caption", timeout=30_000)
        expect(page.locator(estimate)).to_contain_text("LoRA parameters", timeout=30_000)
        before = page.locator(estimate).inner_text()

        choose(page, "lora_studio_train_recipe", character_recipe())  # sets .txt, dim 16, DAdaptLion, d0=1e-06
        expect(page.locator(info)).not_to_contain_text("have no", timeout=30_000)
        expect(page.locator(estimate)).not_to_have_text(before, timeout=30_000)
        card = page.locator("#lora_studio_train_optimizer_info")
        expect(card).to_contain_text("dadaptation", timeout=30_000)
        assert "Needs:" in page.locator("#lora_studio_train_recipe_info").inner_text()

        choose(page, "lora_studio_train_optimizer_type", "AdamW")
        status = page.locator("#lora_studio_train_status")
        expect(status).to_contain_text("dropped d0=1e-06", timeout=30_000)
        expect(status).to_contain_text("learning_rate 1.0 → 0.0001")
        expect(card).not_to_contain_text("dadaptation", timeout=30_000)
        assert field(page, "lora_studio_train_learning_rate").input_value() == "0.0001"
        assert "d0" not in field(page, "lora_studio_train_optimizer_args").input_value()
        page.wait_for_timeout(500)  # let late console messages arrive
    watch.assert_clean()
