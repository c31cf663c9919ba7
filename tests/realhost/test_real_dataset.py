"""The Dataset tab in the real Forge Neo UI (headless Chromium): open a folder under the WebUI's data folder, edit a
caption as chips, save, undo, save; tag with a local WD14 tagger folder. The caption files are checked on disk
after each step. Selectors are those of tests/test_browser_dataset.py (the same tab in the standalone app). On every
host, the Train tab lists the dataset folders of the WebUI's data folder, not the WebUI's own folders.

Allowed roots in the WebUI (lib_lora/webui/settings.py): the WebUI's data folder (Neo's work folder here) plus the
folders in Settings; tagger models: one folder each in the `lora_studio_tagger_dir` setting's folder (default
`models/lora_studio/tagger`), holding model.onnx and selected_tags.csv as the hub repository does.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from ui import field_input, open_studio_tab

SUBSET = "3_tinychar"
COUNT = 4
TAGGER_NAME = "wd-vit-tagger-v3"
"""The tiny tagger's folder is named after a known model, as a user copies a hub repository into the folder."""


def make_dataset(host: Any) -> Path:
    """A fresh generated dataset `<workdir>/datasets/char/3_tinychar` (4 images, captions by the generator)."""
    from lib_lora.tiny.images import generate_dataset

    root = host.workdir / "datasets" / "char"
    shutil.rmtree(root, ignore_errors=True)
    generate_dataset(root, count=COUNT, seed=1, repeats=3, name="tinychar")
    return root


def caption_files(root: Path) -> dict[str, bytes]:
    """{image file name: caption bytes} of the subset."""
    folder = root / SUBSET
    images = {path.stem: path.name for path in folder.iterdir() if path.suffix.lower() in (".png", ".jpg")}
    return {images[path.stem]: path.read_bytes() for path in sorted(folder.glob("*.txt"))}


def load_dataset(page: Any, root: Path) -> Any:
    """Open the tab, load `root`, wait for its thumbnails; returns the thumbnails' locator."""
    from playwright.sync_api import expect

    open_studio_tab(page)
    thumbs = page.locator("#lora_studio_dataset_gallery [data-lora-studio-op='select']")
    field_input(page, "lora_studio_dataset_path").fill(str(root))
    page.locator("#lora_studio_dataset_load").click()
    expect(thumbs).to_have_count(COUNT, timeout=120_000)
    expect(page.locator("#lora_studio_dataset_message")).to_contain_text(f"{COUNT} images, {COUNT} with captions")
    return thumbs


@pytest.mark.smoke
def test_dataset_chip_edit_save_and_undo_in_neo(neo, host_page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    root = make_dataset(neo)
    before = caption_files(root)
    first = sorted(before)[0]
    tags = before[first].decode().strip().split(", ")
    removed = tags[1]
    page, watch = host_page(neo)
    thumbs = load_dataset(page, root)
    status = page.locator("#lora_studio_dataset_unsaved")
    message = page.locator("#lora_studio_dataset_message")

    thumbs.filter(has_text=first).click()
    chips = page.locator(f"#lora_studio_dataset_chips .lora-studio-chips[data-key='{SUBSET}/{first}']")
    expect(chips.locator(".lora-studio-chip")).to_have_count(len(tags))
    chips.locator(f".lora-studio-chip[data-tag='{removed}'] .lora-studio-chip-remove").click()
    expect(status).to_contain_text("1 unsaved caption")
    assert caption_files(root) == before, "an edit reached the disk before saving"

    page.locator("#lora_studio_dataset_save").click()
    expect(message).to_contain_text("Saved")
    expect(status).to_contain_text("All captions saved")
    edited = dict(before, **{first: (", ".join(t for t in tags if t != removed) + "\n").encode()})
    assert caption_files(root) == edited

    page.locator("#lora_studio_dataset_undo").click()
    expect(message).to_contain_text(f"Undid remove '{removed}'")
    expect(status).to_contain_text("1 unsaved caption")
    expect(chips.locator(f".lora-studio-chip[data-tag='{removed}']")).to_have_count(1)
    assert caption_files(root) == edited, "undo wrote to the disk before saving"
    page.locator("#lora_studio_dataset_save").click()
    expect(status).to_contain_text("All captions saved")
    assert caption_files(root) == before
    backups = root / ".lora_studio_backup" / SUBSET
    assert len(list(backups.iterdir())) == 2  # the caption as it was before each of the two saves
    page.wait_for_timeout(300)
    assert watch.ours() == [], watch.errors


def tagger_captions(root: Path, tagger: Path) -> dict[str, bytes]:
    """What the tagger writes with the tab's default options and existing=overwrite, by image name."""
    from lib_lora.dataset.folder import scan_dataset
    from lib_lora.dataset.images import open_image
    from lib_lora.dataset.tagging.models import resolve_model
    from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions
    from lib_lora.dataset.tags import join_tags

    items = scan_dataset(root).items
    model = Tagger.load(resolve_model(tagger))
    found = model.tag_images([open_image(item.image) for item in items], TaggerOptions(existing="overwrite"))
    return {item.image.name: (join_tags(tags) + "\n").encode() for item, tags in zip(items, found)}


def test_dataset_tagging_with_a_local_tagger_folder_in_neo(neo, host_page) -> None:  # noqa: ANN001
    pytest.importorskip("onnxruntime")
    from playwright.sync_api import expect

    from lib_lora.tiny.tagger import write_tiny_wd14_tagger

    # the setting's default (Neo's /sdapi/v1/options lists only saved values; a fresh host has none of ours)
    tagger_dir = Path(neo.api("GET", "/sdapi/v1/options").get("lora_studio_tagger_dir")
                      or neo.workdir / "models" / "lora_studio" / "tagger")
    tagger = tagger_dir / TAGGER_NAME
    write_tiny_wd14_tagger(tagger, input_size=64)
    root = make_dataset(neo)
    expected = tagger_captions(root, tagger)
    assert expected != caption_files(root)  # the tagger's captions are not the generator's

    page, watch = host_page(neo)
    load_dataset(page, root)
    page.locator("#lora_studio_dataset_tagger_refresh").click()
    field_input(page, "lora_studio_dataset_tagger_model").click()
    page.get_by_role("option", name=TAGGER_NAME, exact=True).click()
    page.locator("#lora_studio_dataset_tagger_existing").get_by_label("overwrite").check()
    page.locator("#lora_studio_dataset_tag_start").click()
    expect(page.locator("[data-lora-studio-job='done']")).to_be_visible(timeout=120_000)
    expect(page.locator("#lora_studio_dataset_message")).to_contain_text(f"Tagging finished: tagged {COUNT}")
    expect(page.locator("#lora_studio_dataset_unsaved")).to_contain_text("All captions saved")
    assert caption_files(root) == expected
    page.wait_for_timeout(300)
    assert watch.ours() == [], watch.errors


WEBUI_FOLDERS = ("modules", "repositories", "extensions", "models", "outputs", "html")


def dropdown_options(page: Any, elem_id: str) -> list[str]:
    """Open our dropdown `elem_id` and read its options (gradio 3.41 and 4 both label each with aria-label)."""
    from playwright.sync_api import expect

    field_input(page, elem_id).click()
    options = page.locator("[data-testid='dropdown-option']")
    expect(options.first).to_be_visible(timeout=60_000)
    return options.evaluate_all("items => items.map(item => item.getAttribute('aria-label'))")


@pytest.mark.smoke
def test_the_train_tab_lists_dataset_folders_not_the_webuis_own(host, host_page) -> None:  # noqa: ANN001
    """The dropdown holds the test dataset, named relative to the WebUI's data folder, and no folder of the WebUI
    (they hold code, previews and outputs); the name chosen is found (the dataset is described)."""
    from playwright.sync_api import expect

    make_dataset(host)
    page, watch = host_page(host)
    open_studio_tab(page)
    page.locator("#lora_studio_root button").filter(has_text=re.compile(r"^\s*Train\s*$")).first.click()
    options = dropdown_options(page, "lora_studio_train_dataset")
    assert "datasets/char" in options and f"datasets/char/{SUBSET}" in options, options
    own = [option for option in options if option.split("/")[0] in WEBUI_FOLDERS or option.startswith("/")]
    assert own == [], f"the WebUI's own folders are listed: {own[:10]}"
    page.locator("[data-testid='dropdown-option'][aria-label='datasets/char']").click()
    info = page.locator("#lora_studio_train_dataset_info").first
    expect(info).to_contain_text(f"{SUBSET}: {COUNT} images", timeout=60_000)
    page.wait_for_timeout(300)
    assert watch.ours() == [], watch.errors


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether process `pid` is `ancestor` or one of its descendants (Linux /proc)."""
    for _ in range(8):
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])
        if pid <= 1:
            return False
    return False


def _watch_for_scan_helpers(host: Any, seen: list[str], stop: threading.Event) -> None:
    """Note each process the host starts that runs the scan's helper (dataset/reading/worker.py) until `stop`."""
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "reading/worker.py" in command and command not in seen and host.pid is not None \
                    and _descends_from(int(entry.name), host.pid):
                seen.append(command)
        stop.wait(0.003)


def test_a_folder_of_thousands_of_images_loads_with_the_scans_helper_process(host, host_page) -> None:  # noqa: ANN001
    """From CHILD_FROM images the scan shares its reads with a helper process started with the host's own Python
    (`python -I -S`); inside the WebUI it must start, answer and leave the tab's result as one process reads it."""
    from playwright.sync_api import expect

    from lib_lora.dataset.reading.pairs import CHILD_FROM
    from lib_lora.tiny.images import generate_dataset

    if not Path("/proc/self/status").exists():
        pytest.skip("the helper process is looked for in /proc")
    root = host.workdir / "datasets" / "many"
    shutil.rmtree(root, ignore_errors=True)
    generate_dataset(root, count=1, seed=1, repeats=1, name="many")
    folder = root / "1_many"
    image = next(folder.glob("*.png")).read_bytes()
    for stale in folder.iterdir():
        stale.unlink()
    count = CHILD_FROM + 100
    for n in range(count):
        (folder / f"{n:05d}.png").write_bytes(image)
        (folder / f"{n:05d}.txt").write_text(f"tag{n % 50}, common\n")
    (folder / f"{count // 2:05d}.txt").write_bytes(b"\xff\x81\xfd")  # undecodable: the tab reports it

    page, watch = host_page(host)
    open_studio_tab(page)
    seen: list[str] = []
    stop = threading.Event()
    poller = threading.Thread(target=_watch_for_scan_helpers, args=(host, seen, stop), daemon=True)
    poller.start()
    try:
        field_input(page, "lora_studio_dataset_path").fill(str(root))
        page.locator("#lora_studio_dataset_load").click()
        expect(page.locator("#lora_studio_dataset_message").last).to_contain_text(  # gradio 3: two with the id
            f"{count - 1} images, {count - 1} with captions", timeout=120_000)
    finally:
        stop.set()
        poller.join()
    assert seen, "the scan did not start its helper process inside the host"
    assert all(" -I -S " in command for command in seen), seen
    thumbs = page.locator("#lora_studio_dataset_gallery [data-lora-studio-op='select']")
    expect(thumbs.first).to_be_visible(timeout=60_000)
    expect(page.locator("#lora_studio_dataset_problems").last).to_contain_text(f"{count // 2:05d}.txt")
    page.wait_for_timeout(300)
    assert watch.ours() == [], watch.errors
