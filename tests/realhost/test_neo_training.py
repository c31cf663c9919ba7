"""Training in the real Forge Neo UI (headless Chromium): the Train tab on Neo's SD1.5 checkpoint (and on the SDXL
one in the full set), with a LoRA merged into the weights before the run, makes a LoRA file with its card; the
images without LoRA and with a plain LoRA are pixel-identical before and after the run (the base was restored bit
for bit, Neo merged the plain LoRA again); the new LoRA, loaded by Neo's built-in Lora, changes the image; no
traceback names LoRA Studio.

Field ids are those of tests/test_browser_train.py (the same tab in the standalone app). The run is short (2 steps
at 64 px, one sample image at the last step): a full-size SD1.5 on a 2-core CPU takes minutes per step.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hosts import BASE_PROMPT
from ui import choose, field_input, open_studio_tab

TRAIN_TIMEOUT_MS = 1_800_000
SCREENSHOT = Path("/tmp/lora_studio_neo_train.png")
ADVANCED = {  # small and quick on a CPU: 2 steps at 64 px, rank 4, no conv layers, fp32
    "resolution": "64", "network_dim": "4", "network_alpha": "4", "conv_dim": "", "conv_alpha": "",
    "train_batch_size": "1", "max_train_steps": "2", "caption_extension": ".txt", "sample_every_n_steps": "2",
    "learning_rate": "0.01",
}


def make_dataset(host: Any) -> Path:
    """`<workdir>/datasets/lstrain` holding `1_tinychar` (2 generated 64 px images with captions)."""
    from lib_lora.tiny.images import generate_dataset

    root = host.workdir / "datasets" / "lstrain"
    shutil.rmtree(root, ignore_errors=True)
    generate_dataset(root, count=2, seed=3, repeats=1, name="tinychar", sizes=((64, 64),))
    return root


def train_in_the_tab(page: Any, dataset: Path, name: str) -> Path:
    """Fill the Train tab (the form's defaults: LoRA, AdamW; the small ADVANCED values), start, wait until done;
    returns the LoRA file. (The recipes use optimizers Neo's venv lacks, such as DAdaptLion.)"""
    from playwright.sync_api import expect

    open_studio_tab(page)
    page.locator("#lora_studio_root").get_by_role("tab", name="Train").click()
    expect(page.locator("#lora_studio_train_tab")).to_be_visible()
    dataset_field = field_input(page, "lora_studio_train_dataset")
    dataset_field.fill(str(dataset))
    dataset_field.press("Enter")
    expect(page.locator("#lora_studio_train_dataset_info")).to_contain_text("1_tinychar", timeout=60_000)
    field_input(page, "lora_studio_train_output_name").fill(name)
    field_input(page, "lora_studio_train_trigger").fill("tinychar")
    field_input(page, "lora_studio_train_prompts").fill("tinychar, solo --w 64 --h 64 --s 2")
    page.locator("#lora_studio_train_advanced").get_by_text("Advanced", exact=True).click()
    page.locator("#lora_studio_train_section_training_arguments").get_by_text("Training", exact=True).click()
    for elem_id, value in ADVANCED.items():
        field_input(page, f"lora_studio_train_{elem_id}").fill(value)
    choose(page, "lora_studio_train_mixed_precision", "no")
    page.locator("#lora_studio_train_start").click()
    status = page.locator("#lora_studio_train_status")
    try:
        expect(status).to_contain_text(re.compile(r"Done:|failed|Stopped|refused|Error|cannot"),
                                       timeout=TRAIN_TIMEOUT_MS)
    finally:
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert "Done:" in status.inner_text(), f"the run did not finish: {status.inner_text()}"
    return Path(field_input(page, "lora_studio_train_output").input_value())


@pytest.mark.smoke
def test_train_tab_on_neo_restores_the_model_and_makes_a_working_lora(neo, host_page) -> None:  # noqa: ANN001
    trains_in_the_tab_and_restores_the_model(neo, host_page)


def test_train_tab_on_neo_sdxl_restores_the_model_and_makes_a_working_lora(neo_sdxl, host_page) -> None:  # noqa: ANN001
    trains_in_the_tab_and_restores_the_model(neo_sdxl, host_page)


def trains_in_the_tab_and_restores_the_model(neo: Any, host_page: Any) -> None:
    """The acceptance of the module docstring, on `neo` (an SD1.5 or SDXL Neo)."""
    from conftest import host_loras

    loras = host_loras(neo)
    with_plain = f"{BASE_PROMPT} <lora:{loras.plain}:1>"
    before_plain, before_lora = neo.txt2img(), neo.txt2img(prompt=with_plain)  # the LoRA is merged in Neo now
    assert not np.array_equal(before_plain.image, before_lora.image)
    dataset = make_dataset(neo)
    mark = neo.log_mark()

    page, watch = host_page(neo)
    for stale in neo.lora_dir.glob("lsneotrained*"):  # earlier runs' files, which Neo listed when it started
        stale.unlink()
    saved = train_in_the_tab(page, dataset, f"lsneotrained{time.time_ns() % 10**9}")  # a name Neo has not listed
    assert saved.is_file() and saved.suffix == ".safetensors"
    assert neo.lora_dir.resolve() in saved.resolve().parents  # where Neo's built-in Lora finds it
    assert (saved.parent / f"{saved.stem}.json").is_file()  # the card
    assert page.locator("#lora_studio_train_sample img").first.is_visible()  # the sample went through Neo

    after_plain = neo.txt2img(fresh=True)
    after_lora = neo.txt2img(prompt=with_plain, fresh=True)
    assert np.array_equal(after_plain.image, before_plain.image), "the base weights changed"
    assert np.array_equal(after_lora.image, before_lora.image), "the plain LoRA no longer gives the same image"

    # no refresh first: Neo's built-in Lora lists its folder again when a prompt names a LoRA it does not know
    trained = neo.txt2img(prompt=f"{BASE_PROMPT} <lora:{saved.stem}:1>", fresh=True)
    assert not np.array_equal(trained.image, before_plain.image), "Neo's Lora did not apply the trained LoRA"
    assert neo.extension_tracebacks(mark) == []
    assert watch.ours() == []
