"""A LoRA whose keys match nothing on the loaded model, or match in part, is never applied in silence.

One table of LoRAs for an SD1 model, run on each host we apply LoRAs through:
- standalone (LoraSession on the tiny diffusers model): a LoRA that would change nothing, or that matches in part
  and looks like another family, is refused before anything renders (LoraMatchError); a partial match is a
  warning; the PNG parameters count every LoRA's matched modules (`Lora modules matched`);
- A1111 1.10 (the always-on script over webui_standin's built-in Lora, which merges what fits and skips the rest
  as A1111 does) and Forge Neo (the controller over a stand-in of Neo's kohya loader, which skips a LoRA with more
  than half its keys unmatched): the built-in applies what it placed; the infotext counts it, a partial or empty
  match is reported once as a comment, and block weights of a LoRA none of whose modules matched are refused.
The LoRAs carry no metadata, so only their keys tell their family.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")

from webui_standin.builtin_lora import ExtraNetworks  # noqa: E402
from webui_standin.fake_extension_api import install_extension_api  # noqa: E402
from webui_standin.fake_modules import install_fake_modules, make_opts  # noqa: E402
from webui_standin.forge_lora_loader import ForgeModelStandIn  # noqa: E402
from webui_standin.lora_matching import BuiltinLoraWithErrors, NeoKohyaNetworks  # noqa: E402
from webui_standin.models import build_sd_model_standin  # noqa: E402
from webui_standin.processing import (  # noqa: E402
    ScriptRunnerStandIn,
    Txt2ImgStandIn,
    parse_generation_parameters,
    process_images,
)

from lib_lora.blocks.apply import LoraLibrary  # noqa: E402
from lib_lora.blocks.presets import PresetBook  # noqa: E402
from lib_lora.blocks.syntax import EXTRA_NETWORK_RE  # noqa: E402
from lib_lora.errors import LoraStudioError  # noqa: E402
from lib_lora.hosts.a1111 import A1111Host  # noqa: E402
from lib_lora.jobs import GpuGate  # noqa: E402
from lib_lora.networks.keys import TargetIndex, build_target_index  # noqa: E402
from lib_lora.networks.matching import MATCHED_FIELD, LoraMatchError, module_names  # noqa: E402
from lib_lora.networks.random_files import random_lora_state_dict  # noqa: E402
from lib_lora.webui.blockweight.prompts import REFUSED_FIELD  # noqa: E402
from lib_lora.webui.blockweight.script import CONTROLLER, BlockWeightController  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BLOCK_FIELD = "Lora block weights"
Tensors = dict[str, torch.Tensor]


# --- the LoRAs: built from the host's own layers and from an SDXL model's ------------------------------------------


def _renamed(tensors: Tensors, rename: Callable[[int, str], str]) -> Tensors:
    """The tensors with module number i (in sorted order) renamed by `rename(i, name)`."""
    order = {name: i for i, name in enumerate(sorted(module_names(tensors)))}
    renamed = {}
    for key, tensor in tensors.items():
        module, _, part = key.partition(".")
        renamed[f"{rename(order[module], module)}.{part}"] = tensor
    return renamed


def same_family(own: TargetIndex, sdxl: TargetIndex) -> Tensors:
    return random_lora_state_dict(own, seed=1)


def sdxl_lora(own: TargetIndex, sdxl: TargetIndex) -> Tensors:
    return random_lora_state_dict(sdxl, seed=2)


def half_unmatched(own: TargetIndex, sdxl: TargetIndex) -> Tensors:
    """Every second module names a layer the model lacks (as a LoRA cut from a model with other layers)."""
    return _renamed(random_lora_state_dict(own, seed=3),
                    lambda i, name: name.replace("lora_", "lora_gone_", 1) if i % 2 else name)


def nothing_matches(own: TargetIndex, sdxl: TargetIndex) -> Tensors:
    """Keys of a transformer model (no UNet or CLIP layer of any SD family)."""
    return _renamed(random_lora_state_dict(own, seed=4), lambda i, name: f"lora_unet_double_blocks_{i}_img_attn_qkv")


@dataclass(frozen=True)
class Case:
    """A LoRA and what each host's record says: `refused` on standalone; the field's pattern per WebUI host."""

    name: str
    build: Callable[[TargetIndex, TargetIndex], Tensors]
    refused: str | None  # the standalone error's words, None when it generates
    a1111: str  # regex on the field value after "name: ", with {n} the number of modules
    neo: str
    reported: bool  # a comment says it matched in part or not at all


N = r"(?P<total>\d+)"
CASES = [
    Case("same", same_family, None, rf"{N} of (?P=total)$", rf"{N} of (?P=total)$", False),
    Case("sdxl", sdxl_lora, "looks like an SDXL LoRA", rf"(?P<matched>[1-9]\d*) of {N}, looks like SDXL$",
         rf"0 of {N}, looks like SDXL$", True),
    Case("half", half_unmatched, None, rf"(?P<matched>\d+) of {N}$", rf"(?P<matched>\d+) of {N}$", True),
    Case("none", nothing_matches, "none of its", rf"0 of {N}$", rf"0 of {N}$", True),
]
IDS = [case.name for case in CASES]


def write_loras(folder: Path, own: TargetIndex, sdxl: TargetIndex) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for case in CASES:
        files[case.name] = folder / f"{case.name}.safetensors"
        save_file({k: v.contiguous() for k, v in case.build(own, sdxl).items()}, files[case.name])  # no metadata
    return files


def field_of(infotext_or_value: str, name: str) -> str:
    """The part of a `Lora modules matched` value about LoRA `name`."""
    parts = dict(part.split(": ", 1) for part in infotext_or_value.split("; "))
    return parts[name]


def assert_counts(value: str, pattern: str, name: str, files: dict[str, Path]) -> None:
    match = re.fullmatch(pattern, value)
    assert match, f"{name}: {value!r} does not match {pattern!r}"
    total = len(module_names(_keys(files[name])))
    assert int(match["total"]) == total, value
    if "matched" in match.groupdict():
        assert 0 < int(match["matched"]) < total, value


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


@pytest.fixture(scope="module")
def sdxl_index() -> TargetIndex:
    return build_target_index(A1111Host(build_sd_model_standin("sdxl", make_opts())))


# --- standalone --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, sdxl_index):
    pytest.importorskip("diffusers")
    from PIL import Image

    from lib_lora.blocks.session import LoraSession
    from lib_lora.hosts.diffusers import DiffusersHost, load_diffusers_host

    class MergeOnlyHost(DiffusersHost):
        """The tiny model: LoRAs are merged into its weights; rendering is skipped (not what is tested here)."""

        def generate(self, request: Any, *, on_step: Any = None) -> Image.Image:
            return Image.new("RGB", (request.width, request.height))

    host = MergeOnlyHost(load_diffusers_host("tiny").pipeline, model_name="tiny")
    root = tmp_path_factory.mktemp("standalone")
    files = write_loras(root / "Lora", build_target_index(host), sdxl_index)
    session = LoraSession(host, LoraLibrary([root / "Lora"]), PresetBook.builtin())
    return SimpleNamespace(host=host, session=session, files=files, root=root)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_standalone_refuses_or_warns_and_records_the_counts(standalone, case: Case) -> None:
    from lib_lora.hosts.base import GenerationRequest

    request = GenerationRequest(prompt=f"a cat <lora:{case.name}:0.8>", steps=2, width=64, height=64, seed=1)
    base = {name: p.detach().clone() for name, p in standalone.host.unet.named_parameters()}
    if case.refused:
        for attempt, argument in ((standalone.session.check, request.prompt), (standalone.session.generate, request)):
            with pytest.raises(LoraMatchError, match=case.refused) as error:
                attempt(argument)
            assert f"LoRA '{case.name}'" in str(error.value) and "SD1 model" in str(error.value)
        assert all(torch.equal(p, base[n]) for n, p in standalone.host.unet.named_parameters())  # nothing merged
        return
    generated = standalone.session.generate(request)
    value = parse_generation_parameters(generated.parameters)[MATCHED_FIELD]
    assert_counts(field_of(value, case.name), case.a1111, case.name, standalone.files)
    assert bool(generated.warnings) == case.reported
    assert standalone.session.warnings(request.prompt) == generated.warnings
    if case.reported:
        warning = generated.warnings[0]
        assert "match none (e.g. " in warning and "are not applied" in warning and "lora_gone_" in warning
    standalone.session.unmerge()


def test_the_block_weight_tab_refuses_before_rendering_and_shows_warnings(standalone) -> None:
    from lib_lora.ui import StudioContext
    from lib_lora.ui.blocks.editor import BlockEditor
    from lib_lora.ui.blocks.runs import BlockRuns

    context = StudioContext.for_folder(lambda: standalone.host, standalone.root)
    runs = BlockRuns(context, BlockEditor(lambda: context.presets_file), poll_seconds=0.01)
    ones, settings = ",".join(["1"] * 17), ("a cat", "", 0, 1, 1.0, 64, 64)
    half = list(runs.generate("half", 1.0, ones, None, "sd1", -1, *settings))[-1]
    assert "⚠️" in half["status"] and "105 of its 210 modules" in half["status"]
    assert f'{MATCHED_FIELD}: "half: 105 of 210"' in half["infotext"]
    with pytest.raises(LoraMatchError, match="none of its 210 modules"):
        next(runs.generate("none", 1.0, ones, None, "sd1", -1, *settings))
    with pytest.raises(LoraStudioError, match="looks like an SDXL LoRA"):  # the grid's check, before its job
        next(runs.run_grid("lora: same, sdxl", "", None, 1.0, ones, None, "sd1", -1, *settings))
    assert runs.grid_slot._job is None
    with pytest.raises(LoraMatchError, match="none of its"):
        next(runs.run_analyzer("none", 1.0, 16, "sd1", False, *settings))
    assert runs.analyzer_slot._job is None
    from lib_lora.blocks.session import unmerge_host

    unmerge_host(standalone.host)  # the tab's session merged `half`


def test_the_command_line_refuses_in_one_line_and_warns(standalone, tmp_path, capsys) -> None:
    import io

    from lib_lora.cli.main import main

    folder = str(standalone.root / "Lora")
    common = ["generate", "--steps", "1", "--width", "64", "--height", "64", "--lora-dir", folder]
    out = io.StringIO()
    assert main([*common, "--prompt", "a <lora:sdxl:1>", "--out", str(tmp_path / "x.png")], out=out) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "looks like an SDXL LoRA" in error and "228 modules" in error, error
    assert not (tmp_path / "x.png").exists()
    assert main([*common, "--prompt", "a <lora:half:1>", "--out", str(tmp_path / "h.png")], out=out) == 0
    warnings = [line for line in out.getvalue().splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "105 of its 210 modules" in warnings[0], out.getvalue()


# --- A1111 1.10 ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a1111_world(tmp_path_factory, sdxl_index):
    sd_model = build_sd_model_standin("sd1", make_opts())
    files = write_loras(tmp_path_factory.mktemp("a1111"), build_target_index(A1111Host(sd_model)), sdxl_index)
    return SimpleNamespace(sd_model=sd_model, files=files)


@pytest.mark.hostcompat
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_tab_on_a_webui_checks_the_files_before_the_webui_generates(a1111_world, case: Case) -> None:
    from lib_lora.blocks.session import LoraSession

    host = A1111Host(a1111_world.sd_model)
    assert host.handles_lora_tags
    session = LoraSession(host, LoraLibrary([a1111_world.files["same"].parent]), PresetBook.builtin())
    prompt = f"a cat <lora:{case.name}:1:NCNF>"
    if case.refused:
        with pytest.raises(LoraMatchError, match=case.refused):
            session.check(prompt)
    else:
        assert bool(session.warnings(prompt)) == case.reported


def _exec_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lora_studio_script", ROOT / "scripts" / "lora_studio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def a1111(a1111_world, monkeypatch, tmp_path) -> Iterator[Callable[[str], Any]]:
    fake = install_fake_modules(monkeypatch, None, make_opts())
    webui = install_extension_api(monkeypatch, fake, models_path=tmp_path / "models")
    script = _exec_script().LoraStudioBlockWeights()
    builtin = BuiltinLoraWithErrors(a1111_world.sd_model, a1111_world.files)
    monkeypatch.setitem(sys.modules, "networks", builtin)

    def generate(prompt: str) -> Any:
        webui.shared.state.begin()
        p = Txt2ImgStandIn(sd_model=a1111_world.sd_model, prompt=prompt, steps=1,
                           scripts=ScriptRunnerStandIn([script]))
        processed = process_images(p, builtin, ExtraNetworks(builtin), webui)
        assert p.scripts.errors == [], p.scripts.errors
        fields = parse_generation_parameters(processed.infotexts[0])
        return SimpleNamespace(fields=fields, comments=processed.comments, builtin=builtin)

    yield generate
    CONTROLLER.unload()


@pytest.mark.hostcompat
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a1111_records_and_reports_what_the_builtin_placed(a1111, a1111_world, case: Case) -> None:
    result = a1111(f"a cat <lora:same:0.5> <lora:{case.name}:0.8>")
    assert_counts(field_of(result.fields[MATCHED_FIELD], case.name), case.a1111, case.name, a1111_world.files)
    assert_counts(field_of(result.fields[MATCHED_FIELD], "same"), CASES[0].a1111, "same", a1111_world.files)
    lines = [line for line in result.comments.splitlines() if f"LoRA '{case.name}'" in line]
    assert len(lines) == (1 if case.reported else 0), result.comments
    assert all(line.startswith("LoRA Studio: ") for line in lines)


# --- Forge Neo -------------------------------------------------------------------------------------------------


@pytest.fixture
def neo(a1111_world, monkeypatch) -> Iterator[Callable[[str], Any]]:
    monkeypatch.setitem(sys.modules, "modules_forge.forge_version", ModuleType("forge_version"))
    sys.modules["modules_forge.forge_version"].version = "neo"
    index = build_target_index(A1111Host(a1111_world.sd_model))
    key_map, unet_keys, clip_keys = {}, set(), set()
    for target in index.targets():
        if target.rows is not None:
            continue
        prefix = "diffusion_model." if target.root == "unet" else "clip_l.transformer."
        param = f"{prefix}{target.module_path}.{target.param_name}"
        (unet_keys if target.root == "unet" else clip_keys).add(param)
        key_map.update(dict.fromkeys(index.spellings(target), param))
    model = ForgeModelStandIn(unet_keys, clip_keys)
    networks = NeoKohyaNetworks(model, a1111_world.files, key_map)
    controller = BlockWeightController(gate=lambda: GpuGate(), networks=lambda: networks,
                                       presets_file=lambda: None, interrupt=lambda: None)

    def generate(prompt: str) -> Any:
        p = SimpleNamespace(sd_model=model, extra_generation_params={}, comments={}, steps=2, enable_hr=False,
                            batch_size=1, prompts=[prompt], all_prompts=[prompt])
        p.comment = lambda text: p.comments.setdefault(text, 1)
        controller.before_process(p)
        controller.before_process_batch(p, 0, p.prompts)
        params = _neo_activate(networks, p.prompts[0])
        controller.after_extra_networks_activate(p, {"lora": params})
        controller.postprocess(p)
        fields = {name: value(prompt_text=prompt) if callable(value) else value
                  for name, value in p.extra_generation_params.items()}
        return SimpleNamespace(fields=fields, comments="\n".join(p.comments), networks=networks)

    yield generate
    controller.unload()


def _neo_activate(networks: NeoKohyaNetworks, prompt: str) -> list[Any]:
    """Neo's `ExtraNetworkLora.activate`: names, te and unet parsed from each tag, one `load_networks` call."""
    names, te, unet, params = [], [], [], []
    for tag in EXTRA_NETWORK_RE.finditer(prompt):
        items = tag.group(2).split(":")
        positional = [item for item in items if "=" not in item]
        names.append(positional[0])
        te.append(float(positional[1]) if len(positional) > 1 else 1.0)
        unet.append(float(positional[2]) if len(positional) > 2 else te[-1])
        params.append(SimpleNamespace(items=items))
    networks.load_networks(names, te, unet)
    return params


@pytest.mark.hostcompat
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_neo_records_and_reports_the_patches_its_loader_made(neo, a1111_world, case: Case) -> None:
    for _ in range(2):  # the second time Neo's cache skips the load: the counts are the ones it made
        result = neo(f"a cat <lora:same:0.5> <lora:{case.name}:0.8>")
        assert_counts(field_of(result.fields[MATCHED_FIELD], case.name), case.neo, case.name, a1111_world.files)
        lines = [line for line in result.comments.splitlines() if f"LoRA '{case.name}'" in line]
        assert len(lines) == (1 if case.reported else 0), result.comments
    assert len(result.networks.reads) == 2  # one load of both files: the counts did not make Neo load again


@pytest.mark.hostcompat
@pytest.mark.parametrize("host", ["a1111", "neo"])
def test_block_weights_of_a_lora_that_matches_nothing_are_refused(request, host: str) -> None:
    generate = request.getfixturevalue(host)
    fields = generate("a cat <lora:none:1:NCNF> <lora:same:1:NCNF>").fields
    assert "none: te=1" not in (fields.get(BLOCK_FIELD) or "") and "same: te=1" in fields[BLOCK_FIELD]
    assert "<lora:none:1:NCNF>" in fields[REFUSED_FIELD] and "matches no layer" in fields[REFUSED_FIELD]
