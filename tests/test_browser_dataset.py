"""The Dataset tab in a real headless Chromium (standalone app): the acceptance scenario of issue #5.

Load a generated dataset, tag it with the tiny ONNX tagger, remove a tag with its chip's ×, filter by a tag
from the frequency table and batch-add a trigger word to the filtered images, save with Ctrl+S: the caption
files are byte-exact what the tagger's tags plus those edits give. "Undo restores them" means: Undo twice
(Ctrl+Z, then the button) takes the two edits back in the editor, and saving that writes the tagger's
captions back, byte-exact; the overwritten versions are in the backup folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from browser_app import chromium_path, field, open_page, save_screenshot, serve_app

pytestmark = pytest.mark.browser

TRIGGER = "mytrigger"
SUBSET = "3_tinychar"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """W/datasets/char with 6 generated images and captions; the tiny WD14 tagger in W/tagger/tiny."""
    pytest.importorskip("onnxruntime")
    from lib_lora.tiny.images import generate_dataset
    from lib_lora.tiny.tagger import write_tiny_wd14_tagger

    root = tmp_path_factory.mktemp("dataset_app") / "workspace"
    generate_dataset(root / "datasets" / "char", count=6, seed=1, repeats=3, name="tinychar")
    write_tiny_wd14_tagger(root / "tagger" / "tiny", input_size=64)
    return root


@pytest.fixture(scope="module")
def server(workspace: Path) -> Iterator[str]:
    chromium_path()
    with serve_app(["--model", "tiny", "--workspace", str(workspace)], workspace.parent) as url:
        yield url


def tagger_captions(workspace: Path) -> dict[str, str]:
    """What the tagger writes with the tab's default options and existing=overwrite, by image name."""
    from lib_lora.dataset.folder import scan_dataset
    from lib_lora.dataset.images import open_image
    from lib_lora.dataset.tagging.models import resolve_model
    from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions
    from lib_lora.dataset.tags import join_tags

    items = scan_dataset(workspace / "datasets" / "char").items
    tagger = Tagger.load(resolve_model(workspace / "tagger" / "tiny"))
    tags = tagger.tag_images([open_image(item.image) for item in items], TaggerOptions(existing="overwrite"))
    return {item.image.name: join_tags(found) for item, found in zip(items, tags)}


def caption_files(workspace: Path) -> dict[str, bytes]:
    folder = workspace / "datasets" / "char" / SUBSET
    return {path.with_suffix(".png" if (path.with_suffix(".png")).exists() else ".jpg").name: path.read_bytes()
            for path in sorted(folder.glob("*.txt"))}


def test_tag_edit_save_and_undo_in_the_browser(server: str, workspace: Path) -> None:
    from playwright.sync_api import expect

    tagged = tagger_captions(workspace)
    names = sorted(tagged)
    first, edited_tag = names[0], tagged[names[0]].split(", ")[1]
    counts = Counter(tag for text in tagged.values() for tag in text.split(", "))
    filter_tag = min((tag for tag, n in counts.items() if 1 < n < len(names)), key=lambda t: (-counts[t], t))
    in_filter = sorted(name for name, text in tagged.items() if filter_tag in text.split(", "))

    with open_page(server, height=1400) as (page, watch):
        status = page.locator("#lora_studio_dataset_unsaved")
        message = page.locator("#lora_studio_dataset_message")
        thumbs = page.locator("#lora_studio_dataset_gallery [data-lora-studio-op='select']")

        field(page, "lora_studio_dataset_path").fill(str(workspace / "datasets" / "char"))
        page.locator("#lora_studio_dataset_load").click()
        expect(thumbs).to_have_count(6, timeout=60_000)
        expect(message).to_contain_text("6 images, 6 with captions")

        page.locator("#lora_studio_dataset_tagger_refresh").click()
        field(page, "lora_studio_dataset_tagger_model").click()
        page.get_by_role("option", name="tiny", exact=True).click()
        page.locator("#lora_studio_dataset_tagger_existing").get_by_label("overwrite").check()
        page.locator("#lora_studio_dataset_tag_start").click()
        expect(page.locator("[data-lora-studio-job='done']")).to_be_visible(timeout=60_000)
        expect(message).to_contain_text("Tagging finished: tagged 6")
        expect(status).to_contain_text("All captions saved")
        assert caption_files(workspace) == {name: (text + "\n").encode() for name, text in tagged.items()}

        thumbs.filter(has_text=first).click()
        chips = page.locator(f"#lora_studio_dataset_chips .lora-studio-chips[data-key='{SUBSET}/{first}']")
        expect(chips.locator(".lora-studio-chip")).to_have_count(len(tagged[first].split(", ")))
        chips.locator(f".lora-studio-chip[data-tag='{edited_tag}'] .lora-studio-chip-remove").click()
        expect(status).to_contain_text("1 unsaved caption")
        expect(chips.locator(f".lora-studio-chip[data-tag='{edited_tag}']")).to_have_count(0)

        page.locator(f"#lora_studio_dataset_frequency [data-lora-studio-op='include'][data-tag='{filter_tag}']").click()
        expect(thumbs).to_have_count(len(in_filter))
        expect(field(page, "lora_studio_dataset_include")).to_have_value(filter_tag)
        page.get_by_text("Batch edit (the images in the filter)").click()
        field(page, "lora_studio_dataset_batch_add_tags").fill(TRIGGER)
        page.locator("#lora_studio_dataset_batch_add_position").get_by_label("front").check()
        page.locator("#lora_studio_dataset_batch_add").click()
        expect(message).to_contain_text(f"{len(in_filter)} captions of {len(in_filter)} in the filter changed")

        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("Control+s")
        expect(message).to_contain_text("Saved")
        expect(status).to_contain_text("All captions saved")
        expected = dict(tagged)
        expected[first] = ", ".join(tag for tag in tagged[first].split(", ") if tag != edited_tag)
        for name in in_filter:
            expected[name] = f"{TRIGGER}, {expected[name]}"
        changed = {first, *in_filter}
        assert caption_files(workspace) == {name: (text + "\n").encode() for name, text in expected.items()}

        page.keyboard.press("Control+z")
        expect(message).to_contain_text(f"Undid add '{TRIGGER}' at front")
        page.locator("#lora_studio_dataset_undo").click()
        expect(message).to_contain_text(f"Undid remove '{edited_tag}'")
        expect(status).to_contain_text(f"{len(changed)} unsaved caption")
        page.locator("#lora_studio_dataset_save").click()
        expect(status).to_contain_text("All captions saved")
        assert caption_files(workspace) == {name: (text + "\n").encode() for name, text in tagged.items()}
        page.wait_for_timeout(300)  # let late console messages arrive
        save_screenshot(page, "dataset")
    backups = workspace / "datasets" / "char" / ".lora_studio_backup" / SUBSET
    # 6 from the tagger's overwrite, then one per changed file for each of the two saves
    assert len(list(backups.iterdir())) == 6 + 2 * len(changed)
    watch.assert_clean()


def test_chips_move_by_buttons_and_dragging_and_leaving_with_edits_warns(server: str, workspace: Path) -> None:
    """The page script's other duties: ←/→ and drag reorder, autocomplete on tag fields, the unload warning,
    and the second press that Revert needs with unsaved edits. Nothing is saved: the files stay as they were."""
    from playwright.sync_api import expect

    before = caption_files(workspace)
    with open_page(server, height=1400) as (page, watch):
        status = page.locator("#lora_studio_dataset_unsaved")
        message = page.locator("#lora_studio_dataset_message")
        field(page, "lora_studio_dataset_path").fill(str(workspace / "datasets" / "char"))
        page.locator("#lora_studio_dataset_load").click()
        chips = page.locator("#lora_studio_dataset_chips .lora-studio-chip")
        expect(chips.first).to_be_visible(timeout=60_000)
        tags = chips.evaluate_all("chips => chips.map(chip => chip.dataset.tag)")
        assert len(tags) >= 3

        def order() -> list[str]:
            return chips.evaluate_all("chips => chips.map(chip => chip.dataset.tag)")

        chips.nth(0).locator("[data-lora-studio-op='right']").click()
        expect(chips.nth(0)).to_have_attribute("data-tag", tags[1])
        assert order() == [tags[1], tags[0], *tags[2:]]
        chips.nth(2).drag_to(chips.nth(0))
        expect(chips.nth(0)).to_have_attribute("data-tag", tags[2])
        assert order() == [tags[2], tags[1], tags[0], *tags[3:]]
        expect(status).to_contain_text("1 unsaved caption")

        add = field(page, "lora_studio_dataset_add_tag")
        add.click()
        assert add.get_attribute("list") == "lora_studio_dataset_tag_list"
        suggestions = page.locator("#lora_studio_dataset_tag_list option")
        assert suggestions.count() > len(tags)  # the dataset's tags and the tiny tagger's vocabulary
        assert page.evaluate("loraStudioDatasetUnsavedCount()") == 1
        leave = "(() => { const e = new Event('beforeunload', {cancelable: true}); window.dispatchEvent(e); " \
                "return e.defaultPrevented; })()"
        assert page.evaluate(leave) is True

        page.locator("#lora_studio_dataset_revert").click()
        expect(message).to_contain_text("1 unsaved caption would be lost. Press Revert again")
        page.locator("#lora_studio_dataset_revert").click()
        expect(message).to_contain_text("Reloaded from disk; 1 unsaved caption discarded")
        expect(status).to_contain_text("All captions saved")
        assert order() == tags and page.evaluate(leave) is False
        page.wait_for_timeout(300)
    assert caption_files(workspace) == before
    watch.assert_clean()


def test_folders_are_listed_relative_to_their_root_and_a_failed_load_leaves_nothing_to_tag(
        server: str, workspace: Path) -> None:
    """The folder list holds the dataset folders only, named relative to their root; a name as listed (the
    server runs elsewhere) loads; a folder that fails to load leaves nothing loaded; Tag refuses a folder shown
    but not loaded."""
    from playwright.sync_api import expect

    (workspace / "datasets" / "empty").mkdir(exist_ok=True)
    with open_page(server, height=1400) as (page, watch):
        message = page.locator("#lora_studio_dataset_message")
        thumbs = page.locator("#lora_studio_dataset_gallery [data-lora-studio-op='select']")
        field(page, "lora_studio_dataset_folders").click()
        options = page.get_by_role("option")
        expect(options).to_have_count(2, timeout=30_000)
        assert options.all_inner_texts() == ["char", f"char/{SUBSET}"]
        options.filter(has_text=SUBSET).click()
        expect(field(page, "lora_studio_dataset_path")).to_have_value(f"char/{SUBSET}")
        page.locator("#lora_studio_dataset_load").click()
        expect(message).to_contain_text(f"Loaded {workspace / 'datasets' / 'char' / SUBSET}: 6 images",
                                        timeout=60_000)
        expect(thumbs).to_have_count(6)

        field(page, "lora_studio_dataset_path").fill("nosuch")
        page.locator("#lora_studio_dataset_load").click()
        expect(message).to_contain_text("no such folder in the allowed folders")
        expect(message).to_contain_text("Nothing is loaded now")
        expect(thumbs).to_have_count(0)
        page.locator("#lora_studio_dataset_tag_start").click()
        expect(message).to_contain_text("load a dataset folder first")

        field(page, "lora_studio_dataset_path").fill("char")
        page.locator("#lora_studio_dataset_load").click()
        expect(thumbs).to_have_count(6, timeout=60_000)
        field(page, "lora_studio_dataset_path").fill(f"char/{SUBSET}")
        page.locator("#lora_studio_dataset_tag_start").click()
        expect(message).to_contain_text("press Load first")
        page.wait_for_timeout(300)
    watch.assert_clean()


def make_many(folder: Path, count: int) -> dict[str, str]:
    """`count` tiny images in two `<repeats>_<name>` subfolders, captions of 12 tags from 240; caption by path."""
    import random

    from PIL import Image

    rng = random.Random(7)
    vocabulary = [f"word{n:03d}" for n in range(240)]
    captions = {}
    for n in range(count):
        path = folder / ("1_first" if n % 2 else "2_second") / f"img{n:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (n % 256, 40, 90)).save(path)
        text = ", ".join(rng.sample(vocabulary[:12], 3) + rng.sample(vocabulary[12:], 9))
        path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        captions[str(path.with_suffix(".txt"))] = text
    return captions


def test_a_few_hundred_images_page_filter_batch_edit_and_save(server: str, workspace: Path) -> None:
    """A larger set: one page of thumbnails, the tag table paged (◀ Tags / Tags ▶), a tag from it filters, a
    batch remove on the filter, and Save (a job with progress) writes exactly the captions that changed."""
    from playwright.sync_api import expect

    from lib_lora.dataset.editing import FREQUENCY_ROWS, PAGE_SIZE
    from lib_lora.dataset.tags import tag_frequency

    folder = workspace / "datasets" / "many"
    captions = make_many(folder, 300)
    counts = tag_frequency(captions)
    tag = counts[0][0]
    holding = {path for path, text in captions.items() if tag in text.split(", ")}
    with open_page(server, height=1400) as (page, watch):
        message = page.locator("#lora_studio_dataset_message")
        status = page.locator("#lora_studio_dataset_unsaved")
        thumbs = page.locator("#lora_studio_dataset_gallery [data-lora-studio-op='select']")
        table = page.locator("#lora_studio_dataset_frequency")
        rows = table.locator("[data-lora-studio-op='include']")
        field(page, "lora_studio_dataset_path").fill("many")
        page.locator("#lora_studio_dataset_load").click()
        expect(message).to_contain_text("300 images, 300 with captions, 2 subfolders", timeout=60_000)
        expect(thumbs).to_have_count(PAGE_SIZE)
        expect(rows).to_have_count(FREQUENCY_ROWS)
        expect(table).to_contain_text(f"Tags 1–{FREQUENCY_ROWS} of {len(counts)}")
        page.locator("#lora_studio_dataset_frequency_next").click()
        expect(table).to_contain_text(f"Tags {FREQUENCY_ROWS + 1}–{2 * FREQUENCY_ROWS} of {len(counts)}")
        expect(rows.first).to_have_attribute("data-tag", counts[FREQUENCY_ROWS][0])
        page.locator("#lora_studio_dataset_frequency_prev").click()
        expect(rows.first).to_have_attribute("data-tag", tag)
        rows.first.click()
        expect(field(page, "lora_studio_dataset_include")).to_have_value(tag)
        expect(thumbs).to_have_count(min(PAGE_SIZE, len(holding)))
        page.get_by_text("Batch edit (the images in the filter)").click()
        field(page, "lora_studio_dataset_batch_remove_tags").fill(tag)
        page.locator("#lora_studio_dataset_batch_remove").click()
        expect(message).to_contain_text(f"{len(holding)} captions of {len(holding)} in the filter changed")
        expect(status).to_contain_text(f"{len(holding)} unsaved captions")
        page.locator("#lora_studio_dataset_save").click()
        expect(message).to_contain_text(f"Saved {len(holding)} captions", timeout=60_000)
        expect(status).to_contain_text("All captions saved")
        page.wait_for_timeout(300)
    for path, text in captions.items():
        expected = ", ".join(t for t in text.split(", ") if t != tag) if path in holding else text
        assert Path(path).read_text(encoding="utf-8") == expected + "\n"
    watch.assert_clean()
