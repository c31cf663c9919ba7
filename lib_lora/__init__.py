"""LoRA Studio: tag, train and apply LoRAs with per-block strengths, in the WebUI or standalone.

Nothing here imports the WebUI (`modules.*`) except `lib_lora.hosts.a1111`, `lib_lora.hosts.forge` and
`lib_lora.webui`; nothing imports diffusers or gradio at package import time.
"""

__version__ = "0.1.0"
