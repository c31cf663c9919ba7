"""The real hosts' web UI in headless Chromium (as tests/browser_app.py drives the standalone app).

`HostBrowser` is one Chromium for the session; `open(host)` gives a page on the host's UI once gradio has built
it, with a `HostPageWatch` that collects console errors, page errors and requests that leave 127.0.0.1 (aborted).
The hosts' own pages have their own console noise, so only errors that name LoRA Studio fail a test
(`HostPageWatch.ours`). `open_studio_tab(page)` clicks the top-level "LoRA Studio" tab.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from browser_app import CHROMIUM_ARGS, chromium_path

OUR_NAMES = re.compile(r"lora[_-]?studio|loraStudio", re.IGNORECASE)
UI_TIMEOUT_MS = 180_000
NO_FIRST_VISIT_RELOAD = "try { sessionStorage.setItem('physton_icon_refreshed', '1'); } catch (error) {}"
"""This Forge Neo (the fork's modules/ui.py) reloads the page 2 s after a browser session's first visit, unless
this sessionStorage flag is set; the reload would throw away what a test already did on the page."""
"""How long the WebUI may take to build its page (A1111's gradio 3 page is large; the machine is busy)."""


@dataclass
class HostPageWatch:
    """What a page reported: console errors, page errors (with stacks), outside requests."""

    errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)

    def ours(self) -> list[str]:
        """The errors that name LoRA Studio (its elem_ids, globals, files)."""
        return [error for error in self.errors if OUR_NAMES.search(error)]


class HostBrowser:
    """One headless Chromium for the session; pages on real hosts."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        executable = chromium_path()
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        self._pages: list[Any] = []

    def open(self, host: Any, *, width: int = 1600, height: int = 1400) -> tuple[Any, HostPageWatch]:
        """A page on `host`'s UI, its gradio app built (the "LoRA Studio" tab is in the DOM)."""
        watch = HostPageWatch()
        page = self._browser.new_page(viewport={"width": width, "height": height})
        self._pages.append(page)
        page.set_default_timeout(60_000)
        page.on("console", lambda message: watch.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: watch.errors.append(f"page error: {error.message}\n{error.stack or ''}"))

        def outside(route: Any) -> None:
            watch.external.append(route.request.url)
            route.abort()

        page.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z]+://"), outside)
        page.add_init_script(NO_FIRST_VISIT_RELOAD)
        host.ensure_started()
        # With a theme setting (Neo's default is dark) the WebUI's set_theme() reloads a page whose URL has no
        # `?__theme=`, after the app is built: asking for a theme up front avoids that second load.
        page.goto(host.url + "/?__theme=light", wait_until="domcontentloaded", timeout=UI_TIMEOUT_MS)
        page.locator("#tab_lora_studio").wait_for(state="attached", timeout=UI_TIMEOUT_MS)
        return page, watch

    def close_pages(self) -> None:
        for page in self._pages:
            try:
                page.close()
            except Exception:  # noqa: BLE001 - the page may be gone with its host
                pass
        self._pages.clear()

    def close(self) -> None:
        self.close_pages()
        try:
            self._browser.close()
        finally:
            self._playwright.stop()


def studio_tab_button(page: Any) -> Any:
    """The top-level tab button that opens LoRA Studio (gradio 3 and 4 both put it in `#tabs .tab-nav`)."""
    return page.locator("#tabs .tab-nav button").filter(has_text=re.compile(r"^\s*LoRA Studio\s*$")).first


def open_studio_tab(page: Any) -> None:
    """Click "LoRA Studio" and wait until its content shows."""
    studio_tab_button(page).click()
    page.locator("#lora_studio_root").wait_for(state="visible")


def field_input(page: Any, elem_id: str) -> Any:
    """The text field inside one of our gradio textboxes (found by our elem_id)."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def choose(page: Any, elem_id: str, option: str) -> None:
    """Pick `option` in our gradio dropdown `elem_id` as a user does: open it, click the option (gradio 3.41 marks
    options with `data-value`, gradio 4.40 with `aria-label`)."""
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f'ul.options li[data-value="{option}"], ul.options li[aria-label="{option}"]').first.click()
