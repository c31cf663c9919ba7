"""The Block Weight tab's Save as LoRA on the installed gradio: the button is built and wired, the handler writes the
block-weighted file into the LoRA folder (equal at 1.0 to the tag it replaces), replaces only with Overwrite and
keeps the old file, and refuses bad names, R/U/X and names another folder holds, as status messages."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from lib_lora.blocks.presets import PresetBook
from lib_lora.errors import LoraStudioError
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import save_lora_file
from lib_lora.networks.loaded import as_applied, load_network
from lib_lora.networks.metadata import LoraMetadata
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.networks.tools.checkpoint import checkpoint_index
from lib_lora.tiny.checkpoint import tiny_sd1_checkpoint_state_dict
from lib_lora.ui import StudioContext
from lib_lora.ui.blocks.editor import BlockEditor
from lib_lora.ui.blocks.save import BlockSaver, output_name
from lib_lora.ui.blocks.tab import build_blocks_tab
from lib_lora.ui.compat import event_functions
from lib_lora.ui.wiring import bound

pytestmark = pytest.mark.hostcompat


@pytest.fixture(scope="module")
def sd1_model():
    tensors = tiny_sd1_checkpoint_state_dict(0)
    return tensors, checkpoint_index(tensors, "sd1")


@pytest.fixture()
def saver(tmp_path: Path, sd1_model) -> BlockSaver:
    _, index = sd1_model
    (tmp_path / "more").mkdir()
    context = StudioContext.for_folder(lambda: None, tmp_path, lora_dirs=[tmp_path / "more"])
    folder = context.lora_dirs()[0]
    state = random_lora_state_dict(index, kind="locon", rank=2, seed=5, roots=("unet", "te1"))
    save_lora_file(folder / "style.safetensors", state,
                   LoraMetadata(arch="sd1", network_dim=2, network_alpha=2.0).to_metadata())
    return BlockSaver(context, BlockEditor(lambda: context.presets_file))


def _save(saver: BlockSaver, name: str = "style_ncnf", *, vector: str = "NCNF", overwrite: bool = False,
          weight: float = 0.8) -> dict:
    return saver.save("style", weight, vector, "NCNF", "sd1", name, overwrite, "")


def test_the_tab_has_the_button_wired():
    def untouched():
        raise AssertionError("read while building")

    context = StudioContext(host_provider=untouched, lora_dirs=untouched, trained_dir=untouched, data_roots=untouched,
                            tagger_dir=untouched, work_dir=untouched)
    with gr.Blocks() as blocks, gr.Tabs():
        build_blocks_tab(context)
    ids = {c["props"].get("elem_id") for c in blocks.config["components"]}
    assert {"lora_studio_blocks_save_lora", "lora_studio_blocks_save_lora_name",
            "lora_studio_blocks_save_lora_overwrite"} <= ids
    assert "block_weight_save" in {fn.__name__ for fn in event_functions(blocks)}


def test_save_writes_the_block_weighted_file_equal_to_the_tag(saver, sd1_model):
    updates = _save(saver)
    folder = saver.context.lora_dirs()[0]
    out = folder / "style_ncnf.safetensors"
    assert out.is_file()
    assert "`<lora:style_ncnf:1>`" in updates["status"] and "`<lora:style:0.8:NCNF>`" in updates["status"]
    assert "style_ncnf" in updates["lora"]["choices"]
    tensors, index = sd1_model
    weights = PresetBook.builtin().get("NCNF", "sd1")
    original = as_applied(load_network(folder / "style.safetensors"), te_multiplier=0.8 * weights["BASE"],
                          unet_multiplier=0.8, block_weights={b: w for b, w in weights.items() if b != "BASE"})
    results = []
    for applied in (original, as_applied(load_network(out))):
        with WeightMerger(index).applied([applied]):
            results.append({n: t.clone() for n, t in tensors.items()})
    assert max(float((results[0][n] - results[1][n]).abs().max()) for n in tensors) <= 1e-6


def test_overwrite_is_needed_and_keeps_the_old_file(saver):
    _save(saver)
    with pytest.raises(LoraStudioError, match="tick Overwrite"):
        _save(saver, vector="ALL")
    updates = _save(saver, vector="ALL", overwrite=True)
    assert "kept in .lora_studio_backup" in updates["status"]
    backups = list((saver.context.lora_dirs()[0] / ".lora_studio_backup").iterdir())
    assert [b.name.startswith("style_ncnf.") and b.name.endswith(".safetensors.bak") for b in backups] == [True]


def test_refusals_are_status_messages(saver, tmp_path):
    source = saver.context.lora_dirs()[0] / "style.safetensors"
    (tmp_path / "more" / "taken.safetensors").write_bytes(source.read_bytes())
    handler = bound(saver.save, {"status": "status", "lora": "lora"}, tab="Block Weight")
    cases = [
        (("style", 1.0, "NCNF", "NCNF", "sd1", "", False, ""), "type a name"),
        (("style", 1.0, "NCNF", "NCNF", "sd1", "../up", False, ""), "path separator"),
        (("style", 1.0, "NCNF", "NCNF", "sd1", "taken", False, ""), "already exists at"),
        (("style", 1.0, "NCNF", "NCNF", "sd1", "style", True, ""), "refusing to overwrite an input"),
        (("style", 1.0, "R,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1", "NCNF", "sd1", "r", False, ""), "R, U and X"),
        ((None, 1.0, "NCNF", "NCNF", "sd1", "x", False, ""), "pick a LoRA"),
    ]
    for args, message in cases:
        status = handler(*args)["status"]
        assert status.startswith("**Error:**") and message in status.replace("\\", ""), (message, status)
    assert sorted(p.name for p in saver.context.lora_dirs()[0].iterdir()) == ["style.safetensors"]


def test_output_name_drops_the_ending():
    assert output_name(" my_lora.safetensors ") == "my_lora"
    assert output_name("plain") == "plain"
