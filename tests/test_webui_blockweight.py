"""The A1111 always-on block-weight script against stand-ins of the built-in Lora and of `processing`.

scripts/lora_studio.py is exec'd as the WebUI does; generations go through webui_standin.processing (A1111 1.10's
hook order) and webui_standin.builtin_lora (its merge and cache) on real ldm module trees (SD1, SDXL). Expected
weights are computed here from the LoRA files: weight + up @ down × alpha/rank × (te × BASE | unet × block).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")

from webui_standin.builtin_lora import BuiltinLora, ExtraNetworkLora, ExtraNetworks, parse_prompts  # noqa: E402
from webui_standin.fake_extension_api import install_extension_api  # noqa: E402
from webui_standin.fake_modules import install_fake_modules, make_opts  # noqa: E402
from webui_standin.models import build_sd_model_standin  # noqa: E402
from webui_standin.processing import (  # noqa: E402
    ProcessedStandIn,
    ScriptRunnerStandIn,
    Txt2ImgStandIn,
    parse_generation_parameters,
    process_images,
)

from lib_lora.arch import get_arch  # noqa: E402
from lib_lora.blocks.apply import BLOCK_WEIGHTS_FIELD, block_weights_value  # noqa: E402
from lib_lora.blocks.presets import PresetBook  # noqa: E402
from lib_lora.blocks.step_window import active_steps  # noqa: E402
from lib_lora.blocks.syntax import LoraCall, format_call, parse_prompt  # noqa: E402
from lib_lora.hosts.a1111 import A1111Host  # noqa: E402
from lib_lora.hosts.gate import (
    ALLOW_WHILE_HELD_ATTR,  # noqa: E402
    WEBUI_GPU,  # noqa: E402
)
from lib_lora.networks.keys import Target, TargetIndex, build_target_index  # noqa: E402
from lib_lora.networks.random_files import random_lora_state_dict  # noqa: E402
from lib_lora.unet_blocks import BASE, UNBLOCKED_PARTS, is_weighted_block  # noqa: E402
from lib_lora.webui.blockweight.networks import ModuleMultiplier, TaggedMultiplier  # noqa: E402
from lib_lora.webui.blockweight.prompts import parse_block_weights_value, rewrite_prompt, rewrite_prompts
from lib_lora.webui.blockweight.script import CONTROLLER, SCRIPT_TITLE  # noqa: E402

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]
GRADED = "{vector}"  # replaced by a literal vector with a different weight per block (every block tells)


# --- the world: one stand-in model and its LoRA files per arch, reset before each test -----------------------


@dataclass
class World:
    arch: str
    sd_model: Any
    index: TargetIndex
    loras: dict[str, Path]
    original: dict[str, torch.Tensor]
    weight_names: dict[int, str]


_WORLDS: dict[str, World] = {}


def _unblocked_tensors(index: TargetIndex, seed: int) -> dict[str, torch.Tensor]:
    """LoRA factors on the UNet parts no block covers (time_embed, label_emb, out), which weight 1 always."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for target in index.targets():
        if target.block in UNBLOCKED_PARTS and len(target.shape) in (2, 4):
            out_dim, in_dim, *kernel = target.shape
            tensors[f"{target.key}.lora_down.weight"] = torch.randn((2, in_dim, *kernel), generator=generator) * 0.1
            tensors[f"{target.key}.lora_up.weight"] = torch.randn((out_dim, 2, *([1] * len(kernel))),
                                                                  generator=generator) * 0.1
            tensors[f"{target.key}.alpha"] = torch.tensor(1.0)
    return tensors


def world_for(arch: str, folder: Path) -> World:
    if arch not in _WORLDS:
        sd_model = build_sd_model_standin(arch, make_opts())
        index = build_target_index(A1111Host(sd_model))
        folder.mkdir(parents=True, exist_ok=True)
        files = {
            "chara": random_lora_state_dict(index, seed=1, strength=1.0),
            "styleb": {**random_lora_state_dict(index, kind="locon", seed=2, strength=1.0, alpha=2.0),
                       **_unblocked_tensors(index, seed=3)},
        }
        loras = {}
        for name, tensors in files.items():
            loras[name] = folder / f"{name}.safetensors"
            save_file({key: value.contiguous() for key, value in tensors.items()}, loras[name])
        original = {name: param.detach().clone() for name, param in sd_model.named_parameters()}
        weight_names = {id(module): f"{name}.weight" for name, module in sd_model.named_modules()
                        if f"{name}.weight" in original}
        _WORLDS[arch] = World(arch, sd_model, index, loras, original, weight_names)
    world = _WORLDS[arch]
    with torch.no_grad():
        for name, param in world.sd_model.named_parameters():
            param.copy_(world.original[name])
    for module in world.sd_model.modules():
        for attr in ("network_current_names", "network_weights_backup", "network_bias_backup"):
            vars(module).pop(attr, None)
    return world


@dataclass
class Env:
    world: World
    webui: SimpleNamespace
    script: Any
    script_module: ModuleType
    builtin: BuiltinLora
    extra: ExtraNetworks
    steps_seen: list[tuple[str, int, dict[str, torch.Tensor]]] = field(default_factory=list)

    def generate(self, prompt: str | list[str], *, record: tuple[Target, ...] = (), **fields: Any) -> ProcessedStandIn:
        p = self.processing(prompt, **fields)
        return self.run(p, record=record)

    def processing(self, prompt: str | list[str], **fields: Any) -> Txt2ImgStandIn:
        return Txt2ImgStandIn(sd_model=self.world.sd_model, prompt=prompt,
                              scripts=ScriptRunnerStandIn([self.script]), **fields)

    def run(self, p: Txt2ImgStandIn, *, record: tuple[Target, ...] = ()) -> ProcessedStandIn:
        self.webui.shared.state.begin()

        def on_step(pass_name: str, step: int) -> None:
            self.steps_seen.append((pass_name, step, {t.key: t.weight.detach().clone() for t in record}))

        processed = process_images(p, self.builtin, self.extra, self.webui, on_step=on_step)
        assert p.scripts.errors == [], p.scripts.errors  # our hooks never raise into A1111
        return processed

    def weight(self, target: Target) -> torch.Tensor:
        return target.weight.detach()

    def original(self, target: Target) -> torch.Tensor:
        return self.world.original[self.world.weight_names[id(target.module)]]


def exec_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



@pytest.fixture(params=["sd1", "sdxl"])
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def env(arch: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tmp_path_factory) -> Iterator[Env]:
    world = world_for(arch, tmp_path_factory.getbasetemp() / f"loras_{arch}")
    fake = install_fake_modules(monkeypatch, None, make_opts())
    webui = install_extension_api(monkeypatch, fake, models_path=tmp_path / "models")
    module = exec_script(ROOT / "scripts" / "lora_studio.py")
    builtin = BuiltinLora(world.sd_model, world.loras)
    monkeypatch.setitem(sys.modules, "networks", builtin)
    yield Env(world, webui, module.LoraStudioBlockWeights(), module, builtin, ExtraNetworks(builtin))
    CONTROLLER.unload()


# --- expected weights, from the files ----------------------------------------------------------------------


def lora_modules(env: Env, name: str) -> dict[Target, dict[str, torch.Tensor]]:
    by_target: dict[Target, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(env.world.loras[name]).items():
        module_key, _, part = key.partition(".")
        by_target.setdefault(env.world.index.lookup(module_key), {})[part] = tensor
    return by_target


def expected_weights(env: Env, applied: list[tuple[str, float, float, dict[str, float] | None]],
                     *, unet_on: bool = True) -> dict[Target, torch.Tensor]:
    """{target: weight} after the built-in merged `applied` = [(lora, te, unet, block table or None)] in order."""
    expected: dict[Target, torch.Tensor] = {}
    for name, te, unet, table in applied:
        for target, tensors in lora_modules(env, name).items():
            up, down = tensors["lora_up.weight"], tensors["lora_down.weight"]
            scale = tensors["alpha"].item() / down.shape[0]
            if target.root != "unet":
                multiplier = te * (table[BASE] if table else 1.0)
            elif not unet_on:
                multiplier = 0.0
            else:
                weighted = table is not None and is_weighted_block(target.block)
                multiplier = unet * (table.get(target.block, 1.0) if weighted else 1.0)
            base = expected.get(target, env.original(target))
            updown = (up.flatten(1) @ down.flatten(1)).reshape(target.shape) * scale * multiplier
            expected[target] = base + updown
    return expected


def graded_vector(arch: str) -> tuple[str, dict[str, float]]:
    """A literal full-format vector whose every block has its own weight, and its table."""
    blocks = (BASE, *get_arch(arch).unet_block_ids)
    values = [round(0.05 * (i + 1), 2) for i in range(len(blocks))]
    return ",".join(map(str, values)), dict(zip(blocks, values))


def assert_weights(env: Env, expected: dict[Target, torch.Tensor]) -> None:
    for target, weight in expected.items():
        torch.testing.assert_close(env.weight(target), weight, rtol=1e-5, atol=1e-6, msg=target.key)


def all_original(env: Env) -> bool:
    params = dict(env.world.sd_model.named_parameters())
    return all(torch.equal(params[name], value) for name, value in env.world.original.items())


# --- registration ------------------------------------------------------------------------------------------------


def test_script_registers_as_always_visible_with_its_callbacks(env: Env) -> None:
    script_classes = [value for value in vars(env.script_module).values()
                      if isinstance(value, type) and issubclass(value, env.webui.scripts.Script)]
    assert script_classes == [type(env.script)]
    assert env.script.title() == SCRIPT_TITLE
    assert env.script.show(False) is env.webui.scripts.AlwaysVisible
    assert env.script.show(True) is env.webui.scripts.AlwaysVisible
    assert env.script.ui(False) is None
    for category in ("cfg_denoiser", "infotext_pasted", "script_unloaded"):
        assert len(env.webui.callbacks[category]) == 1, category
    assert env.webui.sd_model_reads == []


# --- prompt rewriting -------------------------------------------------------------------------------------------

REWRITES = [
    ("a <lora:x:0.8>", "a <lora:x:0.8>", False),
    ("a <lora:x:0.8:lbw=NCNF>", "a <lora:x:0.8:lbw=NCNF>", False),
    ("a <lora:x:0.8:NCNF> b", "a <lora:x:0.8:0.8:lbw=NCNF> b", False),
    ("<lora:x:1:0.5:CHAR><lora:y:0.3>", "<lora:x:1:0.5:lbw=CHAR><lora:y:0.3>", False),
    ("<lora:x:1:lbw=ALL:lbwe=ATTN>", "<lora:x:1:lbw=ALL:lbwe=ATTN>", True),
    ("<lora:x:1:step=3-5> <lora:y:1:NCNF>", "<lora:x:1:step=3-5> <lora:y:1:1:lbw=NCNF>", True),
    ("<hypernet:h:1> no lora", "<hypernet:h:1> no lora", False),
]


def test_rewrite_prompts_in_place_leaving_unparsable_tags_as_typed() -> None:
    prompts = [typed for typed, _, _ in REWRITES]
    problems = rewrite_prompts(prompts)
    assert prompts == [rewritten for _, rewritten, _ in REWRITES]
    assert [problem.tag for problem in problems] == ["<lora:x:1:lbw=ALL:lbwe=ATTN>", "<lora:x:1:step=3-5>"]
    assert all(problem.tag in problem.reason for problem in problems)


def test_first_pass_and_hires_get_the_same_block_weights(env: Env) -> None:
    probe = tuple(t for t in lora_modules(env, "chara") if t.root == "unet")[:3]
    processed = env.generate("a <lora:chara:0.8:NCNF>", record=probe, enable_hr=True, steps=2,
                             hr_second_pass_steps=2)
    table = PresetBook.builtin().resolve("NCNF", env.world.arch)
    expected = expected_weights(env, [("chara", 0.8, 0.8, table)])
    assert_weights(env, expected)
    seen = {(pass_name, step): weights for pass_name, step, weights in env.steps_seen}
    assert set(seen) == {("first", 0), ("first", 1), ("hires", 0), ("hires", 1)}
    for weights in seen.values():
        for target in probe:
            torch.testing.assert_close(weights[target.key], expected[target], rtol=1e-5, atol=1e-6)
    assert env.extra.errors == []
    assert "Hires prompt" not in processed.infotexts[0]  # the hires prompt went back as typed, equal to the prompt


def test_hires_prompt_with_its_own_weights_and_infotext_as_typed(env: Env) -> None:
    probe = next(t for t in lora_modules(env, "chara") if t.root == "unet" and t.block == "M00")
    processed = env.generate("a <lora:chara:1:NONE>", record=(probe,), enable_hr=True,
                             hr_prompt="a <lora:chara:1:ALL>", steps=1)
    first, hires = (weights[probe.key] for _, _, weights in env.steps_seen)
    assert torch.equal(first, env.original(probe))  # NONE: M00 at 0
    all_table = PresetBook.builtin().resolve("ALL", env.world.arch)
    torch.testing.assert_close(hires, expected_weights(env, [("chara", 1.0, 1.0, all_table)])[probe])
    params = parse_generation_parameters(processed.infotexts[0])
    assert params["Prompt"] == "a <lora:chara:1:NONE>"
    assert params["Hires prompt"] == "a <lora:chara:1:ALL>"


HIRES_RECORDS = [
    # block weights only in the hires prompt: applied in the hires pass, recorded as such
    ("a <lora:chara:1>", "a <lora:chara:1:ALL>", "chara: te=1, unet=1, blocks=ALL, pass=hires", None),
    # each pass its own
    ("a <lora:chara:1:NONE>", "a <lora:chara:1:ALL>",
     "chara: te=1, unet=1, blocks=NONE, pass=first; chara: te=1, unet=1, blocks=ALL, pass=hires", None),
    # the same in both passes (order aside): recorded once, without a pass
    ("a <lora:chara:1:NCNF> <lora:styleb:1>", "b <lora:styleb:1> <lora:chara:1:NCNF>",
     "chara: te=1, unet=1, blocks=NCNF", None),
    # one LoRA's block weights in the first pass only
    ("a <lora:chara:1:NCNF> <lora:styleb:0.5:CHAR>", "a <lora:chara:1:NCNF>",
     "chara: te=1, unet=1, blocks=NCNF; styleb: te=0.5, unet=0.5, blocks=CHAR, pass=first", None),
    # refused in the hires prompt only: not claimed, and named in the refused field
    ("a <lora:chara:1:NCNF>", "a <lora:chara:1:NCNF> <lora:styleb:1:NOSUCH>",
     "chara: te=1, unet=1, blocks=NCNF", "<lora:styleb:1:NOSUCH>"),
]


@pytest.mark.parametrize(("prompt", "hr_prompt", "applied", "refused"), HIRES_RECORDS)
def test_the_record_says_what_each_pass_applied(env: Env, prompt: str, hr_prompt: str, applied: str,
                                                refused: str | None) -> None:
    from lib_lora.webui.blockweight.prompts import REFUSED_FIELD, parse_block_weights_record

    fields = infotext_fields(env, env.generate(prompt, enable_hr=True, hr_prompt=hr_prompt, steps=1))
    assert fields.get(BLOCK_WEIGHTS_FIELD) == applied  # kept by the paste hook: it reads back
    assert fields.get(REFUSED_FIELD, "").startswith(refused or ""), fields
    assert (REFUSED_FIELD in fields) == (refused is not None)
    passes = {"first": parse_prompt(prompt)[1], "hires": parse_prompt(hr_prompt)[1]}
    for call, only in parse_block_weights_record(applied):
        assert all(call in passes[name] for name in ([only] if only else passes)), (call, only)


def test_each_image_of_a_batch_records_its_own_hires_pass(env: Env) -> None:
    """The WebUI gives the record the batch's prompts and the image's place in the batch: the hires prompt of the
    second batch's image, not the first's."""
    processed = env.generate(["a <lora:chara:1>", "b <lora:chara:1>"], n_iter=2, enable_hr=True, steps=1,
                             hr_prompt=["a <lora:chara:1:ALL>", "b <lora:chara:1:NCNF>"])
    records = [parse_generation_parameters(info).get(BLOCK_WEIGHTS_FIELD) for info in processed.infotexts]
    assert records == ["chara: te=1, unet=1, blocks=ALL, pass=hires", "chara: te=1, unet=1, blocks=NCNF, pass=hires"]


def test_api_style_batch_of_different_prompts(env: Env) -> None:
    prompts = ["one <lora:chara:0.5:CHAR>", "two <lora:chara:0.5:CHAR>", "three <lora:chara:0.5:CHAR> x"]
    p = env.processing(prompts, batch_size=3, is_api=True)
    processed = env.run(p)
    assert p.all_prompts == prompts  # the infotext's source keeps the prompts as typed
    assert [info.split("\n")[0] for info in processed.infotexts] == prompts
    assert env.extra.errors == []
    table = PresetBook.builtin().resolve("CHAR", env.world.arch)
    assert_weights(env, expected_weights(env, [("chara", 0.5, 0.5, table)]))


def test_unparsable_tag_is_left_alone_and_reported_once(env: Env) -> None:
    prompt = "x <lora:chara:0.7:lbw=ALL:lbwe=ATTNDEEPON> <lora:styleb:0.5:CHAR>"
    processed = env.generate(prompt, n_iter=2)
    assert env.extra.errors == []  # the built-in read the first tag as typed (te=unet=0.7), the second rewritten
    char = PresetBook.builtin().resolve("CHAR", env.world.arch)
    assert_weights(env, expected_weights(env, [("chara", 0.7, 0.7, None), ("styleb", 0.5, 0.5, char)]))
    reports = [line for line in processed.comments.splitlines() if "lbwe" in line]
    assert len(reports) == 1 and reports[0].startswith("LoRA Studio:") and "left as typed" in reports[0]
    assert all(info.startswith(prompt) for info in processed.infotexts)


def test_unknown_preset_is_reported_and_the_lora_applied_without_block_weights(env: Env) -> None:
    processed = env.generate("x <lora:chara:0.6:NOSUCHPRESET>")
    assert env.extra.errors == []
    assert_weights(env, expected_weights(env, [("chara", 0.6, 0.6, None)]))
    assert "NOSUCHPRESET" in processed.comments and "without block weights" in processed.comments


def infotext_fields(env: Env, processed: ProcessedStandIn) -> dict[str, Any]:
    pasted = [callback for _, callback in env.webui.callbacks["infotext_pasted"]]
    return parse_generation_parameters(processed.infotexts[0], tuple(pasted))


@pytest.mark.parametrize(("prompt", "applied", "refused"), [
    # an unknown preset: the field must not claim it, the refused field names it
    ("x <lora:chara:0.6:NOSUCHPRESET>", None, ["<lora:chara:0.6:NOSUCHPRESET>: ", "NOSUCHPRESET"]),
    # one applied, one refused: each field holds only its own
    ("x <lora:chara:0.6:NOSUCHPRESET> <lora:styleb:1:CHAR>", "styleb: te=1, unet=1, blocks=CHAR",
     ["<lora:chara:0.6:NOSUCHPRESET>"]),
    # a vector of the wrong length
    ("x <lora:chara:1:1,0,1>", None, ["<lora:chara:1:1,0,1>", "values"]),
    # a tag we cannot parse: left as typed for the built-in, refused in the record
    ("x <lora:chara:0.7:lbw=ALL:lbwe=ATTNDEEPON>", None, ["lbwe", "left as typed"]),
    # ... and the prompt's other tags are still recorded as applied
    ("x <lora:chara:0.7:lbw=ALL:lbwe=ATTNDEEPON> <lora:styleb:1:CHAR>", "styleb: te=1, unet=1, blocks=CHAR",
     ["lbwe", "left as typed"]),
    # nothing refused: no refused field
    ("x <lora:chara:0.6:NCNF>", "chara: te=0.6, unet=0.6, blocks=NCNF", None),
])
def test_the_infotext_records_what_was_applied_and_what_was_refused(env: Env, prompt: str, applied: str | None,
                                                                     refused: list[str] | None) -> None:
    from lib_lora.webui.blockweight.prompts import REFUSED_FIELD

    fields = infotext_fields(env, env.generate(prompt))
    assert fields.get(BLOCK_WEIGHTS_FIELD) == applied
    if refused is None:
        assert REFUSED_FIELD not in fields
    else:
        assert all(part in fields[REFUSED_FIELD] for part in refused), fields[REFUSED_FIELD]


def test_without_the_built_in_lora_every_block_weight_is_refused_in_the_record(env: Env, monkeypatch) -> None:
    from lib_lora.webui.blockweight.prompts import REFUSED_FIELD

    monkeypatch.setattr(CONTROLLER, "_networks", lambda: None)
    fields = infotext_fields(env, env.generate("x <lora:chara:0.6:NCNF>"))
    assert BLOCK_WEIGHTS_FIELD not in fields
    assert "<lora:chara:0.6:NCNF>" in fields[REFUSED_FIELD] and "not applied" in fields[REFUSED_FIELD]


def test_without_the_script_the_positional_preset_drops_every_lora(env: Env) -> None:
    """What the rewrite fixes: A1111's built-in alone fails on `NCNF` and applies no LoRA at all."""
    p = env.processing("<lora:chara:0.8:NCNF> <lora:styleb:1>")
    p.scripts = None
    process_images(p, env.builtin, env.extra, env.webui)
    assert any("could not convert string to float" in error for error in env.extra.errors)
    assert env.builtin.loaded_networks == [] and all_original(env)


# --- per-module multipliers ---------------------------------------------------------------------------------------


def test_every_module_gets_te_times_base_or_unet_times_its_block(env: Env) -> None:
    vector, table = graded_vector(env.world.arch)
    env.generate(f"<lora:chara:0.7:0.4:{vector}> <lora:styleb:0.9:lbw=CHAR>")
    char = PresetBook.builtin().resolve("CHAR", env.world.arch)
    expected = expected_weights(env, [("chara", 0.7, 0.4, table), ("styleb", 0.9, 0.9, char)])
    assert {t.root for t in expected} == ({"unet", "te1"} if env.world.arch == "sd1" else {"unet", "te1", "te2"})
    assert len({t.block for t in expected if t.root == "unet"}) >= 8
    assert_weights(env, expected)


def test_none_preset_keeps_blocks_and_encoders_bit_identical_but_not_unblocked_parts(env: Env) -> None:
    env.generate("<lora:styleb:1:NONE>")
    targets = lora_modules(env, "styleb")
    unblocked = [t for t in targets if t.block in UNBLOCKED_PARTS]
    assert {t.block for t in unblocked} == ({"time_embed", "out"} if env.world.arch == "sd1"
                                            else {"time_embed", "label_emb", "out"})
    for target in targets:
        same = torch.equal(env.weight(target), env.original(target))
        assert same == (target.block not in UNBLOCKED_PARTS), target.key
    assert_weights(env, {t: w for t, w in expected_weights(env, [("styleb", 1.0, 1.0, {})]).items()
                         if t in unblocked})


# --- the built-in's cache -----------------------------------------------------------------------------------------


def test_same_set_twice_neither_reloads_nor_remerges(env: Env) -> None:
    prompt = "<lora:chara:0.8:NCNF> <lora:styleb:0.5>"
    env.generate(prompt)
    first_merges = env.builtin.merges
    after_first = {t: env.weight(t).clone() for t in lora_modules(env, "chara")}
    env.generate(prompt)
    assert env.builtin.loads == {"chara": 1, "styleb": 1}
    assert first_merges > 0 and env.builtin.merges == first_merges
    assert all(torch.equal(env.weight(t), w) for t, w in after_first.items())


def test_changed_block_weights_reapply_from_the_backup(env: Env) -> None:
    book = PresetBook.builtin()
    env.generate("<lora:chara:0.8:NCNF>")
    merges = env.builtin.merges
    env.generate("<lora:chara:0.8:CHAR>")
    assert env.builtin.merges > merges and env.builtin.loads == {"chara": 1}
    assert_weights(env, expected_weights(env, [("chara", 0.8, 0.8, book.resolve("CHAR", env.world.arch))]))


def test_fifty_alternating_generations_leave_no_drift(env: Env) -> None:
    prompts = ["<lora:chara:0.8:NCNF> <lora:styleb:0.5:CHAR>", "<lora:chara:1.3:ALL>",
               "<lora:chara:0.8> <lora:styleb:0.5>", "<lora:styleb:1:0.2:NIN:start=2>", "no lora"]
    probes = tuple(lora_modules(env, "chara")) + tuple(lora_modules(env, "styleb"))
    first_seen: dict[str, dict[Target, torch.Tensor]] = {}
    reloads = {"chara": 0, "styleb": 0}
    previous: set[str] = set()
    for i in range(50):
        prompt = prompts[i % len(prompts)]
        env.generate(prompt, steps=2)
        now = {t: env.weight(t).clone() for t in probes}
        reference = first_seen.setdefault(prompt, now)
        assert all(torch.equal(now[t], reference[t]) for t in probes), (i, prompt)
        names = {call.name for call in parse_prompt(prompt)[1]}
        for name in names - previous:  # A1111 (lora_in_memory_limit 0) reads a file again after a prompt without it
            reloads[name] += 1
        previous = names
    assert all_original(env)  # the last prompt has no LoRA: the built-in restored every backup
    assert env.builtin.loads == reloads


# --- step windows ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", ["start=3:stop=5", "start=0.5", "stop=2"])
def test_start_stop_switch_the_unet_part_at_the_right_steps(env: Env, window: str) -> None:
    steps = 6
    prompt = f"<lora:chara:0.8:lbw=ALL:{window}>"
    (call,) = parse_prompt(prompt)[1]
    on_steps = set(active_steps(call, steps))
    targets = lora_modules(env, "chara")
    unet = next(t for t in targets if t.root == "unet")
    encoder = next(t for t in targets if t.root != "unet")
    env.generate(prompt, record=(unet, encoder), steps=steps)
    table = PresetBook.builtin().resolve("ALL", env.world.arch)
    on = expected_weights(env, [("chara", 0.8, 0.8, table)])
    for _, step, weights in env.steps_seen:
        if step in on_steps:
            torch.testing.assert_close(weights[unet.key], on[unet], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(weights[unet.key], env.original(unet)), step
        torch.testing.assert_close(weights[encoder.key], on[encoder], rtol=1e-5, atol=1e-6)  # te never gated
    assert 0 < len(on_steps) < steps


# --- infotext -------------------------------------------------------------------------------------------------------


def test_infotext_field_and_pasting_back_gives_the_prompt_as_typed(env: Env) -> None:
    vector, _ = graded_vector(env.world.arch)
    typed = f"a <lora:chara:0.8:NCNF>, b <lora:styleb:1:0.5:{vector}:stop=3> c"
    processed = env.generate(typed, steps=3)
    pasted = [callback for _, callback in env.webui.callbacks["infotext_pasted"]]
    params = parse_generation_parameters(processed.infotexts[0], tuple(pasted))
    assert params["Prompt"] == typed
    calls = parse_prompt(typed)[1]
    assert params[BLOCK_WEIGHTS_FIELD] == block_weights_value(calls)
    assert parse_block_weights_value(params[BLOCK_WEIGHTS_FIELD]) == calls


def test_no_field_without_block_weights_and_bad_pasted_fields_are_dropped(env: Env) -> None:
    processed = env.generate("a <lora:chara:0.8>")
    assert BLOCK_WEIGHTS_FIELD not in processed.infotexts[0]
    (paste,) = [callback for _, callback in env.webui.callbacks["infotext_pasted"]]
    for value, kept in [("x: te=1, unet=0.5, blocks=NCNF", True), ("x: te=1, frob=2", False), ("nonsense", False),
                        ("x: te=1, unet=1, blocks=1,0.5, pass=hires", True), ("x: te=1, unet=1, pass=second", False)]:
        params = {"Prompt": "p <lora:x:1:NCNF>", BLOCK_WEIGHTS_FIELD: value}
        paste("", params)
        assert (BLOCK_WEIGHTS_FIELD in params) == kept
        assert params["Prompt"] == "p <lora:x:1:NCNF>"


# --- refusal, restore ---------------------------------------------------------------------------------------------


def test_generation_is_refused_while_training_holds_the_model(env: Env) -> None:
    with WEBUI_GPU.hold("training"):
        processed = env.generate("<lora:chara:0.8:NCNF>")
        assert processed.infotexts == [] and env.builtin.loads == {}
        assert "refused" in processed.comments and "training" in processed.comments
        p = env.processing("<lora:chara:0.8:NCNF>")
        setattr(p, ALLOW_WHILE_HELD_ATTR, "training")  # the holder's own sample images
        assert len(env.run(p).infotexts) == 1
    assert len(env.generate("<lora:chara:0.8:NCNF>").infotexts) == 1


class LbwScriptStandIn:
    """sd-webui-lora-block-weight's always-on script as A1111's runner holds it: its title and the slice of
    `p.script_args` its inputs own (presets text, Active, mode); its hooks record that they ran (and scale nothing
    here, so what the weights show is what LoRA Studio did)."""

    args_from, args_to = 0, 3

    def __init__(self) -> None:
        self.calls: list[str] = []

    def title(self) -> str:
        return "LoRA Block Weight"

    def __getattr__(self, hook: str) -> Any:
        if hook.startswith("_"):
            raise AttributeError(hook)
        return lambda *args, **kwargs: self.calls.append(hook)


@pytest.mark.parametrize("active", [True, None, False, "missing"])
def test_lbw_active_too_is_left_the_block_weights(env: Env, active: Any) -> None:
    """LBW scales the same tags in place: with both acting every block weight would apply twice."""
    prompt = "<lora:chara:0.7:lbw=CHAR>"
    lbw = LbwScriptStandIn()
    p = env.processing(prompt, script_args=("", active, 0) if active != "missing" else ())
    p.scripts.alwayson_scripts.insert(0, lbw)
    processed = env.run(p)
    assert "before_process" in lbw.calls
    table = PresetBook.builtin().resolve("CHAR", env.world.arch)
    if active is False:  # LBW is off: LoRA Studio applies the block weights, says nothing about LBW
        assert "LoRA Block Weight" not in processed.comments
        assert_weights(env, expected_weights(env, [("chara", 0.7, 0.7, table)]))
        assert BLOCK_WEIGHTS_FIELD in processed.infotexts[0]
    else:  # on, None (LBW's default) or unreadable: no block weights of ours, and the user is told why
        assert "LoRA Block Weight (sd-webui-lora-block-weight) is active too" in processed.comments
        assert_weights(env, expected_weights(env, [("chara", 0.7, 0.7, None)]))
        assert BLOCK_WEIGHTS_FIELD not in processed.infotexts[0]
        plain = env.processing("<lora:chara:0.7>", script_args=p.script_args)
        plain.scripts.alwayson_scripts.insert(0, lbw)
        assert "LoRA Block Weight" not in env.run(plain).comments  # nothing to say without block weights


def test_nothing_of_ours_stays_on_the_networks_after_a_generation_or_unload(env: Env) -> None:
    def ours() -> list[Any]:
        found = []
        for net in env.builtin.loaded_networks:
            found += [m for m in net.modules.values() if isinstance(vars(m).get("multiplier"), ModuleMultiplier)]
            found += [v for v in (net.te_multiplier, net.unet_multiplier) if isinstance(v, TaggedMultiplier)]
        return found

    env.generate("<lora:chara:0.8:NCNF>", steps=1)
    assert env.builtin.loaded_networks and ours() == []  # postprocess removed everything

    seen_during: list[int] = []
    (_, unload), = env.webui.callbacks["script_unloaded"]

    def unload_midway(pass_name: str, step: int) -> None:
        seen_during.append(len(ours()))
        unload()

    p = env.processing("<lora:chara:0.8:NCNF>", steps=2)
    process_images(p, env.builtin, env.extra, env.webui, on_step=unload_midway)
    assert seen_during[0] > 0 and seen_during[1:] == [0] and ours() == []
    assert float(env.builtin.loaded_networks[0].unet_multiplier) == 0.8


# --- pieces ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("left", "right", "equal"), [
    (TaggedMultiplier(0.8, ("a",)), TaggedMultiplier(0.8, ("a",)), True),
    (TaggedMultiplier(0.8, ("a",)), TaggedMultiplier(0.8, ("b",)), False),
    (TaggedMultiplier(0.8, ("a",)), TaggedMultiplier(0.7, ("a",)), False),
    (TaggedMultiplier(0.8, ("a",)), 0.8, False),
    (0.8, TaggedMultiplier(0.8, ("a",)), False),
])
def test_tagged_multiplier_equality_decides_the_builtin_cache(left: Any, right: Any, equal: bool) -> None:
    assert (("n", left, 1.0, None) == ("n", right, 1.0, None)) is equal
    assert (("n", left, 1.0, None) != ("n", right, 1.0, None)) is not equal
    assert hash(left) == hash(right) or not equal
    assert left * 0.5 == float(left) * 0.5  # the built-in computes with it as with its number


@pytest.mark.parametrize("typed", [
    "<lora:a:0.8:NCNF>",
    "<lora:a:1:0.5:1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0:start=2:stop=0.75>",
    "<lora:a:1:0.5> <lora:b:0.25:lbw=CHAR:stop=3>",
    "<lora:a.b-c:-0.5:lbw= 1, 0.5 ,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0>",
])
def test_block_weights_value_reads_back(typed: str) -> None:
    calls = parse_prompt(typed)[1]
    assert parse_block_weights_value(block_weights_value(calls)) == calls


NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,8}", fullmatch=True).filter(lambda name: ".." not in name)
NUMBERS = st.floats(-4, 4, allow_nan=False).map(lambda value: round(value, 3))
BLOCKS = st.one_of(st.none(), st.sampled_from(["NCNF", "CHAR", "ALL0.5", "my-preset"]),
                   st.lists(st.sampled_from(["0", "1", "0.5", " 1", "0.25 ", "-1"]), min_size=2, max_size=26)
                   .map(",".join))
STEPS = st.one_of(st.none(), st.integers(0, 40), st.floats(0, 1).map(lambda value: round(value, 2)))


@st.composite
def calls(draw: st.DrawFn) -> LoraCall:
    start, stop = draw(STEPS), draw(STEPS)
    if start is not None and stop is not None and type(start) is type(stop) and start > stop:
        start, stop = stop, start
    return LoraCall(draw(NAMES), draw(NUMBERS), draw(NUMBERS), None, draw(BLOCKS), start, stop)


@settings(max_examples=60, deadline=None)
@given(st.lists(calls(), min_size=1, max_size=3))
def test_any_block_weights_value_reads_back(drawn: list[LoraCall]) -> None:
    canonical = parse_prompt(" ".join(format_call(call) for call in drawn))[1]
    assert parse_block_weights_value(block_weights_value(canonical)) == canonical


@settings(max_examples=60, deadline=None)
@given(NAMES, NUMBERS, NUMBERS, BLOCKS.filter(lambda blocks: blocks is not None), st.text("ab ,()", max_size=6))
def test_any_positional_preset_tag_is_rewritten_into_one_the_builtin_reads(
        name: str, te: float, unet: float, blocks: str, text: str) -> None:
    typed = f"{text}<lora:{name}:{te}:{unet}:{blocks}>{text}"
    rewritten, problems = rewrite_prompt(typed)
    assert problems == []
    loaded: list[tuple[Any, ...]] = []
    handler = ExtraNetworkLora(SimpleNamespace(load_networks=lambda *args: loaded.append(args)))
    (cleaned,), data = parse_prompts([rewritten])
    handler.activate(None, data["lora"])  # raises on a tag A1111 1.10 would reject
    assert loaded == [([name], [te], [unet], [None])]
    assert cleaned == text + text
    assert rewrite_prompt(rewritten) == (rewritten, [])
