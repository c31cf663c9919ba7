"""The Block Weight tab in a real headless Chromium: pick a LoRA and a preset, generate, run a 2×2 XY grid, and
find the grid on disk; cancel a running grid; the analyzer on a LoRA that changes nothing; the vector box refusing
what it cannot take and loading a typed preset name. The console stays clean (tiny SD1 model, 64 px)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from blocks_testing import write_lora
from browser_app import choose, chromium_path, open_page, save_screenshot, serve_app

pytestmark = pytest.mark.browser

CHAR_17 = "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The app on a workspace whose Lora/ holds `part`, a random LoRA written before the server starts."""
    chromium_path()
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host

    root = tmp_path_factory.mktemp("blocks_app")
    workspace = root / "workspace"
    host = load_diffusers_host("tiny")
    write_lora(host, workspace / "Lora" / "part.safetensors", blocks={"BASE", "IN04", "OUT05"})
    write_lora(host, workspace / "Lora" / "flat.safetensors", blocks={"IN04"}, strength=1e-6)  # changes nothing
    with serve_app(["--model", "tiny", "--workspace", str(workspace)], root) as url:
        yield url, workspace


def open_tab(page) -> Any:
    """The Block Weight tab, once it has read the LoRA folder; returns the status line."""
    from playwright.sync_api import expect

    expect(page).to_have_title("LoRA Studio", timeout=60_000)
    page.get_by_role("tab", name="Block Weight").click()
    status = page.locator("#lora_studio_blocks_status")
    expect(status).to_contain_text("2 LoRA(s) found", timeout=60_000)
    return status


def fill_settings(page, **values: str) -> None:
    for key, value in values.items():
        page.locator(f"#lora_studio_blocks_{key} input").fill(value)


def test_pick_generate_and_grid(app):
    from playwright.sync_api import expect

    url, workspace = app
    with open_page(url, height=1400) as (page, watch):
        status = open_tab(page)
        expect(page.locator("#lora_studio_blocks_settings_note")).to_contain_text("small test model")
        expect(page.locator("#lora_studio_blocks_width input")).to_have_value("64")  # fitted to the tiny model

        choose(page, "lora_studio_blocks_lora", "part")
        expect(page.locator("#lora_studio_blocks_lora_info")).to_contain_text("blocks with modules: BASE, IN04, OUT05",
                                                                              timeout=30_000)
        choose(page, "lora_studio_blocks_preset", "CHAR")
        expect(page.locator("#lora_studio_blocks_tag textarea")).to_have_value("<lora:part:1:CHAR>", timeout=30_000)
        expect(page.locator("#lora_studio_blocks_vector textarea")).to_have_value(CHAR_17)
        expect(page.locator("#lora_studio_blocks_w03")).to_contain_text("IN04")

        page.locator("#lora_studio_blocks_prompt textarea").fill("a cat")
        for key, value in (("steps", "2"), ("cfg", "1"), ("width", "64"), ("height", "64")):
            page.locator(f"#lora_studio_blocks_{key} input").fill(value)
        page.locator("#lora_studio_blocks_generate").click()
        expect(page.locator("#lora_studio_blocks_image img")).to_be_visible(timeout=120_000)
        expect(page.locator("#lora_studio_blocks_infotext textarea")).to_have_value(
            "a cat <lora:part:1:CHAR>\nSteps: 2, CFG scale: 1, Seed: 0, Size: 64x64, Model: tiny, "
            'Lora block weights: "part: te=1, unet=1, blocks=CHAR", Lora modules matched: "part: 42 of 42"')

        page.locator("#lora_studio_blocks_x_axis textarea").fill("preset: NONE, CHAR")
        expect(page.locator("#lora_studio_blocks_y_axis textarea")).to_have_value("strength: 0.5, 1")
        page.locator("#lora_studio_blocks_grid_run").click()
        expect(page.locator("#lora_studio_blocks_grid_image img")).to_be_visible(timeout=180_000)
        expect(page.locator("#lora_studio_blocks_grid_progress")).to_contain_text("done · 4/4 (100%)")
        saved = Path(page.locator("#lora_studio_blocks_grid_path textarea").input_value())
        expect(status).to_contain_text(f"XY grid saved to {saved}")
        page.wait_for_timeout(500)  # let late console messages arrive
        save_screenshot(page, "blocks")
    assert saved.is_file() and saved.parent == workspace / "lora_studio" / "grids" and saved.name.endswith("-xy.png")
    watch.assert_clean()


def test_a_running_grid_is_cancelled(app):
    from playwright.sync_api import expect

    url, workspace = app
    before = set((workspace / "lora_studio" / "grids").glob("*.png"))
    with open_page(url, height=1400) as (page, watch):
        status = open_tab(page)
        choose(page, "lora_studio_blocks_lora", "part")
        fill_settings(page, steps="40", cfg="1", width="64", height="64")
        page.locator("#lora_studio_blocks_x_axis textarea").fill("seed: 1, 2, 3, 4, 5, 6, 7, 8")
        page.locator("#lora_studio_blocks_grid_run").click()
        progress = page.locator("#lora_studio_blocks_grid_progress")
        expect(progress).to_contain_text("ETA", timeout=120_000)
        expect(progress).to_contain_text("step")  # progress within a cell
        page.locator("#lora_studio_blocks_grid_cancel").click()
        expect(status).to_contain_text("An XY grid was cancelled after", timeout=120_000)
        expect(progress).to_contain_text("cancelled")
        page.locator("#lora_studio_blocks_generate").click()  # the model is free again
        expect(status).to_contain_text("Generated with", timeout=120_000)
    assert set((workspace / "lora_studio" / "grids").glob("*.png")) == before  # nothing saved
    watch.assert_clean()


def test_the_analyzer_says_when_a_lora_changes_nothing(app):
    from playwright.sync_api import expect

    url, _ = app
    with open_page(url, height=1600) as (page, watch):
        status = open_tab(page)
        choose(page, "lora_studio_blocks_lora", "flat")
        fill_settings(page, steps="2", cfg="1", width="64", height="64")
        page.locator("#lora_studio_blocks_analyzer_panel").get_by_text("Effective block analyzer").click()
        page.locator("#lora_studio_blocks_analyzer_run").click()
        expect(status).to_contain_text("The LoRA has no measurable effect here", timeout=240_000)
        expect(status).not_to_contain_text("most effective")
        table = page.locator("#lora_studio_blocks_analyzer_table")
        expect(table).to_contain_text("BASE")
        expect(table.locator("tbody tr").first).to_contain_text("–")  # unranked, not 1
    watch.assert_clean()


def test_the_vector_box_refuses_bad_input_and_loads_a_typed_preset(app):
    from playwright.sync_api import expect

    url, _ = app
    with open_page(url, height=1400) as (page, watch):
        status = open_tab(page)
        choose(page, "lora_studio_blocks_lora", "part")
        box = page.locator("#lora_studio_blocks_vector textarea")
        tag = page.locator("#lora_studio_blocks_tag textarea")
        expect(tag).to_have_value("<lora:part:1:ALL>", timeout=30_000)
        box.fill("CHRA")
        box.press("Enter")
        note = page.locator("#lora_studio_blocks_vector_note")
        expect(note).to_contain_text("Not applied", timeout=30_000)
        expect(note).to_contain_text("did you mean CHAR")
        expect(tag).to_have_value("<lora:part:1:ALL>")  # sliders and tag keep the last weights
        expect(page.locator("#lora_studio_blocks_w01 input[type=number]")).to_have_value("1")
        page.locator("#lora_studio_blocks_generate").click()
        expect(status).to_contain_text("did you mean CHAR", timeout=30_000)  # Generate refuses the same way

        box.fill("CHAR")
        box.press("Enter")
        expect(box).to_have_value(CHAR_17, timeout=30_000)
        expect(tag).to_have_value("<lora:part:1:CHAR>")
        expect(note).not_to_contain_text("Not applied")
        expect(page.locator("#lora_studio_blocks_preset input")).to_have_value("CHAR")
        expect(page.locator("#lora_studio_blocks_w01 input[type=number]")).to_have_value("0")
    watch.assert_clean()


def test_a_per_block_sweep_with_lbw_random_weights_records_the_seed(app):
    import json
    import re

    from PIL import Image
    from playwright.sync_api import expect

    from lib_lora.blocks.grid import GRID_SETTINGS_KEY

    url, _ = app
    with open_page(url, height=1400) as (page, watch):
        open_tab(page)
        choose(page, "lora_studio_blocks_lora", "part")
        box = page.locator("#lora_studio_blocks_vector textarea")
        box.fill(",".join(["1"] + ["R"] * 15 + ["U"]))
        box.press("Enter")
        expect(page.locator("#lora_studio_blocks_vector_note")).not_to_contain_text("Not applied", timeout=30_000)
        fill_settings(page, steps="2", cfg="1", width="64", height="64", random_seed="7")
        page.locator("#lora_studio_blocks_x_axis textarea").fill("block-off: IN04, OUT05")
        page.locator("#lora_studio_blocks_y_axis textarea").fill("strength: 1")
        page.locator("#lora_studio_blocks_grid_run").click()
        expect(page.locator("#lora_studio_blocks_grid_progress")).to_contain_text("done · 2/2", timeout=180_000)
        saved = Path(page.locator("#lora_studio_blocks_grid_path textarea").input_value())
    with Image.open(saved) as grid:
        cells = json.loads(grid.info[GRID_SETTINGS_KEY])["cells"]
    records = [dict(re.findall(r'(Lora (?:random|block) weights): "([^"]*)"', cell["parameters"])) for cell in cells]
    assert len(records) == 2 and all("seed 7" in record["Lora random weights"] for record in records), records
    assert records[0]["Lora block weights"] != records[1]["Lora block weights"]  # a different block off in each
    watch.assert_clean()
