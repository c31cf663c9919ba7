"""Prompt calls to merged weights: LoRA folders by name, presets per block, BASE on the text encoders, clear refusals.

Runs on the LDM-layout tiny UNets with tiny CLIP (as in A1111, no diffusers), so it runs in both environments.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lib_lora.blocks.apply import (
    LoraArchMismatchError,
    LoraLibrary,
    LoraLibraryError,
    LoraNotFoundError,
    NotSupportedYetError,
    format_block_weights,
    resolve_calls,
)
from lib_lora.blocks.presets import PresetBook
from lib_lora.blocks.syntax import parse_prompt
from lib_lora.errors import BlockWeightError, LoraStudioError, PromptSyntaxError
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import save_lora_file
from lib_lora.networks.keys import TargetIndex, build_target_index_for
from lib_lora.networks.loaded import load_network
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.tiny.clip import build_tiny_text_encoder
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet
from lib_lora.unet_blocks import UNBLOCKED_PARTS

pytestmark = pytest.mark.hostcompat

ARCH_METADATA = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}
BOOK = PresetBook.builtin()


def tiny_index(arch: str) -> TargetIndex:
    unet = build_tiny_ldm_unet(arch, seed=0)
    encoders = [build_tiny_text_encoder(1)]
    if arch == "sdxl":
        encoders.append(build_tiny_text_encoder(2, with_projection=True))
    return build_target_index_for(unet, "ldm", encoders, arch)


@pytest.fixture(scope="module")
def sd1() -> TargetIndex:
    return tiny_index("sd1")


@pytest.fixture(scope="module")
def sdxl() -> TargetIndex:
    return tiny_index("sdxl")


def write_lora(path: Path, index: TargetIndex, *, seed: int = 0, arch: str = "sd1", kind: str = "lora") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = random_lora_state_dict(index, kind=kind, seed=seed)
    save_lora_file(path, tensors, {"ss_base_model_version": ARCH_METADATA[arch]})
    return path


def weights(index: TargetIndex) -> dict[str, torch.Tensor]:
    return {target.key: target.weight.detach().clone() for target in index.targets()}


def applied_weights(index: TargetIndex, prompt: str, library: LoraLibrary, book: PresetBook = BOOK
                    ) -> dict[str, torch.Tensor]:
    """The weights with the prompt's LoRAs merged (restored afterwards)."""
    merger = WeightMerger(index)
    with merger.applied(resolve_calls(parse_prompt(prompt)[1], library, book, index.arch)):
        return weights(index)


# --- the library ---------------------------------------------------------------------------------------------


def test_library_finds_nested_files_by_stem(tmp_path, sd1):
    write_lora(tmp_path / "a" / "b" / "deep.safetensors", sd1)
    (tmp_path / "other.ckpt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder.pt").mkdir()
    library = LoraLibrary([tmp_path])
    assert library.names() == ["deep", "other"]
    assert library.resolve("deep") == tmp_path / "a" / "b" / "deep.safetensors"


def test_unknown_name_lists_close_names(tmp_path, sd1):
    write_lora(tmp_path / "charA_v2.safetensors", sd1)
    with pytest.raises(LoraNotFoundError, match=r"'charA_v1'.*did you mean charA_v2"):
        LoraLibrary([tmp_path]).resolve("charA_v1")
    with pytest.raises(LoraNotFoundError, match="chara_v2.*did you mean charA_v2"):
        LoraLibrary([tmp_path]).resolve("chara_v2")


@pytest.mark.parametrize("name", ["../x", "..", "sub/x", "/abs/x", "C:x", "a\\b"])
def test_path_like_names_are_refused(tmp_path, sd1, name):
    write_lora(tmp_path / "lib" / "x.safetensors", sd1)
    write_lora(tmp_path / "lib" / "sub" / "x2.safetensors", sd1)
    with pytest.raises(PromptSyntaxError):
        LoraLibrary([tmp_path / "lib"]).resolve(name)
    with pytest.raises(PromptSyntaxError):  # the tag itself is refused before any look-up
        parse_prompt(f"a cat <lora:{name}:1>")


def test_absolute_path_of_a_real_file_is_not_a_name(tmp_path, sd1):
    real = write_lora(tmp_path / "outside" / "secret.safetensors", sd1)
    (tmp_path / "lib").mkdir()
    with pytest.raises(PromptSyntaxError):
        LoraLibrary([tmp_path / "lib"]).resolve(str(real.with_suffix("")))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_escaping_the_folder_is_refused(tmp_path, sd1):
    outside = write_lora(tmp_path / "outside" / "secret.safetensors", sd1)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "innocent.safetensors").symlink_to(outside)
    with pytest.raises(LoraLibraryError, match="outside the LoRA folders"):
        LoraLibrary([tmp_path / "lib"]).resolve("innocent")


def test_symlink_within_the_folders_is_fine(tmp_path, sd1):
    real = write_lora(tmp_path / "lib" / "real.safetensors", sd1)
    (tmp_path / "lib" / "alias.safetensors").symlink_to(real)
    assert LoraLibrary([tmp_path / "lib"]).resolve("alias") == tmp_path / "lib" / "alias.safetensors"


def test_duplicate_names_are_ambiguous_naming_both_paths(tmp_path, sd1):
    first = write_lora(tmp_path / "one" / "dup.safetensors", sd1)
    second = write_lora(tmp_path / "two" / "nested" / "dup.safetensors", sd1, seed=1)
    with pytest.raises(LoraLibraryError, match="ambiguous") as raised:
        LoraLibrary([tmp_path / "one", tmp_path / "two"]).resolve("dup")
    assert str(first) in str(raised.value) and str(second) in str(raised.value)
    with pytest.raises(LoraLibraryError, match="ambiguous"):  # same folder, two suffixes
        (tmp_path / "one" / "dup.pt").write_bytes(b"x")
        LoraLibrary([tmp_path / "one"]).resolve("dup")


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(LoraLibraryError, match="does not exist"):
        LoraLibrary([tmp_path / "nope"]).resolve("x")


# --- block weights through the merge --------------------------------------------------------------------------


def test_preset_equals_per_block_manual_scaling(tmp_path, sd1):
    path = write_lora(tmp_path / "char.safetensors", sd1, kind="locon")
    library = LoraLibrary([tmp_path])
    network = load_network(path)
    base = weights(sd1)
    merged = applied_weights(sd1, "a cat <lora:char:0.7:0.8:NCNF>", library)
    table = BOOK.resolve("NCNF", "sd1")
    seen_blocks: set[str] = set()
    checked_te = 0
    for key, module in network.modules.items():
        target = sd1.lookup(key)
        if target.root == "unet":
            factor = 0.8 * table.get(target.block, 1.0)
            seen_blocks.add(target.block)
        else:
            factor = 0.7 * table["BASE"]
            checked_te += 1
        expected = base[target.key] + module.delta_weight(base[target.key], 1.0) * factor
        torch.testing.assert_close(merged[target.key], expected, rtol=1e-5, atol=1e-6)
    assert checked_te > 0
    assert {b for b in seen_blocks if table.get(b) == 0.0} and {b for b in seen_blocks if table.get(b) == 1.0}
    assert all(torch.equal(t.weight, base[t.key]) for t in sd1.targets())  # restored


def test_none_leaves_every_weight_but_unblocked_parts(tmp_path, sd1):
    write_lora(tmp_path / "char.safetensors", sd1, kind="locon")
    network = load_network(tmp_path / "char.safetensors")
    base = weights(sd1)
    merged = applied_weights(sd1, "<lora:char:1:NONE>", LoraLibrary([tmp_path]))
    unblocked = {sd1.lookup(k).key for k in network.modules if sd1.lookup(k).block in (*UNBLOCKED_PARTS, None)}
    # kohya's default targets (attention, ResBlocks, samplers) put nothing on time_embed/label_emb/out, so the
    # documented rule (those keep weight 1) has nothing to change here: every weight, TE too (BASE=0), is identical
    assert not unblocked
    changed = [key for key, value in merged.items() if not torch.equal(value, base[key])]
    assert changed == []
    assert applied_weights(sd1, "<lora:char:1>", LoraLibrary([tmp_path])).keys() == base.keys()


def test_unblocked_parts_keep_weight_one_under_none(tmp_path, sd1):
    """The documented rule itself: a module on time_embed keeps the call's UNet multiplier under NONE."""
    tensors = random_lora_state_dict(sd1, kind="locon", seed=3)
    time_embed = next(t for t in sd1.targets() if t.block == "time_embed" and len(t.shape) == 2)
    generator = torch.Generator().manual_seed(0)
    rows, cols = time_embed.shape
    tensors[f"{time_embed.key}.lora_up.weight"] = torch.randn(rows, 2, generator=generator) * 0.1
    tensors[f"{time_embed.key}.lora_down.weight"] = torch.randn(2, cols, generator=generator) * 0.1
    tensors[f"{time_embed.key}.alpha"] = torch.tensor(2.0)
    save_lora_file(tmp_path / "te.safetensors", tensors, {"ss_base_model_version": "sd_v1"})
    base = weights(sd1)
    merged = applied_weights(sd1, "<lora:te:1:0.5:NONE>", LoraLibrary([tmp_path]))
    changed = [key for key, value in merged.items() if not torch.equal(value, base[key])]
    assert changed == [time_embed.key]
    module = load_network(tmp_path / "te.safetensors").modules[time_embed.key]
    expected = base[time_embed.key] + module.delta_weight(base[time_embed.key], 0.5)
    torch.testing.assert_close(merged[time_embed.key], expected, rtol=1e-5, atol=1e-6)


def test_two_loras_with_two_presets_each_get_their_own(tmp_path, sd1):
    write_lora(tmp_path / "a.safetensors", sd1, seed=1)
    write_lora(tmp_path / "b.safetensors", sd1, seed=2)
    calls = parse_prompt("x <lora:a:1:CHAR> y <lora:b:0.5:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1>")[1]
    applied = resolve_calls(calls, LoraLibrary([tmp_path]), BOOK, "sd1")
    assert [a.name for a in applied] == ["a", "b"]
    assert applied[0].block_weights == {k: v for k, v in BOOK.resolve("CHAR", "sd1").items() if k != "BASE"}
    assert applied[1].block_weights["OUT11"] == 1.0 and applied[1].block_weights["IN01"] == 0.0
    assert (applied[0].te_multiplier, applied[1].te_multiplier) == (1.0, 0.5)
    assert applied[0].block_weights != applied[1].block_weights


def test_base_scales_the_text_encoders_and_no_blocks_means_none(tmp_path, sd1):
    write_lora(tmp_path / "a.safetensors", sd1)
    calls = parse_prompt("<lora:a:0.6:0.9:0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1> <lora:a:0.6:0.9>")[1]
    with_blocks, plain = resolve_calls(calls, LoraLibrary([tmp_path]), BOOK, "sd1")
    assert with_blocks.te_multiplier == pytest.approx(0.3) and with_blocks.unet_multiplier == 0.9
    assert plain.te_multiplier == 0.6 and plain.unet_multiplier == 0.9 and dict(plain.block_weights) == {}
    assert with_blocks.identity == plain.identity


def test_user_presets_are_used(tmp_path, sd1):
    write_lora(tmp_path / "a.safetensors", sd1)
    book = BOOK.merge(PresetBook.parse_preset_text("MINE:1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1"))
    (applied,) = resolve_calls(parse_prompt("<lora:a:1:MINE>")[1], LoraLibrary([tmp_path]), book, "sd1")
    assert applied.block_weights["OUT11"] == 1.0 and applied.block_weights["OUT10"] == 0.0


def test_sd1_vector_or_preset_on_sdxl_is_an_error(tmp_path, sdxl):
    write_lora(tmp_path / "xl.safetensors", sdxl, arch="sdxl")
    library = LoraLibrary([tmp_path])
    for spec in ("FACE", "INS", ",".join(["1"] * 17)):
        with pytest.raises(BlockWeightError, match="SD1"):
            resolve_calls(parse_prompt(f"<lora:xl:1:{spec}>")[1], library, BOOK, "sdxl")
    (ok,) = resolve_calls(parse_prompt("<lora:xl:1:NCNF>")[1], library, BOOK, "sdxl")
    assert (ok.block_weights["OUT05"], ok.block_weights["OUT00"]) == (1.0, 0.0) and "OUT11" not in ok.block_weights


def test_bad_preset_name_suggests(tmp_path, sd1):
    write_lora(tmp_path / "a.safetensors", sd1)
    with pytest.raises(BlockWeightError, match="did you mean NCNF"):
        resolve_calls(parse_prompt("<lora:a:1:NCNG>")[1], LoraLibrary([tmp_path]), BOOK, "sd1")


@pytest.mark.parametrize("tag", ["<lora:a:1:start=3>", "<lora:a:1:stop=0.5>", "<lora:a:1:NCNF:start=2:stop=9>"])
def test_step_window_needs_a_caller_that_gates_steps(tmp_path, sd1, tag):
    write_lora(tmp_path / "a.safetensors", sd1)
    calls = parse_prompt(tag)[1]
    with pytest.raises(NotSupportedYetError, match="start=/stop=.*switches weights between steps"):
        resolve_calls(calls, LoraLibrary([tmp_path]), BOOK, "sd1")
    (applied,) = resolve_calls(calls, LoraLibrary([tmp_path]), BOOK, "sd1", step_windows=True)
    assert applied.unet_multiplier == 1.0


def test_sdxl_lora_on_sd1_model_is_an_error(tmp_path, sd1, sdxl):
    write_lora(tmp_path / "xl.safetensors", sdxl, arch="sdxl")
    with pytest.raises(LoraArchMismatchError, match="SDXL.*SD1"):
        resolve_calls(parse_prompt("<lora:xl:1>")[1], LoraLibrary([tmp_path]), BOOK, "sd1")
    assert issubclass(LoraArchMismatchError, LoraStudioError)


def test_each_file_is_loaded_once(tmp_path, sd1):
    write_lora(tmp_path / "a.safetensors", sd1)
    loads: list[Path] = []

    def loader(path: Path):
        loads.append(path)
        return load_network(path)

    calls = parse_prompt("<lora:a:1:CHAR> <lora:a:0.5:NCNF>")[1]
    first, second = resolve_calls(calls, LoraLibrary([tmp_path]), BOOK, "sd1", loader=loader)
    assert len(loads) == 1 and first.modules is second.modules


def test_format_block_weights_records_what_was_applied():
    calls = parse_prompt("<lora:a:0.8:NCNF> <lora:b:0.5:0.25> <lora:c:1:1:1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1>")[1]
    line = format_block_weights(calls)
    assert line == ('Lora block weights: "a: te=0.8, unet=0.8, blocks=NCNF; b: te=0.5, unet=0.25; '
                    'c: te=1, unet=1, blocks=1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1"')
    windows = parse_prompt("<lora:a:1:start=1> <lora:b:1:start=0.5:stop=1.0>")[1]
    assert format_block_weights(windows) == ('Lora block weights: "a: te=1, unet=1, start=1; '
                                             'b: te=1, unet=1, start=0.5, stop=1.0"')
    assert format_block_weights([]) == ""
