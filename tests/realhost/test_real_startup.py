"""Each real host starts with LoRA Studio: its tab and its settings are in the UI, no traceback of ours.

(The always-on block-weight script has no UI, so the hosts' `/sdapi/v1/scripts` does not list it: the records and
block-weight tests show it at work.)"""

from __future__ import annotations

import pytest
from ui import open_studio_tab, studio_tab_button

OPTIONS = ("lora_studio_output_dir", "lora_studio_tagger_dir", "lora_studio_dataset_roots")
"""The settings scripts/lora_studio.py registers (lib_lora/webui/settings.py); both hosts render each setting as
`#setting_<key>`. (Neo's `/sdapi/v1/options` lists only saved values, so the API cannot show them there.)"""


@pytest.mark.smoke
def test_the_host_runs_the_extension_and_shows_its_tab(host, host_page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    page, watch = host_page(host)
    for key in OPTIONS:
        expect(page.locator(f"#setting_{key}")).to_be_attached()
    expect(studio_tab_button(page)).to_be_visible()
    open_studio_tab(page)
    expect(page.locator("#lora_studio_tabs")).to_be_visible()
    expect(page.locator("#lora_studio_dataset_load")).to_be_visible()
    page.wait_for_timeout(500)  # late console messages
    assert watch.ours() == [], watch.errors
    assert host.extension_tracebacks() == []
