"""Per-block LoRA strength in A1111 1.10: the logic of the always-on script `scripts/lora_studio.py` forwards to.

One `BlockWeightController` per WebUI (`CONTROLLER`), driven by the script's hooks in A1111's order:
- `before_process`: refuse the generation while training holds `tabs.WEBUI_GPU`; stand aside when LBW
  (sd-webui-lora-block-weight) is installed and active, so no block weight is applied twice (said once a LoRA
  with block weights comes); read the presets (built-in + the user's `presets.txt`); register the
  `Lora block weights` infotext field.
- `before_process_batch`: rewrite the batch's prompts and hires prompts so the built-in Lora accepts every tag
  (`<lora:x:0.8:NCNF>` → `<lora:x:0.8:0.8:lbw=NCNF>`); prompts we cannot parse stay as typed, reported once.
- `after_extra_networks_activate` (first pass and hires pass): for the calls the built-in just loaded, install
  per-module multipliers on `networks.loaded_networks` (`blockweight_networks.BlockWeightPatch`).
- `process_batch`: the hires prompts back as typed (the infotext compares them with the prompt).
- `on_cfg_denoiser` (every sampling step): open or close `start=`/`stop=` windows. They gate the UNet part only:
  the text-encoder part is in the conditioning, computed before sampling. Steps mean what they mean in LBW
  (`blocks.steps`), counted with the `sampling_step` A1111 reports to the callback, the number LBW reads too, so
  a tag switches at the same model call as with LBW. The hires pass counts its own steps.
- `postprocess` and `on_script_unloaded`: remove every multiplier and tag; the networks stay loaded, as the
  built-in leaves them.
- `on_infotext_pasted`: a malformed `Lora block weights` field is dropped; the prompt is never changed (the
  infotext holds it as typed, so pasting it back reproduces the image).

Problems are reported at this edge: once per generation as an image comment and a console warning; generation
goes on (a tag left as typed is still applied by the built-in, without block weights).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import Arch
from ..blocks.apply import BLOCK_WEIGHTS_FIELD
from ..blocks.presets import PresetBook
from ..errors import BlockWeightError, LoraStudioError, PromptSyntaxError
from ..jobs import GpuGate
from .blockweight_networks import BlockWeightPatch, NetworkPlan
from .blockweight_prompts import (
    BlockWeightsInfotext,
    RewriteProblem,
    calls_from_extra_network_data,
    calls_with_block_weights,
    parse_block_weights_value,
    restore_prompts,
    rewrite_hires_prompts,
    rewrite_prompts,
)

__all__ = ["ALLOW_WHILE_HELD_ATTR", "CONTROLLER", "SCRIPT_TITLE", "BlockWeightController", "builtin_networks"]

SCRIPT_TITLE = "LoRA Studio block weights"
ALLOW_WHILE_HELD_ATTR = "lora_studio_gpu_holder"
"""Set `p.<this> = gate.holder` on a generation the gate's holder runs itself (training's sample images)."""
COMMENT_PREFIX = "LoRA Studio"
LBW_TITLE = "LoRA Block Weight"
"""The title of hako-mikan's sd-webui-lora-block-weight script, which scales the same `lbw=` tags in place."""
LBW_ACTIVE_INPUT = 1
"""The position of LBW's Active box among its script inputs (presets text, Active, …)."""

logger = logging.getLogger("lora_studio")


def builtin_networks() -> Any | None:
    """The built-in Lora's `networks` module once the WebUI loaded it (never imported here), else None."""
    module = sys.modules.get("networks")
    return module if isinstance(getattr(module, "loaded_networks", None), list) else None


def _user_presets_file() -> Path:
    from .tabs import webui_context

    return webui_context().presets_file


def _webui_gate() -> GpuGate:
    from .tabs import WEBUI_GPU

    return WEBUI_GPU


def _interrupt_webui() -> None:
    from modules import shared  # type: ignore[import-not-found]

    shared.state.interrupt()


@dataclass
class _Generation:
    """What one generation (one `process_images` call) carries between hooks."""

    presets: PresetBook
    acting: bool = True
    """False when this generation is refused, or left to LBW: the hooks then change nothing."""
    left_to_lbw: bool = False
    typed_hires: dict[int, str] = field(default_factory=dict)


class BlockWeightController:
    """The script's state across hooks: the presets of the running generation and the patch on the networks."""

    def __init__(
        self,
        *,
        gate: Callable[[], GpuGate] = _webui_gate,
        networks: Callable[[], Any | None] = builtin_networks,
        presets_file: Callable[[], Path | None] = _user_presets_file,
        interrupt: Callable[[], None] = _interrupt_webui,
    ) -> None:
        self._gate = gate
        self._networks = networks
        self._presets_file = presets_file
        self._interrupt = interrupt
        self.patch = BlockWeightPatch()
        self._generation: _Generation | None = None

    # --- script hooks ------------------------------------------------------------------------------------------

    def before_process(self, p: Any) -> None:
        """Start a generation: refuse it while another job holds the model, else read presets, add the field."""
        self.patch.restore()
        holder = self._gate().holder
        if holder is not None and getattr(p, ALLOW_WHILE_HELD_ATTR, None) != holder:
            self._generation = _Generation(PresetBook.builtin(), acting=False)
            self._report(p, f"generation refused: the model is busy with {holder}; "
                            "wait for it to finish or stop it, then generate again")
            self._interrupt()
            return
        if lbw_active(p):
            self._generation = _Generation(PresetBook.builtin(), acting=False, left_to_lbw=True)
            return
        self._generation = _Generation(self._read_presets(p))
        p.extra_generation_params[BLOCK_WEIGHTS_FIELD] = BlockWeightsInfotext()

    def before_process_batch(self, p: Any, batch_number: int, prompts: MutableSequence[str]) -> None:
        """Rewrite the batch's prompts (the list A1111 passes is `p.prompts`) and its hires prompts, in place."""
        generation = self._current(p)
        if not generation.acting:
            return
        problems = rewrite_prompts(prompts)
        restore_prompts(getattr(p, "all_hr_prompts", None) or [], generation.typed_hires)
        generation.typed_hires, hires_problems = rewrite_hires_prompts(p, batch_number)
        for problem in [*problems, *hires_problems]:
            self._report_left_as_typed(p, problem)

    def after_extra_networks_activate(self, p: Any, extra_network_data: Any) -> None:
        """Patch the networks the built-in just loaded with the block weights of the calls it was given."""
        generation = self._current(p)
        if generation.left_to_lbw:
            self._report_left_to_lbw(p, extra_network_data)
        if not generation.acting:
            return
        calls, errors = calls_from_extra_network_data(extra_network_data)
        for error in errors:
            self._report_left_as_typed(p, RewriteProblem("", error))
        acting = calls_with_block_weights(calls)
        if not acting:
            self.patch.restore()
            return
        networks = self._networks()
        arch = _arch_of(p.sd_model)
        if networks is None or arch is None:
            self.patch.restore()
            self._report(p, "block weights are not applied: they need A1111's built-in Lora and an SD1/SD2/SDXL "
                            "model; the LoRAs are applied without them")
            return
        plans = {call.name: self._plan(p, call, generation.presets, arch) for call in acting}
        steps = _pass_steps(p)
        for plan in plans.values():
            plan.unet_on = plan.unet_on_at(0, steps)
        self.patch.apply(networks.loaded_networks, plans, p.sd_model.model.diffusion_model, arch)

    def process_batch(self, p: Any) -> None:
        """The prompts are parsed: put this batch's hires prompts back as typed."""
        generation = self._current(p)
        restore_prompts(getattr(p, "all_hr_prompts", None) or [], generation.typed_hires)
        generation.typed_hires = {}

    def postprocess(self, p: Any) -> None:
        """End of the generation: hires prompts as typed, every multiplier and tag removed."""
        if self._generation is not None:
            restore_prompts(getattr(p, "all_hr_prompts", None) or [], self._generation.typed_hires)
        self.patch.restore()
        self._generation = None

    # --- callbacks -----------------------------------------------------------------------------------------------

    def on_cfg_denoiser(self, params: Any) -> None:
        """`on_cfg_denoiser`: switch the UNet part of windowed LoRAs at this step (the next forward re-merges)."""
        if self.patch.active:
            self.patch.set_step(int(params.sampling_step), int(params.total_sampling_steps))

    def on_infotext_pasted(self, infotext: str, params: MutableMapping[str, Any]) -> None:
        """`on_infotext_pasted`: drop a `Lora block weights` field we cannot read; the prompt stays as pasted."""
        value = params.get(BLOCK_WEIGHTS_FIELD)
        if value is None:
            return
        try:
            parse_block_weights_value(str(value))
        except PromptSyntaxError as error:
            logger.warning("%s: pasted %s field ignored: %s", COMMENT_PREFIX, BLOCK_WEIGHTS_FIELD, error)
            params.pop(BLOCK_WEIGHTS_FIELD, None)

    def unload(self) -> None:
        """`on_script_unloaded`: remove everything this script set on the built-in's networks."""
        self.patch.restore()
        self._generation = None

    # --- internals -----------------------------------------------------------------------------------------------

    def _current(self, p: Any) -> _Generation:
        if self._generation is None:  # hooks called without before_process (another script driving processing)
            self._generation = _Generation(self._read_presets(p))
        return self._generation

    def _read_presets(self, p: Any) -> PresetBook:
        book = PresetBook.builtin()
        try:
            path = self._presets_file()
            if path is not None and path.is_file():
                book = book.merge(PresetBook.from_file(path))
        except (BlockWeightError, OSError) as error:
            self._report(p, f"user presets not read ({error}); using the built-in presets")
        return book

    def _plan(self, p: Any, call: Any, presets: PresetBook, arch: Arch) -> NetworkPlan:
        if call.blocks is None:
            return NetworkPlan(call)
        try:
            return NetworkPlan(call, presets.resolve(call.blocks, arch))
        except BlockWeightError as error:
            self._report(p, f"{call.raw or call.name}: {error}; applied without block weights")
            return NetworkPlan(call)

    def _report_left_to_lbw(self, p: Any, extra_network_data: Any) -> None:
        """Say once that LBW has the block weights, when a LoRA of this generation has any."""
        if calls_with_block_weights(calls_from_extra_network_data(extra_network_data)[0]):
            self._report(p, "LoRA Block Weight (sd-webui-lora-block-weight) is active too and scales the same tags, "
                            "so LoRA Studio leaves block weights to it; untick its Active box, or disable it in "
                            "Extensions, to use LoRA Studio's presets and syntax")

    def _report_left_as_typed(self, p: Any, problem: RewriteProblem) -> None:
        self._report(p, f"{problem.reason}; left as typed (the built-in Lora applies it without block weights)")

    @staticmethod
    def _report(p: Any, text: str) -> None:
        message = f"{COMMENT_PREFIX}: {text}"
        comments = getattr(p, "comments", None)
        if isinstance(comments, dict) and message in comments:
            return
        p.comment(message)
        logger.warning(message)


def lbw_active(p: Any) -> bool:
    """Whether LBW runs in this generation: its always-on script is among `p.scripts` and its Active input is on
    (None counts as on, as LBW reads it; an input we cannot find counts as LBW's default, on)."""
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or ():
        try:
            if script.title() != LBW_TITLE:
                continue
        except Exception:  # noqa: BLE001 - someone else's script: a broken title() is not ours to report
            continue
        args = tuple(getattr(p, "script_args", None) or ())
        start = getattr(script, "args_from", None)
        if not isinstance(start, int) or not 0 <= start + LBW_ACTIVE_INPUT < len(args):
            return True
        active = args[start + LBW_ACTIVE_INPUT]
        return active is None or bool(active)
    return False


def _arch_of(sd_model: Any) -> Arch | None:
    from ..hosts.a1111 import A1111Host

    try:
        return A1111Host(sd_model).arch
    except LoraStudioError:
        return None


def _pass_steps(p: Any) -> int:
    """The sampling steps of the pass being set up (hires: its own steps, else the first pass's)."""
    if getattr(p, "is_hr_pass", False):
        return int(getattr(p, "hr_second_pass_steps", 0) or p.steps)
    return int(p.steps)


CONTROLLER = BlockWeightController()
"""The one controller of this WebUI; the txt2img and img2img script instances share it."""
