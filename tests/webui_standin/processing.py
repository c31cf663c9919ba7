"""A stand-in for the parts of A1111 1.10.1's `modules/processing.py` and `modules/scripts.py` that drive scripts.

- `Txt2ImgStandIn`: the fields of `StableDiffusionProcessingTxt2Img` the loop and our glue touch;
  `setup_prompts` and `parse_extra_network_prompts` as in A1111 (hires prompts re-sliced from `all_hr_prompts`
  when the batch is parsed), `comment()` into the `comments` dict.
- `ScriptRunnerStandIn`: calls each always-on script's hook and, like A1111's ScriptRunner, reports an exception
  (`errors`, where failing `on_cfg_denoiser` callbacks are recorded too) and goes on: a hook cannot stop a
  generation by raising.
- `process_images`: the hook order of `process_images` / `process_images_inner` / `sample_hr_pass`:
  before_process, setup_prompts, process; per batch (unless `shared.state.interrupted`): slice prompts,
  before_process_batch, parse, extra networks activate (→ after_extra_networks_activate), process_batch, text
  encoders run (their layers merge), sampling steps (`on_cfg_denoiser` callbacks, then the UNet's layers merge);
  hires: activate the hires networks, encoders, steps; infotexts per image from `p.prompts` re-sliced out of
  `p.all_prompts`; postprocess. No tensors flow: a test that wants per-step state passes `on_step`.
- `create_infotext`, `quote`, `parse_generation_parameters`: infotext writing and reading with
  infotext_utils' quoting (a value with ',', ':' or a newline is JSON-quoted) and callables in
  `extra_generation_params` called with the function's locals (`prompt_text`, `index`, `p`, …).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .builtin_lora import BuiltinLora, ExtraNetworks, parse_prompts
from .fake_extension_api import CFGDenoiserParams

StepHook = Callable[[str, int], None]


@dataclass
class Txt2ImgStandIn:
    sd_model: Any
    prompt: str | list[str] = ""
    negative_prompt: str = ""
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 4
    enable_hr: bool = False
    hr_prompt: str | list[str] = ""
    hr_second_pass_steps: int = 0
    is_api: bool = False
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, int] = field(default_factory=dict)
    disable_extra_networks: bool = False
    scripts: Any = None
    script_args: tuple[Any, ...] = ()
    all_prompts: list[str] | None = None
    all_hr_prompts: list[str] | None = None
    prompts: list[str] | None = None
    hr_prompts: list[str] | None = None
    seeds: list[int] | None = None
    subseeds: list[int] | None = None
    extra_network_data: Any = None
    hr_extra_network_data: Any = None
    iteration: int = 0
    is_hr_pass: bool = False

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def setup_prompts(self) -> None:
        self.all_prompts = list(self.prompt) if isinstance(self.prompt, list) else \
            self.batch_size * self.n_iter * [self.prompt]
        if self.enable_hr:
            hr_prompt = self.hr_prompt or self.prompt
            self.all_hr_prompts = list(hr_prompt) if isinstance(hr_prompt, list) else \
                self.batch_size * self.n_iter * [hr_prompt]

    def parse_extra_network_prompts(self) -> None:
        self.prompts, self.extra_network_data = parse_prompts(self.prompts)
        if self.enable_hr:
            batch = slice(self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size)
            self.hr_prompts = self.all_hr_prompts[batch]
            self.hr_prompts, self.hr_extra_network_data = parse_prompts(self.hr_prompts)


def script_args(script: Any, p: Any) -> tuple[Any, ...]:
    """The slice of `p.script_args` a script's inputs own (`args_from:args_to`, as A1111 sets them; all of them
    for a script built without)."""
    return tuple(p.script_args[getattr(script, "args_from", 0):getattr(script, "args_to", len(p.script_args))])


class ScriptRunnerStandIn:
    """modules/scripts.py ScriptRunner for always-on scripts: every hook wrapped, exceptions reported."""

    def __init__(self, scripts: list[Any]) -> None:
        self.alwayson_scripts = scripts
        self.errors: list[str] = []

    def _each(self, method: str, p: Any, *args: Any, **kwargs: Any) -> None:
        for script in self.alwayson_scripts:
            try:
                getattr(script, method)(p, *args, *script_args(script, p), **kwargs)
            except Exception as error:  # A1111: errors.report(f"Error running {method}: …")
                self.errors.append(f"Error running {method}: {error!r}")

    def before_process(self, p: Any) -> None:
        self._each("before_process", p)

    def process(self, p: Any) -> None:
        self._each("process", p)

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        self._each("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p: Any, **kwargs: Any) -> None:
        self._each("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p: Any, **kwargs: Any) -> None:
        self._each("process_batch", p, **kwargs)

    def postprocess(self, p: Any, processed: Any) -> None:
        for script in self.alwayson_scripts:
            try:
                script.postprocess(p, processed, *script_args(script, p))
            except Exception as error:
                self.errors.append(f"Error running postprocess: {error!r}")


@dataclass
class ProcessedStandIn:
    infotexts: list[str]
    comments: str


def _text_encoders(sd_model: Any) -> list[Any]:
    if sd_model.is_sdxl:
        return [embedder.wrapped for embedder in sd_model.conditioner.embedders if hasattr(embedder, "wrapped")]
    return [sd_model.cond_stage_model.wrapped]


def _sample(p: Any, builtin: BuiltinLora, callbacks: list[Any], steps: int, pass_name: str,
            on_step: StepHook | None) -> None:
    errors = p.scripts.errors if p.scripts is not None else []
    for step in range(steps):
        params = CFGDenoiserParams(None, None, None, step, steps, None, None)
        for _name, callback in callbacks:
            try:
                callback(params)
            except Exception as error:  # A1111: report_exception(...), sampling goes on
                errors.append(f"Error running cfg_denoiser callback: {error!r}")
        builtin.apply_weights_in(p.sd_model.model)
        if on_step is not None:
            on_step(pass_name, step)


def process_images(p: Txt2ImgStandIn, builtin: BuiltinLora, extra_networks: ExtraNetworks, webui: Any, *,
                   on_step: StepHook | None = None) -> ProcessedStandIn:
    """One generation through the scripts' hooks in A1111's order; returns the images' infotexts and comments."""
    callbacks = webui.callbacks["cfg_denoiser"]
    if p.scripts is not None:
        p.scripts.before_process(p)
    p.setup_prompts()
    if p.enable_hr:  # StableDiffusionProcessingTxt2Img.init: written only when it differs from the prompt
        p.extra_generation_params["Hires prompt"] = _hires_prompt
    p.seeds = p.subseeds = []
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts: list[str] = []
    for n in range(p.n_iter):
        if webui.shared.state.interrupted:
            break
        p.iteration = n
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts = p.all_prompts[batch]
        p.seeds = p.subseeds = list(range(len(p.prompts)))
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        for encoder in _text_encoders(p.sd_model):
            builtin.apply_weights_in(encoder)
        _sample(p, builtin, callbacks, p.steps, "first", on_step)
        if p.enable_hr:
            p.is_hr_pass = True
            extra_networks.activate(p, p.hr_extra_network_data)
            for encoder in _text_encoders(p.sd_model):
                builtin.apply_weights_in(encoder)
            _sample(p, builtin, callbacks, p.hr_second_pass_steps or p.steps, "hires", on_step)
            p.is_hr_pass = False
        p.prompts = p.all_prompts[batch]
        infotexts += [create_infotext(p, p.prompts, index=i) for i in range(len(p.prompts))]
    processed = ProcessedStandIn(infotexts, "".join(f"{comment}\n" for comment in p.comments))
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed


def _hires_prompt(p: Any, index: int, prompt_text: str, **_: Any) -> str | None:
    hr_prompt = p.all_hr_prompts[index]
    return hr_prompt if hr_prompt != prompt_text else None


def quote(text: Any) -> Any:
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def create_infotext(p: Any, all_prompts: list[str], index: int) -> str:
    """`processing.create_infotext` for image `index` of `all_prompts` (the batch's prompts as typed)."""
    prompt_text = all_prompts[index]
    negative_prompt = p.negative_prompt
    generation_params: dict[str, Any] = {"Steps": p.steps, **p.extra_generation_params}
    context = dict(p=p, index=index, prompt_text=prompt_text, negative_prompt=negative_prompt,
                   all_prompts=all_prompts)
    for key, value in list(generation_params.items()):
        if callable(value):
            generation_params[key] = value(**context)
    params_text = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items()
                            if v is not None)
    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_text}\n{params_text}".strip()


def _fields(line: str) -> dict[str, Any]:
    """`Key: value, Key: "quoted, value", …` read left to right; a quoted value is a JSON string."""
    fields: dict[str, Any] = {}
    rest = line
    while rest.strip():
        key, colon, rest = rest.partition(":")
        if not colon:
            break
        rest = rest.lstrip()
        if rest.startswith('"'):
            value, end = json.JSONDecoder().raw_decode(rest)
            rest = rest[end:].lstrip().removeprefix(",")
        else:
            value, _, rest = rest.partition(",")
            value = value.strip()
        fields[key.strip()] = value
    return fields


def parse_generation_parameters(text: str, pasted: tuple[Callable[[str, dict[str, Any]], None], ...] = ()
                                ) -> dict[str, Any]:
    """`infotext_utils.parse_generation_parameters` for our infotexts: prompt lines, `Negative prompt:` lines, then
    the line of fields; then the `on_infotext_pasted` callbacks with (infotext, params)."""
    *lines, last = text.strip().split("\n")
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt:") or negative:
            negative.append(line.removeprefix("Negative prompt:").strip() if not negative else line)
        else:
            prompt.append(line)
    params: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    params.update(_fields(last))
    for callback in pasted:
        callback(text, params)
    return params
