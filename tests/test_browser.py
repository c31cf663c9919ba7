"""The standalone app in a real headless Chromium: it loads, the tabs switch, the console stays clean."""

from __future__ import annotations

from typing import Iterator

import pytest
from browser_app import chromium_path, open_page, save_screenshot, serve_app

pytestmark = pytest.mark.browser

TABS = {"Dataset": "dataset", "Train": "train", "Block Weight": "blocks"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m lib_lora serve --model tiny` on a free local port, with a fresh workspace."""
    chromium_path()
    root = tmp_path_factory.mktemp("app")
    with serve_app(["--model", "tiny", "--workspace", str(root / "workspace")], root) as url:
        yield url


def test_app_loads_and_tabs_switch_without_console_errors(server):
    from playwright.sync_api import expect

    with open_page(server, height=720) as (page, watch):
        expect(page).to_have_title("LoRA Studio", timeout=60_000)
        expect(page.locator("#lora_studio_title")).to_contain_text("LoRA Studio")
        info = page.locator("#lora_studio_model_info")
        expect(info).to_contain_text("tiny", timeout=60_000)  # filled by the page-load event
        expect(info).to_contain_text("sd1")
        expect(info).to_contain_text("diffusers")

        for title in ["Train", "Block Weight", "Dataset"]:
            page.get_by_role("tab", name=title).click()
            for other_title, other in TABS.items():
                tab = page.locator(f"#lora_studio_{other}_tab")
                if other_title == title:
                    expect(tab).to_be_visible()
                else:
                    expect(tab).to_be_hidden()
            expect(info).to_contain_text("tiny")

        page.locator("#lora_studio_model_refresh").click()
        expect(info).to_contain_text("tiny")
        # javascript/*.js run standalone too (no onUiTabChange there) without errors
        assert page.evaluate("typeof loraStudioRefreshModelInfo === 'function' && loraStudioRefreshModelInfo()")
        page.wait_for_timeout(500)  # let late console messages arrive
        save_screenshot(page, "ui")
    watch.assert_clean()
