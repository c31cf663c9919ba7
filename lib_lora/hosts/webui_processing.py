"""What every WebUI host (A1111, Forge Neo, Forge) does the same way around the WebUI's own processing.

- `run_always_on_scripts(p)`: txt2img's always-on scripts see a processing object built in code.
- `sized_prompts(texts, width, height)`: the prompt list `get_learned_conditioning` takes, carrying the image size.
- `generate_txt2img(sd_model, request, host_name)`: one image through the WebUI's own processing.
- `webui_queue()`: the WebUI's queue lock (`modules.call_queue.queue_lock`), which its own generations hold.

The WebUI's `modules.*` are looked up lazily (only `modules.scripts`, and `modules.prompt_parser` when it is loaded).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..pnginfo import PARAMETERS_KEY
from .gate import mark_own_generation


class SizedPrompts(list):
    """Fallback for `modules.prompt_parser.SdConditioning`: a list of prompts carrying the image size."""

    def __init__(self, prompts: Sequence[str], width: int, height: int) -> None:
        super().__init__(prompts)
        self.width = width
        self.height = height
        self.is_negative_prompt = False


def sized_prompts(texts: Sequence[str], *, width: int, height: int) -> list[str]:
    """`texts` as the WebUI's `SdConditioning` (positive prompts of that size), or `SizedPrompts` outside it."""
    prompt_parser = sys.modules.get("modules.prompt_parser")
    sd_conditioning = getattr(prompt_parser, "SdConditioning", None)
    if sd_conditioning is not None:
        return sd_conditioning(list(texts), width=width, height=height)
    return SizedPrompts(list(texts), width=width, height=height)


def webui_queue() -> AbstractContextManager[Any]:
    """The lock the WebUI's generations and API calls hold while they run (a FIFO lock, not reentrant); a no-op
    outside a WebUI. Ours take it too, so a txt2img and a Block Weight image never run on the model at once."""
    lock = getattr(sys.modules.get("modules.call_queue"), "queue_lock", None)
    return lock if lock is not None else nullcontext()


def run_always_on_scripts(p: Any) -> None:
    """Let txt2img's always-on scripts see `p` (our block-weight script reads the `<lora:…>` tags' presets).

    A processing object built in code has no `p.scripts`, so the WebUI would run no script: `<lora:x:0.8:NCNF>`
    would then reach the built-in Lora unrewritten. The arguments are each script control's default value (what
    the API sends when a request names no script), index 0 = no selectable script. `p.is_api` is set, as the
    WebUI's API does: its built-in Seed and Sampler scripts then leave the seed, steps and sampler set in code
    instead of overwriting them with their controls' defaults. `p` carries the GPU gate's holder: our own
    generations (the Block Weight tab, training samples) run while we hold it.
    """
    try:
        from modules import scripts  # type: ignore[import-not-found]
    except ImportError:
        return
    runner = getattr(scripts, "scripts_txt2img", None)
    if runner is None:
        return
    defaults = [getattr(control, "value", None) for control in getattr(runner, "inputs", None) or [None]]
    defaults[0] = 0
    p.is_api = True  # first: assigning `script_args` runs the scripts' setup at once (A1111's property setter)
    p.scripts = runner
    p.script_args = tuple(defaults)
    mark_own_generation(p)


def generate_txt2img(sd_model: Any, request: Any, host_name: str) -> Any:
    """One txt2img image of `request` (a GenerationRequest) through the WebUI's own `modules.processing`, with the
    always-on scripts seeing it; HostError outside a WebUI or when no image comes back. The image's
    `info["parameters"]` is the WebUI's own infotext for it: what was applied."""
    import torch

    from ..errors import HostError

    try:
        from modules import processing  # type: ignore[import-not-found]
    except ImportError as error:
        raise HostError("generating sample images needs the WebUI's `modules.processing`, which is only available "
                        f"inside {host_name} ({error})") from error
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=sd_model, prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
        cfg_scale=request.cfg_scale, width=request.width, height=request.height, seed=request.seed, batch_size=1,
        n_iter=1, do_not_save_samples=True, do_not_save_grid=True,
    )
    run_always_on_scripts(p)
    try:
        with webui_queue(), torch.no_grad():  # after the WebUI's running or queued generations, in turn
            processed = processing.process_images(p)
    finally:
        close = getattr(p, "close", None)
        if callable(close):
            close()
    if not processed.images:
        raise HostError(f"{host_name} returned no image (generation interrupted or failed)")
    image = processed.images[0]
    infotexts = getattr(processed, "infotexts", None) or [getattr(processed, "info", "")]
    if infotexts[0]:
        image.info[PARAMETERS_KEY] = infotexts[0]
    return image
