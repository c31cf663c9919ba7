"""Our own WebUI generations keep the seed, steps and size they ask for, and return the WebUI's own record.

The stand-in copies what A1111 1.10.1 and Forge Neo do (modules/processing.py, modules/scripts.py): assigning
`p.script_args` runs each always-on script's `setup` at once, with `is_ui = not p.is_api`; the built-in Seed and
Sampler scripts (`ScriptBuiltinUI`, `setup_for_ui_only`) then copy their controls' values into `p` — in the real
WebUI those are the txt2img tab's defaults (seed -1, 20 steps).
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from lib_lora.hosts.base import GenerationRequest
from lib_lora.hosts.webui_processing import generate_txt2img


class UiOnlyDefaults:
    """The built-in Seed + Sampler scripts, folded: UI-only; their controls hold the tab's defaults."""

    setup_for_ui_only = True
    args_from, args_to = 1, 3

    def setup(self, p: Any, seed: int, steps: int) -> None:
        p.seed, p.steps = seed, steps


class Runner:
    def __init__(self) -> None:
        self.inputs = [SimpleNamespace(value=None), SimpleNamespace(value=-1), SimpleNamespace(value=20)]
        self.scripts = [UiOnlyDefaults()]

    def setup_scrips(self, p: Any, *, is_ui: bool = True) -> None:
        for script in self.scripts:
            if not is_ui and script.setup_for_ui_only:
                continue
            script.setup(p, *p.script_args[script.args_from:script.args_to])


class Processing:
    """`StableDiffusionProcessingTxt2Img` as far as setup goes: `script_args` is a property that sets up."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)
        self.is_api, self.scripts, self._args = False, None, ()

    @property
    def script_args(self) -> tuple[Any, ...]:
        return self._args

    @script_args.setter
    def script_args(self, value: tuple[Any, ...]) -> None:
        self._args = value
        if self.scripts and value:
            self.scripts.setup_scrips(self, is_ui=not self.is_api)


@pytest.fixture
def webui(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    seen: list[Any] = []

    def process_images(p: Any) -> Any:
        seen.append(p)
        image = Image.new("RGB", (p.width, p.height))
        return SimpleNamespace(images=[image], infotexts=[f"{p.prompt}\nSteps: {p.steps}, Seed: {p.seed}"])

    modules = ModuleType("modules")
    modules.scripts = SimpleNamespace(scripts_txt2img=Runner())  # type: ignore[attr-defined]
    modules.processing = SimpleNamespace(StableDiffusionProcessingTxt2Img=Processing,  # type: ignore[attr-defined]
                                         process_images=process_images)
    monkeypatch.setitem(sys.modules, "modules", modules)
    return SimpleNamespace(seen=seen)


def test_the_seed_and_steps_asked_for_are_the_ones_generated_and_recorded(webui: SimpleNamespace) -> None:
    request = GenerationRequest(prompt="a cat", steps=4, seed=42, width=64, height=64)
    image = generate_txt2img(object(), request, "the WebUI")
    p = webui.seen[0]
    assert (p.seed, p.steps, p.is_api) == (42, 4, True)
    assert image.info["parameters"] == "a cat\nSteps: 4, Seed: 42"


def test_our_generation_waits_for_the_webui_s_queue(webui: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A txt2img holding the WebUI's queue lock runs alone: ours starts once it is done."""
    import threading

    lock = threading.Lock()
    monkeypatch.setitem(sys.modules, "modules.call_queue", SimpleNamespace(queue_lock=lock))
    held_during: list[bool] = []
    plain = sys.modules["modules"].processing.process_images
    sys.modules["modules"].processing.process_images = lambda p: (held_during.append(lock.locked()), plain(p))[1]
    request = GenerationRequest(prompt="a cat", steps=4, seed=42, width=64, height=64)
    lock.acquire()  # the WebUI's generation
    worker = threading.Thread(target=generate_txt2img, args=(object(), request, "the WebUI"))
    worker.start()
    worker.join(0.3)
    assert worker.is_alive() and webui.seen == []  # waiting
    lock.release()
    worker.join(5)
    assert held_during == [True] and not lock.locked() and len(webui.seen) == 1
