"""The Block Weight tab in the real host's UI (headless Chromium): Generate and the XY grid run through the WebUI's
own processing, keep the seed, steps and size entered, record what the WebUI applied, and give the image its API
gives for the same prompt and settings, pixel for pixel."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from checks import assert_same, prompt_with
from hosts import BASE_PROMPT
from results import Generated, infotext_fields

PRESET = "NCNF"
SETTINGS = {"seed": "42", "steps": "4", "cfg": "7", "width": "64", "height": "64"}
GRID_SEEDS = (42, 43)


def open_block_weight_tab(page: Any, lora: str) -> None:
    """LoRA Studio → Block Weight; pick `lora` and PRESET; type the prompt and SETTINGS."""
    from playwright.sync_api import expect
    from ui import choose, open_studio_tab

    open_studio_tab(page)
    page.locator("#lora_studio_root button").filter(has_text="Block Weight").first.click()
    expect(page.locator("#lora_studio_blocks_status").first).to_contain_text("LoRA(s) found", timeout=120_000)
    choose(page, "lora_studio_blocks_lora", lora)
    expect(page.locator("#lora_studio_blocks_lora_info").first).to_contain_text("blocks with modules", timeout=60_000)
    choose(page, "lora_studio_blocks_preset", PRESET)
    expect(page.locator("#lora_studio_blocks_tag textarea")).to_have_value(f"<lora:{lora}:1:{PRESET}>",
                                                                            timeout=60_000)
    page.locator("#lora_studio_blocks_prompt textarea").fill(BASE_PROMPT)
    for key, value in SETTINGS.items():
        page.locator(f"#lora_studio_blocks_{key} input").fill(value)


def api_twin(host: Any, prompt: str, infotext: str, seed: int) -> Generated:
    """What the host's API gives for `prompt` with the sampler and schedule the tab's infotext names."""
    fields = infotext_fields(infotext)
    payload: dict[str, Any] = {"prompt": prompt, "seed": seed, "sampler_name": fields["Sampler"]}
    if "Schedule type" in fields:
        payload["scheduler"] = fields["Schedule type"]
    return host.txt2img(**payload)


def shown_image(page: Any, host: Any, elem_id: str) -> np.ndarray:
    """The pixels of the image our gradio Image `elem_id` shows (fetched as the browser fetched it)."""
    from PIL import Image

    source = page.locator(f"#{elem_id} img").first.get_attribute("src") or ""
    if source.startswith("data:"):  # gradio 3.41 inlines the image
        body = base64.b64decode(source.split(",", 1)[1])
    else:
        body = page.request.get(source if source.startswith("http") else f"{host.url}/{source.lstrip('/')}").body()
    with Image.open(io.BytesIO(body)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


@pytest.mark.smoke
def test_generate_keeps_what_was_entered_and_matches_the_api(host, loras, host_page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    page, watch = host_page(host)
    open_block_weight_tab(page, loras.plain)
    page.locator("#lora_studio_blocks_generate").click()
    infotext_box = page.locator("#lora_studio_blocks_infotext textarea")
    expect(infotext_box).not_to_have_value("", timeout=600_000)
    infotext = infotext_box.input_value()
    fields = infotext_fields(infotext)
    assert (fields.get("Steps"), fields.get("Seed"), fields.get("Size")) == ("4", "42", "64x64"), infotext
    assert fields.get("Lora block weights") == f"{loras.plain}: te=1, unet=1, blocks={PRESET}", infotext
    prompt = prompt_with(f"<lora:{loras.plain}:1:{PRESET}>")
    twin = api_twin(host, prompt, infotext, 42)
    tab = Generated(shown_image(page, host, "lora_studio_blocks_image"), {}, infotext, None, 0.0, {"prompt": prompt})
    assert_same(tab, twin, "the Block Weight tab's image vs the API's")
    assert watch.ours() == [], watch.errors


def test_the_grid_s_seed_axis_reaches_every_cell(host, loras, host_page) -> None:  # noqa: ANN001
    from PIL import Image
    from playwright.sync_api import expect

    from lib_lora.blocks.grid import GRID_SETTINGS_KEY

    page, watch = host_page(host)
    open_block_weight_tab(page, loras.plain)
    page.locator("#lora_studio_blocks_x_axis textarea").fill("seed: " + ", ".join(map(str, GRID_SEEDS)))
    page.locator("#lora_studio_blocks_y_axis textarea").fill("strength: 1")
    page.locator("#lora_studio_blocks_grid_run").click()
    expect(page.locator("#lora_studio_blocks_grid_progress").first).to_contain_text(
        f"done · {len(GRID_SEEDS)}/{len(GRID_SEEDS)}", timeout=900_000)
    saved = Path(page.locator("#lora_studio_blocks_grid_path textarea").input_value())
    with Image.open(saved) as grid:
        cells = json.loads(grid.info[GRID_SETTINGS_KEY])["cells"]
    seeds = sorted(int(infotext_fields(cell["parameters"])["Seed"]) for cell in cells)
    assert seeds == list(GRID_SEEDS), cells
    for cell in cells:
        fields = infotext_fields(cell["parameters"])
        assert (fields.get("Steps"), fields.get("Size")) == ("4", "64x64"), cell
    assert watch.ours() == [], watch.errors
