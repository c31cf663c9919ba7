"""The extension API the glue touches (scripts/, lib_lora/webui/), added to fake_modules' package.

- `modules.script_callbacks`: `on_ui_tabs`, `on_ui_settings`, `on_cfg_denoiser`, `on_infotext_pasted`,
  `on_script_unloaded` (each `(callback, *, name=None)`); registrations are recorded in `callbacks`
  (category -> [(name, callback)]). `CFGDenoiserParams` has A1111 1.10's fields.
- `modules.scripts`: `Script` (every hook the glue may override, as no-ops) and `AlwaysVisible`.
- `shared.state`: `interrupted`, `interrupt()`, `begin()` (which clears `interrupted`, as a new job does).
- `modules.shared`: `OptionInfo` (+ `.info()`), `options_section`, `options_templates` and `opts`, whose
  `data_labels` is that same dict, as in A1111 1.10 / Forge; `opts.add_option`; reading `opts.<key>` falls
  back to the option's default. `cmd_opts.lora_dir` exists only when given (the built-in Lora adds the flag).
- `modules.paths`: `models_path`, `data_path` (its parent, as in a default A1111 install).
- `shared.sd_model` is guarded: every read is recorded in `sd_model_reads` and raises until
  `allow_sd_model()` (reading it in the WebUI loads a checkpoint, so building the UI must never do it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

import pytest


class OptionInfo:
    """`modules.options.OptionInfo`: the fields and the chaining method our settings use."""

    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        onchange: Callable[[], None] | None = None,
        section: tuple[str, str] | None = None,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.refresh = refresh
        self.comment_after = ""

    def info(self, info: str) -> OptionInfo:
        self.comment_after += f"<span class='info'>({info})</span>"
        return self


def options_section(
    section_identifier: tuple[str, str], options_dict: dict[str, OptionInfo]
) -> dict[str, OptionInfo]:
    """`modules.options.options_section`: stamp the section on each option."""
    for value in options_dict.values():
        value.section = section_identifier
    return options_dict


class OptionsStandIn:
    """`modules.options.Options`: values over `data_labels` defaults; `add_option` registers one more; `set` and
    `onchange` with A1111 1.10's contract (a raising callback puts the old value back and `set` says False)."""

    def __init__(self, data_labels: dict[str, OptionInfo], values: dict[str, Any]) -> None:
        object.__setattr__(self, "data_labels", data_labels)
        object.__setattr__(self, "data", dict(values))
        object.__setattr__(self, "shown_errors", [])  # what A1111's errors.display would have shown

    def __getattr__(self, key: str) -> Any:
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        old = self.data.get(key)
        if old == value:
            return False
        self.data[key] = value
        option = self.data_labels[key]
        if run_callbacks and option.onchange is not None:
            try:
                option.onchange()
            except Exception as error:
                self.shown_errors.append(f"changing setting {key} to {value}: {error}")
                self.data[key] = old
                return False
        return True

    def onchange(self, key: str, func: Callable[[], None], call: bool = True) -> None:
        self.data_labels[key].onchange = func
        if call:
            func()


def install_extension_api(
    monkeypatch: pytest.MonkeyPatch, fake: SimpleNamespace, *, models_path: Path, lora_dir: Path | None = None
) -> SimpleNamespace:
    """Add the extension API to the package `install_fake_modules` returned; undone by monkeypatch."""
    shared = fake.shared
    templates: dict[str, OptionInfo] = {}
    monkeypatch.setattr(shared, "OptionInfo", OptionInfo, raising=False)
    monkeypatch.setattr(shared, "options_section", options_section, raising=False)
    monkeypatch.setattr(shared, "options_templates", templates, raising=False)
    monkeypatch.setattr(shared, "opts", OptionsStandIn(templates, vars(shared.opts)))
    cmd_opts = dict(vars(shared.cmd_opts), **({"lora_dir": str(lora_dir)} if lora_dir else {}))
    monkeypatch.setattr(shared, "cmd_opts", SimpleNamespace(**cmd_opts))

    state = SimpleNamespace(callbacks={}, sd_model_reads=[], sd_model=shared.sd_model, guarded=True)
    monkeypatch.delattr(shared, "sd_model")

    def shared_getattr(name: str) -> Any:
        if name != "sd_model":
            raise AttributeError(f"module 'modules.shared' has no attribute {name!r}")
        state.sd_model_reads.append(name)
        if state.guarded:
            raise AssertionError("shared.sd_model was read: that loads a checkpoint in the WebUI")
        return state.sd_model

    monkeypatch.setattr(shared, "__getattr__", shared_getattr, raising=False)
    state.allow_sd_model = lambda: setattr(state, "guarded", False)

    script_callbacks = ModuleType("modules.script_callbacks")
    for category in CALLBACK_CATEGORIES:
        state.callbacks[category] = []
        setattr(script_callbacks, f"on_{category}", _recorder(state.callbacks[category]))
    script_callbacks.CFGDenoiserParams = CFGDenoiserParams
    paths = ModuleType("modules.paths")
    paths.models_path = str(models_path)
    paths.data_path = str(Path(models_path).parent)
    scripts = ModuleType("modules.scripts")
    scripts.Script = Script
    scripts.AlwaysVisible = AlwaysVisible
    monkeypatch.setattr(shared, "state", JobState(), raising=False)
    modules = (("script_callbacks", script_callbacks), ("paths", paths), ("scripts", scripts))
    for name, module in modules:
        monkeypatch.setattr(fake.modules, name, module, raising=False)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    state.shared, state.script_callbacks, state.paths, state.scripts = shared, script_callbacks, paths, scripts
    return state


CALLBACK_CATEGORIES = ("ui_tabs", "ui_settings", "cfg_denoiser", "infotext_pasted", "script_unloaded")


class CFGDenoiserParams:
    """`modules.script_callbacks.CFGDenoiserParams` (A1111 1.10): what `on_cfg_denoiser` callbacks receive."""

    def __init__(self, x: Any, image_cond: Any, sigma: Any, sampling_step: int, total_sampling_steps: int,
                 text_cond: Any, text_uncond: Any, denoiser: Any = None) -> None:
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class JobState:
    """`modules.shared_state.State`: the flags a generation loop checks."""

    def __init__(self) -> None:
        self.interrupted = False

    def begin(self, job: str = "(unknown)") -> None:
        self.interrupted = False

    def interrupt(self) -> None:
        self.interrupted = True


AlwaysVisible = object()
"""`modules.scripts.AlwaysVisible`: the sentinel `Script.show` returns for an always-on script."""


class Script:
    """`modules.scripts.Script`: the hooks A1111 1.10's ScriptRunner calls on always-on scripts, as no-ops."""

    filename: str | None = None
    args_from = 0
    args_to = 0

    def title(self) -> str:
        raise NotImplementedError

    def show(self, is_img2img: bool) -> Any:
        return True

    def ui(self, is_img2img: bool) -> Any:
        return None

    def before_process(self, p: Any, *args: Any) -> None:
        pass

    def process(self, p: Any, *args: Any) -> None:
        pass

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def after_extra_networks_activate(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        pass


def _recorder(registry: list[tuple[str | None, Callable[..., Any]]]) -> Callable[..., None]:
    def register(callback: Callable[..., Any], *, name: str | None = None) -> None:
        registry.append((name, callback))

    return register
