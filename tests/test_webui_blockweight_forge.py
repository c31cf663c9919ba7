"""Block weights on the LoRA patches of Forge Neo and Forge 2: the controller's hooks driven in the WebUI's order
against stand-ins of their loaders and caches (webui_standin.forge_lora_loader). The real Neo is checked by
tests/realhost; no real Forge 2 build is at hand."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from webui_standin.forge_lora_loader import (
    Forge2PatcherStandIn,
    ForgeModelStandIn,
    ForgeNetworksStandIn,
    NeoPatcherStandIn,
)

from lib_lora.arch import get_arch
from lib_lora.blocks.presets import PresetBook
from lib_lora.blocks.syntax import EXTRA_NETWORK_RE
from lib_lora.jobs import GpuGate
from lib_lora.unet_blocks import BASE
from lib_lora.webui.blockweight.prompts import REFUSED_FIELD
from lib_lora.webui.blockweight.script import BlockWeightController

pytestmark = pytest.mark.hostcompat

UNET_KEYS = {  # one key per kind of place: IN04, M00, OUT03, OUT11 and an unblocked part
    "diffusion_model.input_blocks.4.1.proj_in.weight": "IN04",
    "diffusion_model.middle_block.1.proj_in.weight": "M00",
    "diffusion_model.output_blocks.3.1.proj_in.weight": "OUT03",
    "diffusion_model.output_blocks.11.1.proj_in.weight": "OUT11",
    "diffusion_model.out.2.weight": None,
}
CLIP_KEY = "transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
STEPS = 4


class Generation:
    """One txt2img through the script's hooks in Neo's order (processing.py, extra_networks.py)."""

    def __init__(self, world: SimpleNamespace, prompt: str) -> None:
        self.controller, self.model, self.networks = world.controller, world.model, world.networks
        self.extra_networks = world.extra_networks
        self.p = SimpleNamespace(sd_model=world.model, extra_generation_params={}, comments={}, steps=STEPS,
                                 enable_hr=False, batch_size=1, prompts=[prompt], all_prompts=[prompt])
        self.p.comment = lambda text: self.p.comments.setdefault(text, 1)
        self.typed = prompt

    def run(self, *, until_step: int | None = None, loaded_late: bool = False) -> None:
        if loaded_late:  # Neo loads the checkpoint inside processing, after before_process
            self.p.sd_model = SimpleNamespace()
        self.controller.before_process(self.p)
        self.p.sd_model = self.model
        self.controller.before_process_batch(self.p, 0, self.p.prompts)
        self.extra_networks.activate(self.p, {"lora": lora_params(self.p.prompts[0])})
        for step in range(STEPS if until_step is None else until_step):
            self.controller.on_cfg_denoiser(SimpleNamespace(sampling_step=step, total_sampling_steps=STEPS))
        if until_step is None:
            self.controller.postprocess(self.p)

    def field(self, name: str) -> str | None:
        value = self.p.extra_generation_params.get(name)
        return value(prompt_text=self.typed, p=self.p, index=0, all_prompts=[self.typed]) if callable(value) else value


class ExtraNetworksStandIn:
    """`modules.extra_networks`: `activate(p, data)` loads the data's LoRAs, then runs the scripts' hook."""

    def __init__(self, networks: ForgeNetworksStandIn) -> None:
        self.networks = networks
        self.controller: BlockWeightController | None = None

    def activate(self, p: Any, extra_network_data: dict[str, list[Any]]) -> None:
        load(self.networks, extra_network_data.get("lora", []))
        assert self.controller is not None
        self.controller.after_extra_networks_activate(p, extra_network_data)


def lora_params(prompt: str) -> list[Any]:
    """The `ExtraNetworkParams` of a prompt's tags, as `extra_networks.parse_prompts` makes them."""
    return [SimpleNamespace(items=match.group(2).split(":")) for match in EXTRA_NETWORK_RE.finditer(prompt)]


def activate(networks: ForgeNetworksStandIn, prompt: str) -> list[Any]:
    """Neo's `ExtraNetworkLora.activate` on a prompt's tags."""
    params = lora_params(prompt)
    load(networks, params)
    return params


def load(networks: ForgeNetworksStandIn, params: list[Any]) -> None:
    """Neo's `ExtraNetworkLora.activate`: te/unet parsed as floats from positional and named items."""
    names, te, unet = [], [], []
    for param in params:
        items = param.items
        positional = [item for item in items if "=" not in item]
        named = dict(item.split("=", 1) for item in items if "=" in item)
        te_value = float(named.get("te", positional[1] if len(positional) > 1 else 1.0))
        unet_value = float(named.get("unet", positional[2] if len(positional) > 2 else te_value))
        names.append(positional[0])
        te.append(te_value)
        unet.append(unet_value)
    networks.load_networks(names, te, unet)  # the module attribute, as Neo calls it


FLAVOURS = {"neo": ("neo", NeoPatcherStandIn), "forge2": ("2.0.1v1.10.1", Forge2PatcherStandIn)}


@pytest.fixture(params=list(FLAVOURS))
def world(request, monkeypatch):
    yield from make_world(request.param, monkeypatch)


@pytest.fixture
def neo(monkeypatch):
    yield from make_world("neo", monkeypatch)


@pytest.fixture
def forge2(monkeypatch):
    yield from make_world("forge2", monkeypatch)


def make_world(flavour: str, monkeypatch: Any) -> Any:
    version, patcher = FLAVOURS[flavour]
    monkeypatch.setitem(sys.modules, "modules_forge.forge_version", ModuleType("forge_version"))
    sys.modules["modules_forge.forge_version"].version = version
    model = ForgeModelStandIn(set(UNET_KEYS), {CLIP_KEY}, patcher=patcher)
    files = {name: {key: f"{name}:{key}" for key in [*UNET_KEYS, CLIP_KEY]} for name in ("chara", "styleb")}
    networks = ForgeNetworksStandIn(model, files)
    extra_networks = ExtraNetworksStandIn(networks)
    controller = extra_networks.controller = BlockWeightController(
        gate=lambda: GpuGate(), networks=lambda: networks, presets_file=lambda: None, interrupt=lambda: None,
        extra_networks=lambda: extra_networks)
    world = SimpleNamespace(flavour=flavour, model=model, networks=networks, controller=controller,
                            extra_networks=extra_networks)
    world.run = lambda prompt, **kw: _run(world, prompt, **kw)
    yield world
    controller.unload()
    assert "activate" not in vars(extra_networks)  # the hook is gone


def _run(world: SimpleNamespace, prompt: str, **kwargs: Any) -> Generation:
    generation = Generation(world, prompt)
    generation.run(**kwargs)
    return generation


def entries_of(patcher: Any) -> list[tuple[str, Any]]:
    """(key, entry) for every patch entry: Neo's `patches[key]`, Forge 2's `lora_patches[identifier][key]`."""
    if isinstance(patcher, NeoPatcherStandIn):
        return [(key, entry) for key, entries in patcher.patches.items() for entry in entries]
    return [(key, entry) for per_key in patcher.lora_patches.values() for key, entries in per_key.items()
            for entry in entries]


def strengths(model: ForgeModelStandIn, name: str) -> dict[str, float]:
    """{key: strength of `name`'s entry} over the UNet and CLIP patchers the next sampling would load."""
    objects = model.forge_objects_after_applying_lora
    return {key: entry[0] for patcher in (objects.unet, objects.clip.patcher)
            for key, entry in entries_of(patcher) if entry[1] == f"{name}:{key}"}


def expected(name_te_unet_table: tuple[float, float, dict[str, float] | None]) -> dict[str, float]:
    te, unet, table = name_te_unet_table
    weights = {key: unet * (1.0 if table is None or block is None else table[block]) for key, block in
               UNET_KEYS.items()}
    return {**weights, CLIP_KEY: te * (1.0 if table is None else table[BASE])}


def table(spec: str) -> dict[str, float]:
    return PresetBook.builtin().resolve(spec, get_arch("sd1"))


GRADED = "0.5,1,0.25,0.75,0,1,1,1,0.3,0.3,0.3,0.6,0.6,0.6,0.6,0.6,0.9"


@pytest.mark.parametrize(("prompt", "want"), [
    ("<lora:chara:1>", (1.0, 1.0, None)),
    ("<lora:chara:0.8:NCNF>", (0.8, 0.8, "NCNF")),
    ("<lora:chara:1:OUTD>", (1.0, 1.0, "OUTD")),
    ("<lora:chara:1:lbw=NCNF>", (1.0, 1.0, "NCNF")),
    (f"<lora:chara:0.7:0.4:{GRADED}>", (0.7, 0.4, GRADED)),
    ("<lora:chara:te=0.5:unet=0.9:lbw=CHAR>", (0.5, 0.9, "CHAR")),
    ("<lora:chara:1:NONE>", (1.0, 1.0, "NONE")),
])
def test_each_patch_gets_its_block_weight(world, prompt: str, want: tuple) -> None:
    generation = world.run(prompt)
    te, unet, spec = want
    assert strengths(world.model, "chara") == pytest.approx(expected((te, unet, table(spec) if spec else None)))
    assert all(type(s) is float for s in strengths(world.model, "chara").values())  # no tag left in the entries
    assert vars(world.networks).get("load_networks") is None  # the wrapper is gone after the generation
    assert generation.field(REFUSED_FIELD) is None


def test_an_unchanged_set_is_not_reloaded_and_a_changed_one_once(world) -> None:
    world.run("<lora:chara:1:NCNF><lora:styleb:0.5>")
    loaded = world.model.forge_objects_after_applying_lora
    world.run("<lora:chara:1:NCNF><lora:styleb:0.5>")
    assert world.networks.reads == ["chara", "styleb"]
    assert world.model.forge_objects_after_applying_lora is loaded
    world.run("<lora:chara:1:OUTD><lora:styleb:0.5>")
    assert world.networks.reads == ["chara", "styleb"] * 2
    assert strengths(world.model, "chara") == pytest.approx(expected((1.0, 1.0, table("OUTD"))))
    assert strengths(world.model, "styleb") == pytest.approx(expected((0.5, 0.5, None)))


def test_a_plain_set_after_a_weighted_one_is_reloaded_without_weights(world) -> None:
    world.run("<lora:chara:1:NCNF>")
    world.run("<lora:chara:1>")
    assert world.networks.reads == ["chara", "chara"]
    assert strengths(world.model, "chara") == pytest.approx(expected((1.0, 1.0, None)))
    assert entries_of(world.model.forge_objects_original.unet) == []  # the originals never carry our entries


def test_step_windows_switch_the_unet_entries_online(neo) -> None:
    world = neo
    generation = world.run("<lora:chara:1:lbw=ALL:stop=3>", until_step=2)  # steps 0, 1: the window is open
    unet = world.model.forge_objects_after_applying_lora.unet
    entries = [unet.patches[key][0] for key in UNET_KEYS]
    assert all(entry[5] is True and entry[0] == 1.0 for entry in entries)  # merged per forward by Neo
    world.controller.on_cfg_denoiser(SimpleNamespace(sampling_step=2, total_sampling_steps=STEPS))
    assert all(unet.patches[key][0][0] == 0.0 for key in UNET_KEYS)  # stop=3: off from the 3rd step
    assert world.model.forge_objects_after_applying_lora.clip.patcher.patches[CLIP_KEY][0][0] == 1.0
    world.controller.postprocess(generation.p)
    world.run("<lora:chara:1:lbw=ALL:stop=3>", until_step=0)  # cached: the window starts open again
    assert world.networks.reads == ["chara"]
    assert all(unet.patches[key][0][0] == 1.0 for key in UNET_KEYS)


@pytest.mark.parametrize("window", ["start=0", "start=1", "start=0.0"])
def test_a_window_open_in_every_step_stays_merged_as_the_plain_lora(neo, window: str) -> None:
    """Online entries are merged at each forward; on a bf16 / fp8 UNet that rounds differently from Neo's one-time
    merge, so a window that never closes must not go online (`start=0` gives the plain LoRA's image)."""
    neo.run(f"<lora:chara:1:lbw=ALL:{window}>", until_step=1)
    unet = neo.model.forge_objects_after_applying_lora.unet
    assert all(unet.patches[key][0][5] is False and unet.patches[key][0][0] == 1.0 for key in UNET_KEYS)


def test_refused_block_weights_load_plain_and_are_recorded(world) -> None:
    generation = world.run("<lora:chara:0.6:NOSUCH><lora:styleb:1:CHAR>")
    assert strengths(world.model, "chara") == pytest.approx(expected((0.6, 0.6, None)))
    assert strengths(world.model, "styleb") == pytest.approx(expected((1.0, 1.0, table("CHAR"))))
    assert generation.field("Lora block weights") == "styleb: te=1, unet=1, blocks=CHAR"
    assert "NOSUCH" in generation.field(REFUSED_FIELD)


def test_forge_2_refuses_step_windows_in_the_record(forge2) -> None:
    world = forge2
    generation = world.run("<lora:chara:0.8:lbw=NCNF:stop=2><lora:styleb:1:OUTD>")
    assert strengths(world.model, "chara") == pytest.approx(expected((0.8, 0.8, None)))
    assert strengths(world.model, "styleb") == pytest.approx(expected((1.0, 1.0, table("OUTD"))))
    assert generation.field("Lora block weights") == "styleb: te=1, unet=1, blocks=OUTD"
    assert "start=/stop=" in generation.field(REFUSED_FIELD)


def test_forge_2_merges_again_exactly_when_the_block_weights_change(forge2) -> None:
    world = forge2
    merged = []
    for prompt in ("<lora:chara:1:NCNF>", "<lora:chara:1:NCNF>", "<lora:chara:1:OUTD>", "<lora:chara:1>"):
        world.run(prompt)
        merged.append(world.model.forge_objects_after_applying_lora.unet.refresh_hash())
    assert merged[0] == merged[1] and len({merged[1], merged[2], merged[3]}) == 3


def test_a_webui_without_a_loader_we_know_refuses_in_the_record(world) -> None:
    world.controller._networks = lambda: None
    generation = world.run("<lora:chara:0.8:NCNF>")
    assert generation.field("Lora block weights") is None
    assert "not applied" in generation.field(REFUSED_FIELD)


def test_a_checkpoint_loaded_inside_processing_still_gets_block_weights(world) -> None:
    generation = world.run("<lora:chara:0.8:NCNF>", loaded_late=True)
    assert strengths(world.model, "chara") == pytest.approx(expected((0.8, 0.8, table("NCNF"))))
    assert generation.field("Lora block weights") == "chara: te=0.8, unet=0.8, blocks=NCNF"


def test_block_weights_only_in_the_hires_prompt_are_applied_and_recorded(world) -> None:
    """The hooks of one batch with hires fix, in the WebUI's order: the hires pass loads the hires prompt's tags."""
    generation = Generation(world, "<lora:chara:1>")
    p, controller, extra_networks = generation.p, world.controller, world.extra_networks
    p.enable_hr, p.all_hr_prompts, p.hr_second_pass_steps = True, ["<lora:chara:1:NCNF>"], STEPS
    controller.before_process(p)
    controller.before_process_batch(p, 0, p.prompts)
    first, hires = ({"lora": lora_params(prompt)} for prompt in (p.prompts[0], p.all_hr_prompts[0]))
    extra_networks.activate(p, first)
    controller.process_batch(p)  # the hires prompt back as typed
    if world.flavour == "neo":  # Neo's setup_conds: the hires LoRAs for the hires conditioning, then the first's
        extra_networks.activate(p, hires)
        extra_networks.activate(p, first)
    assert strengths(world.model, "chara") == pytest.approx(expected((1.0, 1.0, None)))
    p.is_hr_pass = True
    extra_networks.activate(p, hires)
    assert strengths(world.model, "chara") == pytest.approx(expected((1.0, 1.0, table("NCNF"))))
    assert p.all_hr_prompts == ["<lora:chara:1:NCNF>"]
    assert generation.field("Lora block weights") == "chara: te=1, unet=1, blocks=NCNF, pass=hires"
    controller.postprocess(p)


def test_a_failure_while_planning_an_activation_loads_the_loras_plain_and_says_so(world, monkeypatch) -> None:
    """The plan runs inside the WebUI's own `extra_networks.activate`: a bug there must not stop the generation."""
    monkeypatch.setattr(world.controller, "_plan_forge_loads", lambda *_: 1 / 0)
    generation = world.run("<lora:chara:1:NCNF>")
    assert strengths(world.model, "chara") == pytest.approx(expected((1.0, 1.0, None)))
    assert any("ZeroDivisionError" in comment for comment in generation.p.comments)
