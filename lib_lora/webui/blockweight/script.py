"""Per-block LoRA strength in A1111 1.10 and Forge Neo: the logic of the always-on script `scripts/lora_studio.py`
forwards to.

One `BlockWeightController` per WebUI (`CONTROLLER`), driven by the script's hooks in the WebUI's order:
- `before_process`: refuse the generation while training holds the GPU gate (`hosts.gate.WEBUI_GPU`); stand aside
  when LBW (sd-webui-lora-block-weight) is installed and active, so no block weight is applied twice (said once a
  LoRA with block weights comes); read the presets (built-in + the user's `presets.txt`); register the
  `Lora block weights` and `Lora block weights refused` infotext fields.
- `before_process_batch`: read the model's family (Forge loads the checkpoint inside processing, so not earlier)
  and on Forge wrap its LoRA loader for this generation (`blockweight_forge`); rewrite the batch's prompts and hires
  prompts so the built-in Lora accepts every tag (`<lora:x:0.8:NCNF>` → `<lora:x:0.8:0.8:lbw=NCNF>`); prompts we
  cannot parse stay as typed, reported once. On Forge, plan the block weights of the LoRAs its loader is about to
  load, again before each activation from the tags activated (`blockweight_host.ActivationHook`): a pass gets its
  own prompt's block weights, never the other pass's.
- `after_extra_networks_activate` (first pass and hires pass): on A1111, install per-module multipliers on the
  networks the built-in just loaded (`blockweight_networks.BlockWeightPatch`); on Neo the loader already weighted
  the patches, and the step windows are set for the pass's first step.
- `process_batch`: the hires prompts back as typed (the infotext compares them with the prompt).
- `on_cfg_denoiser` (every sampling step): open or close `start=`/`stop=` windows. They gate the UNet part only:
  the text-encoder part is in the conditioning, computed before sampling. Steps mean what they mean in LBW
  (`blocks.steps`), counted with the `sampling_step` the WebUI reports to the callback, the number LBW reads too, so
  a tag switches at the same model call as with LBW. The hires pass counts its own steps.
- `postprocess` and `on_script_unloaded`: remove every multiplier, tag and wrapper; the networks stay loaded, as
  the built-in leaves them.
- `on_infotext_pasted`: a malformed `Lora block weights` field is dropped; the prompt is never changed (the
  infotext holds it as typed, so pasting it back reproduces the image).

The records say what was applied: `Lora modules matched` counts, per LoRA of the prompt, its modules the built-in
placed on a layer (`blockweight_matching`; a LoRA that matched in part or not at all is also reported, and its block
weights are refused when nothing matched); `Lora block weights` lists only the tags whose block weights and windows
were applied, by pass when the hires prompt's differ (`blockweight_prompts.block_weights_record`); each tag that was
refused (unknown preset, wrong vector length, a tag we cannot parse, a WebUI whose loader we cannot weight) is in
`Lora block weights refused` with its reason, in every image's infotext (and so in the API's answer), and is
reported once per generation as an image comment and a console warning. Generation goes on: a refused tag is still
applied by the built-in, without block weights.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...arch import Arch
from ...blocks.apply import BLOCK_WEIGHTS_FIELD
from ...blocks.presets import PresetBook
from ...blocks.step_window import is_gated
from ...blocks.syntax import parse_prompt
from ...errors import BlockWeightError, PromptSyntaxError
from ...hosts.gate import ALLOW_WHILE_HELD_ATTR, WEBUI_GPU
from ...jobs import GpuGate
from ...networks.matching import MATCHED_FIELD
from .forge import ForgePatchWeights, is_neo, plan_key
from .host import ActivationHook, arch_of, is_forge, lbw_active, pass_steps, webui_extra_networks
from .matching import MatchRecords, a1111_match
from .networks import BlockWeightPatch, NetworkPlan
from .prompts import (
    REFUSED_FIELD,
    BlockWeightsInfotext,
    Refusals,
    RefusedInfotext,
    RewriteProblem,
    calls_from_extra_network_data,
    calls_with_block_weights,
    hires_batch,
    parse_block_weights_value,
    restore_prompts,
    rewrite_hires_prompts,
    rewrite_prompts,
)

__all__ = ["CONTROLLER", "SCRIPT_TITLE", "BlockWeightController", "builtin_networks", "is_forge", "lbw_active"]

SCRIPT_TITLE = "LoRA Studio block weights"
COMMENT_PREFIX = "LoRA Studio"

logger = logging.getLogger("lora_studio")


def builtin_networks() -> Any | None:
    """The built-in Lora's `networks` module once the WebUI loaded it (never imported here), else None."""
    module = sys.modules.get("networks")
    return module if isinstance(getattr(module, "loaded_networks", None), list) else None


def _user_presets_file() -> Path:
    from ..tabs import webui_context

    return webui_context().presets_file


def _webui_gate() -> GpuGate:
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
    forge: bool = False
    """Forge Neo or Forge 2: block weights go on the LoRA patches (`blockweight_forge`), planned before the built-in
    loads them."""
    arch: Arch | None = None
    typed_hires: dict[int, str] = field(default_factory=dict)
    refusals: Refusals = field(default_factory=Refusals)
    matches: MatchRecords = field(default_factory=MatchRecords)


class BlockWeightController:
    """The script's state across hooks: the presets of the running generation and the patch on the networks."""

    def __init__(
        self,
        *,
        gate: Callable[[], GpuGate] = _webui_gate,
        networks: Callable[[], Any | None] = builtin_networks,
        presets_file: Callable[[], Path | None] = _user_presets_file,
        interrupt: Callable[[], None] = _interrupt_webui,
        extra_networks: Callable[[], Any | None] = webui_extra_networks,
    ) -> None:
        self._gate = gate
        self._networks = networks
        self._presets_file = presets_file
        self._interrupt = interrupt
        self._extra_networks = extra_networks
        self.activation = ActivationHook()
        self.patch = BlockWeightPatch()
        self.forge = ForgePatchWeights()
        self._generation: _Generation | None = None

    # --- script hooks ------------------------------------------------------------------------------------------

    def before_process(self, p: Any) -> None:
        """Start a generation: refuse it while another job holds the model, else read presets, add the fields and,
        on Forge Neo, wrap its LoRA loader for this generation."""
        self._restore()
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
        generation = self._generation = _Generation(self._read_presets(p))
        p.extra_generation_params[BLOCK_WEIGHTS_FIELD] = BlockWeightsInfotext(generation.refusals)
        p.extra_generation_params[REFUSED_FIELD] = RefusedInfotext(generation.refusals)
        p.extra_generation_params[MATCHED_FIELD] = generation.matches

    def before_process_batch(self, p: Any, batch_number: int, prompts: MutableSequence[str]) -> None:
        """Rewrite the batch's prompts (the list A1111 passes is `p.prompts`) and its hires prompts, in place."""
        generation = self._current(p)
        if not generation.acting:
            return
        self._find_model(p, generation)
        problems = rewrite_prompts(prompts)
        restore_prompts(getattr(p, "all_hr_prompts", None) or [], generation.typed_hires)
        generation.typed_hires, hires_problems = rewrite_hires_prompts(p, batch_number)
        for problem in [*problems, *hires_problems]:
            self._report_left_as_typed(p, problem)
        if generation.forge and not self.activation.installed:  # else each activation is planned from its tags
            batch = [*prompts, *(p.all_hr_prompts[i] for i in hires_batch(p, batch_number))]
            self._plan_forge_loads(p, [call for prompt in batch for call in _parsed(prompt)])

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
        self._count_matches(p, generation, calls)
        acting = calls_with_block_weights(calls)
        if not acting:
            self.patch.restore()
            return
        if generation.forge:
            self.forge.set_step(0, pass_steps(p))
            return
        networks = self._networks()
        arch = generation.arch or arch_of(p.sd_model)
        if networks is None or arch is None or is_forge(p.sd_model):  # Forge without a loader we can weight
            self.patch.restore()
            reason = "they need the WebUI's built-in Lora and an SD1/SD2/SDXL model"
            self._refuse(p, acting, f"block weights not applied: {reason}; the LoRA is applied without them")
            return
        plans = {call.name: self._plan(p, call, generation.presets, arch) for call in acting}
        steps = pass_steps(p)
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
        self._restore()
        self._generation = None

    # --- callbacks -----------------------------------------------------------------------------------------------

    def on_cfg_denoiser(self, params: Any) -> None:
        """`on_cfg_denoiser`: switch the UNet part of windowed LoRAs at this step (the next forward re-merges)."""
        if self.patch.active:
            self.patch.set_step(int(params.sampling_step), int(params.total_sampling_steps))
        if self.forge.installed:
            self.forge.set_step(int(params.sampling_step), int(params.total_sampling_steps))

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
        self._restore()
        self._generation = None

    # --- internals -----------------------------------------------------------------------------------------------

    def _restore(self) -> None:
        try:
            self.patch.restore()
            self.forge.restore()
        finally:
            self.activation.restore()

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

    def _find_model(self, p: Any, generation: _Generation) -> None:
        """The loaded model's family, and on Forge the loader wrapper, once the model of this batch is loaded: Forge
        Neo loads (or switches) the checkpoint inside processing, after `before_process` and before each batch."""
        generation.arch = arch_of(p.sd_model)
        networks = self._networks()
        if is_forge(p.sd_model) and callable(getattr(networks, "load_networks", None)) and generation.arch:
            generation.forge = True
            if not self.forge.installed:
                self.forge.install(networks, p.sd_model, generation.arch)
            extra_networks = self._extra_networks()
            if extra_networks is not None and not self.activation.installed:
                self.activation.install(extra_networks, self._plan_activation)
        else:
            generation.forge = False
            self.forge.restore()
            self.activation.restore()

    def _plan(self, p: Any, call: Any, presets: PresetBook, arch: Arch) -> NetworkPlan:
        if call.blocks is None:
            return NetworkPlan(call)
        try:
            return NetworkPlan(call, presets.resolve(call.blocks, arch))
        except BlockWeightError as error:
            self._refuse(p, [call], f"{error}; applied without block weights")
            return NetworkPlan(call)

    def _plan_forge_loads(self, p: Any, calls: list[Any]) -> None:
        """Forge: the block weights of the LoRAs its loader is about to load, by what it receives (name, te, unet);
        a LoRA given two ways in one load keeps the first and the other is reported."""
        generation = self._current(p)
        if not generation.acting or not generation.forge or generation.arch is None:
            return
        plans: dict[tuple[str, float, float], NetworkPlan] = {}
        for call in calls_with_block_weights(calls):
            key = plan_key(call.name, call.te, call.unet)
            if is_gated(call) and not is_neo():
                self._refuse(p, [call], "step windows (start=/stop=) need Forge Neo or A1111 (Forge 2 merges "
                                        "the LoRA once per generation); applied without block weights")
            elif key not in plans:
                plans[key] = self._plan(p, call, generation.presets, generation.arch)
            elif plans[key].call != call:
                self._refuse(p, [call], f"{plans[key].call.raw or call.name} is used with other block weights "
                                        "in the same batch; applied with the first one's")
        self.forge.set_plans(plans)

    def _plan_activation(self, p: Any, extra_network_data: Any) -> None:
        """Before Forge activates `extra_network_data`: plan its loads from its own tags. Inside the WebUI's call, so
        nothing may raise: on a bug the LoRAs load without block weights, reported."""
        try:
            self._plan_forge_loads(p, calls_from_extra_network_data(extra_network_data)[0])
        except Exception as error:  # noqa: BLE001 - the WebUI's processing must go on
            self.forge.set_plans({})
            self._report(p, f"block weights not applied to this load ({error!r}); the LoRAs load without them")

    def _count_matches(self, p: Any, generation: _Generation, calls: list[Any]) -> None:
        """Record how many modules of each loaded LoRA matched; report a partial or empty match once, and refuse the
        block weights of a LoRA none of whose modules matched."""
        networks, arch = self._networks(), generation.arch or arch_of(p.sd_model)
        if networks is None or arch is None or (is_forge(p.sd_model) and not generation.forge):
            return  # a Forge whose loader we do not wrap keeps no modules on its networks: nothing to count
        for network in list(getattr(networks, "loaded_networks", None) or ()):
            counted = self.forge.counts.match if generation.forge else a1111_match
            match = counted(network, arch.name)
            if match is None or not generation.matches.record(match) or match.complete:
                continue
            self._report(p, match.message())
            if match.none:
                nothing = f"block weights not applied: the LoRA matches no layer of this model ({match.summary()})"
                self._refuse(p, [c for c in calls_with_block_weights(calls) if c.name == match.name], nothing)

    def _refuse(self, p: Any, calls: Iterable[Any], reason: str) -> None:
        """Record each call's block weights as not applied (the infotext's refused field) and report it once."""
        for call in calls:
            self._current(p).refusals.refuse(call, reason)
            self._report(p, f"{call.raw or call.name}: {reason}")

    def _report_left_to_lbw(self, p: Any, extra_network_data: Any) -> None:
        """Say once that LBW has the block weights, when a LoRA of this generation has any."""
        if calls_with_block_weights(calls_from_extra_network_data(extra_network_data)[0]):
            self._report(p, "LoRA Block Weight (sd-webui-lora-block-weight) is active too and scales the same tags, "
                            "so LoRA Studio leaves block weights to it; untick its Active box, or disable it in "
                            "Extensions, to use LoRA Studio's presets and syntax")

    def _report_left_as_typed(self, p: Any, problem: RewriteProblem) -> None:
        reason = f"{problem.reason}; left as typed (the built-in Lora applies it without block weights)"
        if problem.tag:
            self._current(p).refusals.refuse_text(problem.tag, reason)
        self._report(p, reason)

    @staticmethod
    def _report(p: Any, text: str) -> None:
        message = f"{COMMENT_PREFIX}: {text}"
        comments = getattr(p, "comments", None)
        if isinstance(comments, dict) and message in comments:
            return
        p.comment(message)
        logger.warning(message)


def _parsed(prompt: str) -> list[Any]:
    """The calls of a prompt; none for a prompt with a tag we cannot parse (left as typed, reported by the rewrite)."""
    try:
        return parse_prompt(prompt)[1]
    except PromptSyntaxError:
        return []


CONTROLLER = BlockWeightController()
"""The one controller of this WebUI; the txt2img and img2img script instances share it."""
