"""Cancel in the Block Weight tab on the real host: Generate shows the WebUI's own step count, Cancel stops the image
through the WebUI's interrupt, and afterwards the tab and the WebUI's API generate again (the interrupt is reset)."""

from __future__ import annotations

from checks import prompt_with
from test_real_block_weight_tab import open_block_weight_tab

LONG_STEPS = "400"  # long enough on a CPU to be cancelled well before the end


def test_generate_is_cancelled_through_the_webui_interrupt(host, loras, host_page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    page, watch = host_page(host)
    open_block_weight_tab(page, loras.plain)
    status = page.locator("#lora_studio_blocks_status").first
    progress = page.locator("#lora_studio_blocks_image_progress").first
    page.locator("#lora_studio_blocks_steps input").fill(LONG_STEPS)
    page.locator("#lora_studio_blocks_generate").click()
    expect(progress).to_contain_text("ETA", timeout=300_000)  # the first image also loads the model
    expect(progress).to_contain_text(f"/{LONG_STEPS}")  # the WebUI's own step count, polled
    page.locator("#lora_studio_blocks_image_cancel").click()
    expect(status).to_contain_text("An image was cancelled.", timeout=120_000)
    expect(progress).to_contain_text("cancelled")

    page.locator("#lora_studio_blocks_steps input").fill("4")
    page.locator("#lora_studio_blocks_generate").click()
    expect(status).to_contain_text("Generated with", timeout=300_000)
    after = host.txt2img(prompt=prompt_with(f"<lora:{loras.plain}:1>"), fresh=True)
    assert after.image is not None and after.image.std() > 0  # the WebUI's own generation is not interrupted
    assert watch.ours() == [], watch.errors
