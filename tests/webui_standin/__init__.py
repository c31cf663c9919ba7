"""A small stand-in for what A1111 1.10.1 loads as `shared.sd_model`, and for the few `modules.*` the adapter touches.

models.py builds SD1 (`LatentDiffusion`-like) and SDXL (`DiffusionEngine`-like) objects with A1111's attribute
names around real ldm module trees (lib_lora.tiny.ldm_models) and real HF CLIP text models (lib_lora.tiny.clip).
fake_modules.py installs a minimal `modules` package (shared, devices, prompt_parser) into sys.modules;
fake_extension_api.py adds what scripts/lora_studio.py and lib_lora/webui touch (script_callbacks, paths,
shared's settings API, a guard recording every read of `shared.sd_model`, scripts.Script, shared.state).
builtin_lora.py stands in for the built-in Lora extension (networks, merge and cache, the `lora` extra network);
processing.py for the script hooks of `process_images` and the infotext.
fixtures.py has the pytest fixtures; test files import them. Tests only: nothing in lib_lora imports this.
"""
