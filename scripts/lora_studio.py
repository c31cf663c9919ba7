"""LoRA Studio in the WebUI: the "LoRA Studio" tab, its settings and the always-on block-weight script; thin glue
over lib_lora.webui.

The WebUI execs this file at start-up with the extension root on sys.path. It does no model work, never reads
`shared.sd_model`, and imports gradio only when the tab is built. The script has no UI: it acts on the prompt's
`<lora:…>` tags (lib_lora/webui/blockweight/script.py says how).
"""

from __future__ import annotations

from modules import script_callbacks, scripts  # type: ignore[import-not-found]

from lib_lora.webui import settings, tabs
from lib_lora.webui.blockweight.script import CONTROLLER, SCRIPT_TITLE

settings.register_options()
script_callbacks.on_ui_settings(settings.on_ui_settings, name="lora_studio_settings")
script_callbacks.on_ui_tabs(tabs.on_ui_tabs, name="lora_studio_tabs")
script_callbacks.on_cfg_denoiser(CONTROLLER.on_cfg_denoiser, name="lora_studio_block_weight_steps")
script_callbacks.on_infotext_pasted(CONTROLLER.on_infotext_pasted, name="lora_studio_block_weight_paste")
script_callbacks.on_script_unloaded(CONTROLLER.unload, name="lora_studio_block_weight_unload")


class LoraStudioBlockWeights(scripts.Script):
    """Always on: per-block LoRA strengths from `<lora:name:w:PRESET>` and LBW's named forms."""

    def title(self) -> str:
        return SCRIPT_TITLE

    def show(self, is_img2img: bool) -> object:
        return scripts.AlwaysVisible

    def before_process(self, p, *args) -> None:
        CONTROLLER.before_process(p)

    def before_process_batch(self, p, *args, batch_number, prompts, **kwargs) -> None:
        CONTROLLER.before_process_batch(p, batch_number, prompts)

    def after_extra_networks_activate(self, p, *args, extra_network_data, **kwargs) -> None:
        CONTROLLER.after_extra_networks_activate(p, extra_network_data)

    def process_batch(self, p, *args, **kwargs) -> None:
        CONTROLLER.process_batch(p)

    def postprocess(self, p, processed, *args) -> None:
        CONTROLLER.postprocess(p)
