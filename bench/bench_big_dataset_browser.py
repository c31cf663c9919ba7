"""The Dataset tab in a real headless Chromium on the 5,000-image set: each click timed until the page shows its answer.

Starts the standalone app (`python -m lib_lora serve`) on a workspace whose datasets/ holds a fresh copy of the
generated set (bench/make_big_dataset.py), opens the page in Debian's chromium through playwright, and times each
action of the Dataset tab from the click (or keystroke) to the moment the page shows what it answers: load the
folder, filter by a tag from the table, clear the filter, the tag table's next page and a search in it, a batch
add and a batch remove of a tag on every caption, undo, selecting an image, removing one of its chips and adding
a tag, and save (a job: its progress lines are printed). The time is taken in the page (performance.now() at the
click, polled each animation frame until the answer shows), so it holds the server's work, the transfer and the
browser's rendering. Then the same clicks run in this process through the tab's event code (`DatasetWiring.run`)
to split each figure: the server's part and the size of what it sends.

    .venv/bin/python bench/bench_big_dataset_browser.py [--small /tmp/bigds/5k] [--work /tmp/h15b] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the browser tests' app and Chromium helpers

from browser_app import CHROMIUM, CHROMIUM_ARGS, serve_app  # noqa: E402

CLICK_TARGET = 1.0
SAVE_TARGET = 15.0
TRIGGER = "benchtrigger"
ARM = """() => {
    window.loraBenchStart = null;
    if (!window.loraBenchArmed) {
        window.loraBenchArmed = true;
        const mark = () => { if (window.loraBenchStart === null) window.loraBenchStart = performance.now(); };
        for (const type of ["mousedown", "keydown", "input"]) document.addEventListener(type, mark, true);
    }
}"""
"""Record the time of the next click, key or input in the page (the start of each measurement)."""


def _id(name: str) -> str:
    return f"#lora_studio_dataset_{name}"


def fresh_workspace(source: Path, work: Path) -> tuple[Path, str]:
    """work/ws with datasets/<name> a fresh `cp -a` of `source` (the bench saves into it); (workspace, name)."""
    if not source.is_dir():
        subprocess.run(["flock", "/tmp/bigds.lock", sys.executable, str(ROOT / "bench" / "make_big_dataset.py"),
                        str(source), "--images", "5000"], check=True)
    workspace = work / "ws"
    if workspace.exists():
        shutil.rmtree(workspace)
    (workspace / "datasets").mkdir(parents=True)
    subprocess.run(["cp", "-a", str(source), str(workspace / "datasets" / source.name)], check=True)
    return workspace, source.name


class Clicks:
    """Times actions on one page: `timed(name, act, done)` runs `act()` and waits until the JS `done` is true."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.times: dict[str, list[float]] = {}

    def timed(self, name: str, act: Callable[[], Any], done: str, arg: Any = None, timeout: float = 60) -> float:
        self.page.evaluate(ARM)
        act()
        elapsed = self.page.wait_for_function(
            f"(arg) => (window.loraBenchStart !== null && ({done})) ? performance.now() - window.loraBenchStart "
            ": false", arg=arg, polling="raf", timeout=timeout * 1000).json_value() / 1000
        self.times.setdefault(name, []).append(elapsed)
        return elapsed

    def field(self, name: str) -> Any:
        return self.page.locator(f"{_id(name)} textarea, {_id(name)} input").first

    def click(self, name: str) -> Callable[[], Any]:
        return lambda: self.page.locator(_id(name)).click()


TEXT = "document.querySelector(arg.sel) && document.querySelector(arg.sel).innerText.includes(arg.text)"
COUNT = "document.querySelectorAll(arg.sel).length === arg.count"
THUMBS = _id("gallery") + " [data-lora-studio-op='select']"
ROWS = _id("frequency") + " [data-lora-studio-op='include']"
SHOWN = ("[...document.querySelectorAll(arg.thumbs + ' img')].every(img => img.complete) && "
         "document.querySelectorAll(arg.thumbs).length === arg.count")


def run_browser(url: str, name: str, total: int, rounds: int) -> Clicks:
    """Each action of the tab `rounds` times (save once), in one page."""
    from playwright.sync_api import sync_playwright

    from lib_lora.dataset.editing import FREQUENCY_ROWS, PAGE_SIZE

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.route("https://**/*", lambda route: route.fulfill(status=200, body=""))  # offline: no CDN
            page.goto(url, wait_until="domcontentloaded")
            page.locator(_id("load")).wait_for(timeout=120_000)
            clicks = Clicks(page)
            clicks.field("path").fill(name)
            for round_ in range(rounds):  # the first load makes the page's thumbnails; later ones find them cached
                clicks.timed("load the folder" + (" (thumbnails cached)" if round_ else " (first: thumbnails made)"),
                             clicks.click("load"), f"{TEXT} && {SHOWN}",
                             {"sel": _id("message"), "text": f": {total} images, ", "count": PAGE_SIZE,
                              "thumbs": THUMBS})
                clicks.click("filter_clear")()  # another message, so the next load's is sent again
                page.locator(_id("message")).get_by_text("match the filter").wait_for()
            _table_and_filter(clicks, rounds, FREQUENCY_ROWS, total)
            _batch_edits(clicks, rounds, total)
            _chips(clicks, rounds)
            _save(clicks, total)
        except Exception:
            page.screenshot(path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "bench_big_dataset_browser.png"))
            raise
        finally:
            browser.close()
    return clicks


def _table_and_filter(clicks: Clicks, rounds: int, rows: int, total: int) -> None:
    page = clicks.page
    table = _id("frequency")
    for _ in range(rounds):
        row = page.locator(f"{table} tbody tr").nth(5)
        tag, count = row.locator("button").first.get_attribute("data-tag"), row.locator("td").nth(1).inner_text()
        clicks.timed("filter by a tag (table)", row.locator("button").first.click,
                     f"{TEXT} && document.querySelector(arg.inc).value === arg.tag",
                     {"sel": _id("page"), "text": f"{count} images in the filter", "inc": f"{_id('include')} input",
                      "tag": tag})
        clicks.timed("clear the filter (Show all)", clicks.click("filter_clear"),
                     TEXT, {"sel": _id("page"), "text": f"{total} images in the filter"})
        clicks.timed("tag table: next page", clicks.click("frequency_next"),
                     TEXT, {"sel": table, "text": f"Tags {rows + 1}–"})
        clicks.timed("tag table: previous page", clicks.click("frequency_prev"),
                     TEXT, {"sel": table, "text": f"Tags 1–{rows} "})
        clicks.timed("tag table: search", lambda: clicks.field("frequency_search").fill("tag1"),
                     TEXT, {"sel": table, "text": "matching tag1"})
        clicks.timed("tag table: clear the search", lambda: clicks.field("frequency_search").fill(""),
                     f"!({TEXT})", {"sel": table, "text": "matching"})


def _batch_edits(clicks: Clicks, rounds: int, total: int) -> None:
    page = clicks.page
    page.get_by_text("Batch edit (the images in the filter)").click()
    message = {"sel": _id("message")}
    for round_ in range(rounds):
        clicks.field("batch_add_tags").fill(TRIGGER)
        clicks.timed("batch add a tag to all", clicks.click("batch_add"), TEXT,
                     message | {"text": f"{total} captions of {total} in the filter changed"})
        clicks.field("batch_remove_tags").fill(TRIGGER)
        clicks.timed("batch remove it from all", clicks.click("batch_remove"), TEXT,
                     message | {"text": f"remove '{TRIGGER}': {total} captions"})
        clicks.timed("undo (the remove)", clicks.click("undo"), TEXT, message | {"text": "Undid remove"})
        if round_ < rounds - 1:
            clicks.timed("undo (the add)", clicks.click("undo"), TEXT, message | {"text": "Undid add"})


def _chips(clicks: Clicks, rounds: int) -> None:
    page = clicks.page
    chips = _id("chips") + " .lora-studio-chips"
    for round_ in range(rounds):
        thumb = page.locator(THUMBS).nth(3 + round_)
        key = thumb.get_attribute("data-key")
        clicks.timed("select an image", thumb.click,
                     "document.querySelector(arg.sel) && document.querySelector(arg.sel).dataset.key === arg.key "
                     "&& [...document.querySelectorAll(arg.img)].every(img => img.complete)",
                     {"sel": chips, "key": key, "img": _id("preview") + " img"})
        count = page.locator(f"{chips} .lora-studio-chip").count()
        clicks.timed("a chip's ×", lambda: page.locator(f"{chips} .lora-studio-chip-remove").nth(1).click(),
                     COUNT, {"sel": f"{chips} .lora-studio-chip", "count": count - 1})
        clicks.field("add_tag").fill(f"added{round_}")
        clicks.timed("add a tag (Enter)", lambda: clicks.field("add_tag").press("Enter"),
                     "document.querySelector(arg.sel) !== null",
                     {"sel": f"{chips} .lora-studio-chip[data-tag='added{round_}']"})


def _save(clicks: Clicks, total: int) -> None:
    """Save every caption (a job): the time to "Saved", and each progress line the page showed on the way."""
    page = clicks.page
    message = page.locator(_id("message"))
    page.evaluate(ARM)
    page.locator(_id("save")).click()
    seen: list[tuple[float, str]] = []
    start = time.perf_counter()
    while time.perf_counter() - start < 300:
        text = message.inner_text()
        if not seen or seen[-1][1] != text:
            seen.append((time.perf_counter() - start, text))
        if text.startswith("Saved"):
            break
        time.sleep(0.05)
    clicks.times.setdefault("save every caption", []).append(
        page.evaluate("performance.now() - window.loraBenchStart") / 1000)
    for at, text in seen:
        print(f"    save at {at:6.2f} s: {text[:110]}")


def server_side(folder: Path, rounds: int) -> dict[str, tuple[float, int]]:
    """The same clicks through the tab's event code in this process: (median seconds, bytes sent) by action."""
    from lib_lora.dataset.editing import DatasetSession
    from lib_lora.dataset.tags import AddTags, RemoveTags
    from lib_lora.ui.context import StudioContext
    from lib_lora.ui.dataset.actions import run_action
    from lib_lora.ui.dataset.views import PARTS
    from lib_lora.ui.dataset.wiring import DatasetWiring

    context = StudioContext.for_folder(lambda: None, folder.parent.parent)  # the workspace: datasets/<name>
    wiring = DatasetWiring(context, {name: None for name in PARTS}, None)  # type: ignore[arg-type]
    session = wiring.session(None)
    found: dict[str, list[tuple[float, int]]] = {}

    def click(name: str, action: Callable[..., Any], *values: Any) -> None:
        start = time.perf_counter()
        outputs = wiring.run(session, action, [], values)
        seconds = time.perf_counter() - start
        sent = [value for value in outputs[1:] if not (isinstance(value, dict) and value == {"__type__": "update"})]
        found.setdefault(name, []).append((seconds, len(json.dumps(sent, default=str))))

    for _ in range(rounds):
        session.sent.clear()
        click("load the folder", DatasetSession.load, str(folder))
    if session.dataset is None:
        raise RuntimeError(f"{folder} did not load: {session.sent.get('message')}")
    tags = session.tag_counts()
    for _ in range(rounds):
        click("filter by a tag (table)", run_action, json.dumps({"op": "include", "tag": tags[5][0]}))
        click("clear the filter (Show all)", DatasetSession.set_filter, "", "all", "", "any")
        click("batch add a tag to all", lambda s: s.batch(AddTags((TRIGGER,), "front")))
        click("batch remove it from all", lambda s: s.batch(RemoveTags((TRIGGER,))))
        click("undo (the remove)", DatasetSession.undo)
        click("undo (the add)", DatasetSession.undo)
        key = session.page_keys()[3]
        click("select an image", run_action, json.dumps({"op": "select", "key": key}))
        tag = session.tags_of(key)[1]
        click("a chip's ×", run_action, json.dumps({"op": "remove", "key": key, "index": 1, "tag": tag}))
        click("undo (chip)", DatasetSession.undo)
    return {name: (statistics.median(s for s, _ in runs), max(b for _, b in runs)) for name, runs in found.items()}


def report(clicks: Clicks, server: dict[str, tuple[float, int]]) -> None:
    print(f"\n{'action (5,000 images, browser)':<46} {'median':>8} {'runs':<24} target   server   sent")
    for name, times in clicks.times.items():
        target = SAVE_TARGET if name.startswith("save") else CLICK_TARGET
        median = statistics.median(times)
        runs = ", ".join(f"{t:.2f}" for t in times)
        base = name.split(" (")[0] if name.startswith("load") else name
        seconds, sent = server.get(base, (None, None))
        extra = "" if seconds is None else f"{seconds:6.3f} s {sent / 1024:7.1f} KiB"
        mark = "ok" if median <= target else "OVER"
        print(f"  {name:<44} {median:7.3f} s {runs:<24} ≤ {target:g} s {mark:<4} {extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=Path, default=Path("/tmp/bigds/5k"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/h15b"))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each action but the save (median)")
    args = parser.parse_args(argv)
    workspace, name = fresh_workspace(args.small, args.work)
    total = sum(1 for path in (workspace / "datasets" / name).rglob("*.txt"))
    print(f"{workspace / 'datasets' / name}: {total} captions; load avg {os.getloadavg()[0]:.1f}")
    with serve_app(["--model", "tiny", "--workspace", str(workspace)], args.work, timeout=300) as url:
        clicks = run_browser(url, name, total, args.rounds)
    print(f"load avg {os.getloadavg()[0]:.1f}; the same clicks in this process (server part):")
    workspace, name = fresh_workspace(args.small, args.work)
    server = server_side(workspace / "datasets" / name, args.rounds)
    report(clicks, server)
    print(f"load avg {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
