"""LoRA Studio in the WebUI: registers the "LoRA Studio" tab and settings; thin glue over lib_lora.webui.

The WebUI execs this file at start-up with the extension root on sys.path. It does no model work, never reads
`shared.sd_model`, and imports gradio only when the tab is built.
"""

from __future__ import annotations

from modules import script_callbacks  # type: ignore[import-not-found]

from lib_lora.webui import settings, tabs

settings.register_options()
script_callbacks.on_ui_settings(settings.on_ui_settings, name="lora_studio_settings")
script_callbacks.on_ui_tabs(tabs.on_ui_tabs, name="lora_studio_tabs")
