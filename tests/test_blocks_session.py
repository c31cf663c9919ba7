"""LoraSession on the tiny diffusers model: unchanged sets merge nothing, start=/stop= switch the UNet part by step,
unmerge restores the base weights bit for bit, hosts that read tags themselves get the prompt as typed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from lib_lora.blocks.apply import LoraLibrary  # noqa: E402
from lib_lora.blocks.presets import PresetBook  # noqa: E402
from lib_lora.blocks.session import LoraSession, session_for, unmerge_host  # noqa: E402
from lib_lora.blocks.step_window import active_steps  # noqa: E402
from lib_lora.blocks.syntax import parse_prompt  # noqa: E402
from lib_lora.hosts.base import GenerationRequest  # noqa: E402
from lib_lora.hosts.diffusers import load_diffusers_host  # noqa: E402
from lib_lora.networks.files import save_lora_file  # noqa: E402
from lib_lora.networks.keys import build_target_index  # noqa: E402
from lib_lora.networks.random_files import random_lora_state_dict  # noqa: E402

REQUEST = GenerationRequest(prompt="", steps=4, width=64, height=64, seed=3, cfg_scale=5.0)
PROBE = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # a UNet weight every LoRA here changes


@pytest.fixture(scope="module")
def host():
    return load_diffusers_host("tiny")


@pytest.fixture(scope="module")
def library(host, tmp_path_factory) -> LoraLibrary:
    folder = tmp_path_factory.mktemp("loras")
    tensors = random_lora_state_dict(build_target_index(host), seed=11, strength=1.0)
    save_lora_file(folder / "pat.safetensors", tensors, {"ss_base_model_version": "sd_v1"})
    return LoraLibrary([folder])


@pytest.fixture()
def session(host, library):
    session = LoraSession(host, library, PresetBook.builtin(), model_name="tiny")
    yield session
    session.unmerge()


def base_weights(host) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in host.unet.state_dict().items()}


def same_weights(host, reference: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, reference[k]) for k, v in host.unet.state_dict().items())


def image(session, prompt: str) -> np.ndarray:
    return np.asarray(session.generate(replace(REQUEST, prompt=prompt)).image, dtype=np.int16)


def test_unchanged_set_merges_nothing_and_renders_the_same(host, session):
    base = base_weights(host)
    first = session.generate(replace(REQUEST, prompt="a cat <lora:pat:0.8:CHAR>"))
    second = session.generate(replace(REQUEST, prompt="a cat <lora:pat:0.8:CHAR>"))
    assert first.merge.rebuilt > 0 and second.merge.rebuilt == 0 and second.merge.unchanged == first.merge.rebuilt
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert not same_weights(host, base) and session.merged
    without = session.generate(replace(REQUEST, prompt="a cat"))
    assert without.merge.restored == first.merge.rebuilt and same_weights(host, base)


def test_files_are_read_once_while_unchanged(host, library, session, monkeypatch):
    import lib_lora.blocks.session as module

    loads: list[Path] = []
    real = module.load_network
    monkeypatch.setattr(module, "load_network", lambda path: loads.append(path) or real(path))
    for weight in ("0.5", "0.6", "0.5"):
        session.generate(replace(REQUEST, prompt=f"x <lora:pat:{weight}>"))
    assert len(loads) == 1


def test_infotext_keeps_the_prompt_as_typed(session):
    prompt = "a cat <lora:pat:0.8:NCNF:start=2>"
    text = session.generate(replace(REQUEST, prompt=prompt, negative_prompt="blurry")).parameters
    lines = text.split("\n")
    assert lines[0] == prompt and lines[1] == "Negative prompt: blurry"
    assert 'Lora block weights: "pat: te=0.8, unet=0.8, blocks=NCNF, start=2"' in lines[2]
    assert "Seed: 3" in lines[2] and "Model: tiny" in lines[2]


@pytest.mark.parametrize(
    ("tag", "merged_at"),
    [
        ("<lora:pat:0:1:start=3>", [False, False, True, True]),
        ("<lora:pat:0:1:stop=2>", [True, False, False, False]),
        ("<lora:pat:0:1:start=0.5:stop=0.75>", [False, False, True, False]),
        ("<lora:pat:0:1>", [True, True, True, True]),
    ],
)
def test_step_windows_switch_the_unet_part_per_step(host, session, tag, merged_at):
    base = base_weights(host)[f"{PROBE}.weight"]
    seen: list[bool] = []
    module = host.unet.get_submodule(PROBE)
    handle = host.unet.register_forward_pre_hook(lambda *_: seen.append(not torch.equal(module.weight, base)))
    try:
        session.generate(replace(REQUEST, prompt=f"a cat {tag}"))
    finally:
        handle.remove()
    assert seen == merged_at  # one UNet call per step (CFG is batched)
    assert active_steps(parse_prompt(tag)[1][0], 4) == range(4)[merged_at.index(True):][: sum(merged_at)]


def test_a_window_that_never_opens_with_te_0_equals_no_lora(session):
    assert np.array_equal(image(session, "a cat <lora:pat:0:1:stop=1>"), image(session, "a cat"))
    assert np.array_equal(image(session, "a cat <lora:pat:0:1:start=1>"), image(session, "a cat <lora:pat:0:1>"))
    assert not np.array_equal(image(session, "a cat <lora:pat:0:1:start=3>"), image(session, "a cat"))


def test_unmerge_after_a_gated_generation_restores_bit_for_bit(host, session):
    base = base_weights(host)
    session.generate(replace(REQUEST, prompt="a cat <lora:pat:1:CHAR:start=2:stop=3>"))
    session.unmerge()
    assert same_weights(host, base) and not session.merged


def test_errors_leave_the_model_alone(host, session):
    from lib_lora.blocks.apply import LoraNotFoundError
    from lib_lora.errors import BlockWeightError

    base = base_weights(host)
    with pytest.raises(LoraNotFoundError, match="did you mean pat"):
        session.generate(replace(REQUEST, prompt="a cat <lora:pta:1>"))
    with pytest.raises(BlockWeightError):
        session.check("a cat <lora:pat:1:NOPE>")
    assert same_weights(host, base)


class TagReadingHost:
    """A host whose generate() reads `<lora:…>` tags itself, as the WebUI's does: records what it was asked."""

    handles_lora_tags = True

    def __init__(self, host) -> None:
        self._host, self.asked = host, []

    def __getattr__(self, name: str):
        return getattr(self._host, name)

    def generate(self, request: GenerationRequest):
        self.asked.append(request.prompt)
        return self._host.generate(replace(request, prompt=parse_prompt(request.prompt)[0]))


def test_a_host_that_reads_tags_gets_the_prompt_as_typed(host, library):
    reading = TagReadingHost(host)
    session = LoraSession(reading, library, PresetBook.builtin(), model_name="webui")
    base = base_weights(host)
    generated = session.generate(replace(REQUEST, prompt="a cat <lora:pat:0.8:NCNF>"))
    assert reading.asked == ["a cat <lora:pat:0.8:NCNF>"] and same_weights(host, base)
    assert "Lora block weights" in generated.parameters
    with pytest.raises(Exception, match="did you mean pat"):
        session.generate(replace(REQUEST, prompt="a cat <lora:pta:1>"))
    assert len(reading.asked) == 1


class RecordingWebUIHost(TagReadingHost):
    """As TagReadingHost, and its images carry the WebUI's own infotext (what it applied), as A1111's and Neo's do."""

    def generate(self, request: GenerationRequest):
        image = super().generate(request)
        image.info["parameters"] = "a cat\nSteps: 4, Sampler: DPM++ 2M, Seed: 42, Lora block weights: \"pat: te=1\""
        return image


def test_a_webui_host_s_own_infotext_is_the_record(host, library):
    session = LoraSession(RecordingWebUIHost(host), library, PresetBook.builtin(), model_name="webui")
    generated = session.generate(replace(REQUEST, prompt="a cat <lora:pat:0.8:NCNF>"))
    assert generated.parameters.endswith('Seed: 42, Lora block weights: "pat: te=1"')
    assert "NCNF" not in generated.parameters  # what the host applied, not what was asked


def test_one_session_per_host_and_unmerge_host(host, library):
    books = PresetBook.builtin()
    session = session_for(host, library, books)
    assert session_for(host, library, books) is session
    base = base_weights(host)
    session.generate(replace(REQUEST, prompt="a cat <lora:pat:1>"))
    unmerge_host(host)
    assert same_weights(host, base)
