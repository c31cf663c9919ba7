"""The Block Weight tab in a real headless Chromium: pick a LoRA and a preset, generate, run a 2×2 XY grid, and
find the grid on disk; the console stays clean (tiny SD1 model, 2 steps, 64 px)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from blocks_testing import write_lora
from browser_app import chromium_path, open_page, serve_app

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/lora_studio_blocks.png")
CHAR_17 = "1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The app on a workspace whose Lora/ holds `part`, a random LoRA written before the server starts."""
    chromium_path()
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host

    root = tmp_path_factory.mktemp("blocks_app")
    workspace = root / "workspace"
    write_lora(load_diffusers_host("tiny"), workspace / "Lora" / "part.safetensors", blocks={"BASE", "IN04", "OUT05"})
    with serve_app(["--model", "tiny", "--workspace", str(workspace)], root) as url:
        yield url, workspace


def choose(page, elem_id: str, option: str) -> None:
    """Pick `option` in the gradio dropdown `elem_id` the way a user does."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_pick_generate_and_grid(app):
    from playwright.sync_api import expect

    url, workspace = app
    with open_page(url, height=1400) as (page, watch):
        expect(page).to_have_title("LoRA Studio", timeout=60_000)
        page.get_by_role("tab", name="Block Weight").click()
        status = page.locator("#lora_studio_blocks_status")
        expect(status).to_contain_text("1 LoRA(s) found", timeout=60_000)

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
            'Lora block weights: "part: te=1, unet=1, blocks=CHAR"')

        page.locator("#lora_studio_blocks_x_axis textarea").fill("preset: NONE, CHAR")
        expect(page.locator("#lora_studio_blocks_y_axis textarea")).to_have_value("strength: 0.5, 1")
        page.locator("#lora_studio_blocks_grid_run").click()
        expect(page.locator("#lora_studio_blocks_grid_image img")).to_be_visible(timeout=180_000)
        expect(page.locator("#lora_studio_blocks_grid_progress")).to_contain_text("done · 4/4")
        saved = Path(page.locator("#lora_studio_blocks_grid_path textarea").input_value())
        expect(status).to_contain_text(f"XY grid saved to {saved}")
        page.wait_for_timeout(500)  # let late console messages arrive
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert saved.is_file() and saved.parent == workspace / "lora_studio" / "grids" and saved.name.endswith("-xy.png")
    watch.assert_clean()
