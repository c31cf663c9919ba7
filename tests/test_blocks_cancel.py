"""Long Block Weight renders can be followed and stopped: progress within an image (per sampling step) with an ETA,
Cancel inside the image (diffusers: at the next step; a WebUI: through its own interrupt), a busy model that says
what holds it and which Cancel stops it, and steps and size that fit the loaded model."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from lib_lora.blocks.apply import LoraLibrary
from lib_lora.blocks.presets import PresetBook
from lib_lora.blocks.rendering import render_image
from lib_lora.blocks.session import Generated, LoraSession
from lib_lora.errors import HostError
from lib_lora.hosts.base import GenerationRequest
from lib_lora.hosts.webui_progress import following_steps
from lib_lora.jobs import GpuBusyError, GpuGate, Job, JobCancelled, JobSnapshot

REQUEST = GenerationRequest(prompt="a cat", steps=10, width=64, height=64)

# --- progress within an image, and the ETA ------------------------------------------------------------------


@pytest.mark.parametrize(("done", "partial", "total", "percent", "eta"), [
    (0, 0.0, 1, "0%", None),      # nothing done yet: no ETA
    (0, 0.5, 1, "50%", 10.0),     # half the steps of the only image in 10 s: 10 s left
    (1, 0.5, 4, "38%", 16.67),    # 1.5 of 4 images in 10 s: 2.5 left
    (2, 0.0, 4, "50%", 10.0),
])
def test_a_step_moves_the_percentage_and_the_eta(done, partial, total, percent, eta):
    snapshot = JobSnapshot("image", "running", done, total, partial, started=time.monotonic() - 10)
    assert f"({percent})" in snapshot.describe()
    assert (snapshot.eta is None) if eta is None else snapshot.eta == pytest.approx(eta, rel=0.01)


def test_a_new_unit_starts_at_no_partial():
    job = Job("grid", lambda control: (control.progress(0, 3, partial=0.6), control.progress(1)) and None)
    job.run_here()
    assert job.snapshot().partial == 0.0 and job.snapshot().done == 1


# --- the busy model names its holder and how to stop it ----------------------------------------------------------


@pytest.mark.parametrize(("purpose", "stop", "message"), [
    ("an XY grid in the Block Weight tab", "press Cancel beside Run grid there to stop it, or wait for it",
     "the model is busy with an XY grid in the Block Weight tab; press Cancel beside Run grid there to stop it, "
     "or wait for it"),
    ("tagging", "", "the model is busy with tagging; wait for it or stop it"),
])
def test_the_gate_says_what_holds_the_model_and_how_to_stop_it(purpose, stop, message):
    gate = GpuGate()
    assert gate.busy_message() == ""
    with gate.hold(purpose, stop=stop):
        assert gate.busy_message() == message
        with pytest.raises(GpuBusyError) as refused, gate.hold("training"):
            pass
    assert str(refused.value) == message and gate.busy_message() == ""


# --- cancel inside an image ----------------------------------------------------------------------------------------


class SteppingRenderer:
    """Calls on_step before each step, as a LoraSession does; records the steps that ran; `after(step)` runs after
    each."""

    reports_steps = True

    def __init__(self, after) -> None:
        self.ran: list[int] = []
        self.after = after

    def generate(self, request: GenerationRequest, *, on_step) -> Generated:
        for step in range(request.steps):
            on_step(step)
            self.ran.append(step)
            self.after(step)
        return Generated(Image.new("RGB", (8, 8)), "", ())


def test_cancel_stops_the_image_at_the_next_step():
    messages: list[str] = []

    def after(step: int) -> None:
        messages.append(job.snapshot().message)
        if step == 2:
            job.cancel()

    renderer = SteppingRenderer(after)
    job = Job("image", lambda control: render_image(renderer, REQUEST, control, done=0, total=1, what="sampling"))
    with pytest.raises(JobCancelled):
        job.run_here()
    assert renderer.ran == [0, 1, 2] and job.snapshot().state == "cancelled"
    assert messages[2] == "sampling · step 2/10" and job.snapshot().partial == pytest.approx(0.2)


class FakeWebUIState:
    """The WebUI's `shared.state`: a step count the sampler sets, and interrupt()."""

    def __init__(self) -> None:
        self.sampling_step, self.interrupted, self.interrupts = 7, False, 0

    def interrupt(self) -> None:
        self.interrupted, self.interrupts = True, self.interrupts + 1


class FakeWebUIHost:
    """A WebUI host: it reads the tags itself, counts steps in the state and stops when interrupted (as A1111's
    sampler does), returning no image then."""

    handles_lora_tags = True
    model_name = "webui"

    def __init__(self, state: FakeWebUIState) -> None:
        self.state, self.ran = state, []

    def generate(self, request: GenerationRequest) -> Image.Image:
        for step in range(request.steps):
            if self.state.interrupted:
                raise HostError("the WebUI returned no image (generation interrupted or failed)")
            self.state.sampling_step = step
            self.ran.append(step)
            time.sleep(0.05)
        return Image.new("RGB", (request.width, request.height))


@pytest.fixture()
def webui(monkeypatch: pytest.MonkeyPatch) -> FakeWebUIState:
    state = FakeWebUIState()
    monkeypatch.setitem(sys.modules, "modules.shared", SimpleNamespace(state=state))
    return state


def test_a_webui_generation_is_followed_and_stopped_through_its_own_state(webui):
    host = FakeWebUIHost(webui)
    session = LoraSession(host, LoraLibrary([]), PresetBook.builtin(), model_name="webui")
    steps: list[int] = []

    def work(control):
        def on_step(step: int) -> None:
            steps.append(step)
            if step >= 3:
                job.cancel()
        return render_image(_Observed(session, on_step), REQUEST, control, done=0, total=1, what="sampling")

    job = Job("image", work)
    with pytest.raises(JobCancelled):  # not the host's "no image" error: the job was cancelled
        job.run_here()
    assert webui.interrupts == 1 and not webui.interrupted  # reset afterwards, as the WebUI does after a job
    assert 3 <= len(host.ran) < REQUEST.steps and steps[0] == 0  # the last job's count was not shown
    with following_steps(lambda step: None):  # the next generation is not interrupted
        assert session.generate(REQUEST).image.size == (64, 64)


@dataclass
class _Observed:
    """A renderer passing each step to `observe` before the job's own callback."""

    session: LoraSession
    observe: Any
    reports_steps: bool = True

    def generate(self, request: GenerationRequest, *, on_step) -> Generated:
        return self.session.generate(request, on_step=lambda step: (self.observe(step), on_step(step)))


def test_outside_a_webui_following_steps_does_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "modules.shared", raising=False)
    calls: list[int] = []
    with following_steps(calls.append):
        pass
    assert calls == []


# --- on the tiny diffusers model: a cancelled image, then the next one ------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    pytest.importorskip("diffusers")
    from blocks_testing import tiny_workspace

    from lib_lora.ui.blocks.runs import BlockRuns

    context, editor = tiny_workspace(tmp_path_factory.mktemp("workspace"))
    return context, BlockRuns(context, editor, poll_seconds=0.02)


ALL_17 = ",".join(["1"] * 17)


@pytest.mark.parametrize("tag_suffix", ["", ":start=2"])  # a plain set, and one switched by step
def test_generate_is_cancelled_within_the_image_and_the_next_one_works(workspace, tag_suffix):
    context, runs = workspace
    settings = ("a cat" + (" <lora:part:1:start=2>" if tag_suffix else ""), "", 0, 40, 1.0, 64, 64)
    started = time.monotonic()
    updates, cancelled = [], 0
    for update in runs.generate("part", 1.0, ALL_17, "ALL", "sd1", -1, *settings):
        updates.append(update)
        step = re.search(r"running · .* step (\d+)/40", update.get("image_progress", ""))
        if step and int(step.group(1)) >= 2 and not cancelled:
            assert "ETA" in update["image_progress"] and "█" in update["image_progress"]
            assert "Cancelling an image" in runs.image_slot.cancel()["status"]
            cancelled = int(step.group(1))
    assert updates[-1]["status"] == "An image was cancelled." and "image" not in updates[-1]
    assert cancelled and int(re.search(r"step (\d+)/40", updates[-1]["image_progress"])[1]) < 39  # within it
    assert time.monotonic() - started < 60 and context.gpu.holder is None
    done = list(runs.generate("part", 1.0, ALL_17, "ALL", "sd1", -1, "a cat", "", 0, 2, 1.0, 64, 64))[-1]
    assert done["image"].size == (64, 64) and "Generated with" in done["status"]


def test_generate_draws_r_u_x_from_the_random_seed_and_records_it(workspace):
    _, runs = workspace
    recipe = "1,R,U,X" + ",0" * 13
    made = [list(runs.generate("part", 1.0, recipe, None, "sd1", seed, "a cat", "", 0, 2, 1.0, 64, 64))[-1]
            for seed in (9, 9, 10)]
    first = made[0]["infotext"]
    drawn = re.search(r"<lora:part:1:([^>]+)>", first)[1].split(",")
    assert drawn[0] == "1" and drawn[3] == "1" and all(re.fullmatch(r"-?\d+(\.\d+)?", v) for v in drawn)
    assert first.endswith(f'Lora random weights: "{recipe}: seed 9, X 1"')
    assert made[1]["infotext"] == first and made[2]["infotext"] != first  # the seed makes the same numbers


def test_other_tabs_are_told_which_cancel_stops_the_holder(workspace):
    from lib_lora.ui.train.session import TrainSession, TrainUIError

    context, runs = workspace
    slot = runs.grid_slot
    with context.gpu.hold(slot.holder, stop=slot.stop_hint):
        with pytest.raises(TrainUIError) as refused:
            TrainSession(context).start(None, {})  # refused before the form is read
        blocked = list(runs.generate("part", 1.0, ALL_17, "ALL", "sd1", -1, "a cat", "", 0, 2, 1.0, 64, 64))[-1]
    for message in (str(refused.value), blocked["status"]):
        assert "busy with an XY grid in the Block Weight tab; press Cancel beside Run grid there" in message


# --- steps and size that fit the model --------------------------------------------------------------------------


@dataclass
class FakeHost:
    model_name: str
    arch: Any
    device: str
    parameters: int

    @property
    def unet(self) -> Any:
        return SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: self.parameters)])


@pytest.mark.parametrize(("arch", "device", "parameters", "expected"), [
    ("sd1", "cpu", 3_000_000, (4, 64)),         # the tiny model on the CPU: a quick look
    ("sdxl", "cuda:0", 5_000_000, (8, 128)),
    ("sd1", "cpu", 860_000_000, (10, 256)),     # a real model on the CPU: half size
    ("sd1", "cuda:0", 860_000_000, (20, 512)),
    ("sd2", "cuda:0", 865_000_000, (20, 768)),
    ("sdxl", "cuda:0", 2_600_000_000, (20, 1024)),
])
def test_settings_fit_the_model_and_device(arch, device, parameters, expected):
    from lib_lora.arch import get_arch
    from lib_lora.ui.blocks.settings import fitting_settings

    fitting = fitting_settings(FakeHost("m", get_arch(arch), device, parameters))
    assert (fitting.steps, fitting.width) == expected and fitting.height == fitting.width


def test_the_tab_fits_the_settings_once_per_model(workspace):
    _, runs = workspace
    first = runs.fit_settings("")
    assert (first["steps"], first["width"], first["height"]) == (4, 64, 64)
    assert "small test model on the CPU" in first["settings_note"]
    assert runs.fit_settings(first["settings_for"]) == {}  # the user's own values stay on the next visit
