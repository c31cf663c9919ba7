"""Choosing an epoch on each real host (headless Chromium, the Train tab): a run saves 4 epochs, the "Choose an
epoch" panel takes the finished run, shows the loader check at once, renders the grid through the WebUI's own
Lora (the files are new to it: it must find them), recommends one file and strength, and Keep moves the other
files into epochs/ with nothing lost; the WebUI logs no traceback."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

from test_real_recipes import open_train_tab, shown, start
from ui import field_input

RUN = {"resolution": "64", "max_train_steps": "400", "max_train_epochs": "4", "train_batch_size": "2",
       "network_dim": "2", "network_alpha": "2", "caption_extension": ".txt"}
NAME = "lscompare"
COMPARE_TIMEOUT_MS = 600_000


def digests(paths: list[Path]) -> list[str]:
    return sorted(hashlib.sha256(path.read_bytes()).hexdigest() for path in paths)


def test_the_epochs_of_a_run_are_compared_and_one_kept(host: Any, host_page: Any) -> None:
    from playwright.sync_api import expect

    from lib_lora.tiny.images import generate_dataset
    from lib_lora.ui.train.form import SECTION_TITLES

    dataset = host.workdir / "datasets" / "lscompare"
    if not dataset.is_dir():
        generate_dataset(dataset, count=2, seed=7, repeats=1, name="tinychar", sizes=((64, 64),))
    for old in [*host.lora_dir.glob(f"{NAME}*"), *host.lora_dir.glob(f"epochs/{NAME}*")]:  # an earlier run's
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    mark = host.log_mark()
    page, watch = host_page(host)
    open_train_tab(page, dataset)
    field_input(page, "lora_studio_train_output_name").fill(NAME)
    field_input(page, "lora_studio_train_prompts").fill("tinychar, solo --s 2 --w 64 --h 64")
    for key, value in RUN.items():
        field_input(page, f"lora_studio_train_{key}").fill(value)
    page.locator("#lora_studio_train_advanced").get_by_text("Advanced", exact=True).first.click()
    page.locator("#lora_studio_train_section_saving_arguments").get_by_text(
        SECTION_TITLES["saving_arguments"], exact=True).first.click()
    field_input(page, "lora_studio_train_save_every_n_epochs").fill("1")
    text = start(page)
    assert "Done:" in text, text
    saved = sorted(host.lora_dir.glob(f"{NAME}*.safetensors"))
    assert len(saved) == 4, saved
    before = digests(saved)

    page.locator("#lora_studio_train_compare_panel").get_by_text("Choose an epoch", exact=True).first.click()
    page.locator("#lora_studio_train_compare_use_run").click()
    status = shown(page, "lora_studio_train_compare_status")
    expect(status).to_contain_text(f"The files of the run {NAME}: 4", timeout=120_000)
    result = shown(page, "lora_studio_train_compare_result")
    expect(result).to_contain_text("Loader check:")
    field_input(page, "lora_studio_train_compare_strengths").fill("0.5, 1")
    page.locator("#lora_studio_train_compare_analyze").get_by_text("none", exact=True).first.click()
    page.locator("#lora_studio_train_compare_run").click()
    expect(status).to_contain_text(re.compile(r"Recommended: lscompare|comparison failed|Error"),
                                   timeout=COMPARE_TIMEOUT_MS)
    assert "Recommended" in status.inner_text(), status.inner_text()
    expect(page.locator("#lora_studio_train_compare_grid img").first).to_be_visible()
    expect(result).to_contain_text("combined score")

    page.locator("#lora_studio_train_compare_keep").click()
    expect(status).to_contain_text("3 other LoRA files (with their cards) moved into", timeout=60_000)
    kept = [host.lora_dir / f"{NAME}.safetensors", *sorted((host.lora_dir / "epochs").glob(f"{NAME}*.safetensors"))]
    assert digests(kept) == before
    assert host.extension_tracebacks(mark) == []
    assert watch.ours() == []
