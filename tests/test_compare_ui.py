"""The Train tab's "Choose an epoch" panel without a browser: it builds under gradio 3.41 and 4.x with prefixed
element ids, fills itself from the finished run, compares, shows the recommendation and the loader check, keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from train_run_helpers import TRIGGER, make_pattern_dataset, tiny_config

from lib_lora.train.errors import ConfigError
from lib_lora.ui.context import StudioContext
from lib_lora.ui.train.compare import PREFIX, ComparePanel, build_compare_panel
from lib_lora.ui.train.session import TrainSession, TrainUIError

hostcompat = pytest.mark.hostcompat


@hostcompat
def test_the_panel_builds_with_prefixed_ids(tmp_path):
    import gradio as gr

    context = StudioContext.for_folder(lambda: None, tmp_path)
    with gr.Blocks() as blocks:
        with gr.Tabs():
            with gr.Tab("Train") as tab:
                build_compare_panel(TrainSession(context), tab)
    ids = [getattr(block, "elem_id", None) for block in blocks.blocks.values()]
    ids = [elem_id for elem_id in ids if elem_id]
    assert f"{PREFIX}_run" in ids and f"{PREFIX}_keep" in ids and f"{PREFIX}_grid" in ids
    assert all(elem_id.startswith(PREFIX) for elem_id in ids)


@hostcompat
def test_without_a_run_or_files_the_panel_says_what_to_do(tmp_path):
    panel = ComparePanel(TrainSession(StudioContext.for_folder(lambda: None, tmp_path)))
    with pytest.raises(TrainUIError, match="No finished run"):
        panel.use_run()
    with pytest.raises(TrainUIError, match="Compare the files first"):
        panel.keep("x.safetensors")
    with pytest.raises(TrainUIError, match="not a LoRA file"):
        list(panel.compare(["../x.safetensors"], "", "", "zq", "1", "0", "64", "64", "best"))
    with pytest.raises(ConfigError, match="seed"):
        list(panel.compare([], "", "", "zq", "1", "x", "64", "64", "best"))


def last(updates: Any) -> dict[str, Any]:
    """Every update of a generator handler merged, later values winning."""
    merged: dict[str, Any] = {}
    for update in updates:
        merged.update(update)
    return merged


def test_the_finished_run_is_compared_and_the_recommended_file_kept(tmp_path):
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host
    from lib_lora.train.loop import TrainRun

    host = load_diffusers_host("tiny")
    context = StudioContext.for_folder(lambda: host, tmp_path)
    data = make_pattern_dataset(tmp_path / "datasets", count=2)
    (tmp_path / "train").mkdir()
    prompts = tmp_path / "train" / "tinylora-prompts.txt"
    prompts.write_text(f"{TRIGGER} --s 1\n", encoding="utf-8")
    config = tiny_config(data, context.trained_dir(), max_train_epochs=4, save_every_n_epochs=1, train_batch_size=2,
                         network_train_unet_only=True, sample_prompts=str(prompts), resolution="64")
    session = TrainSession(context, poll_seconds=0.05)
    session.run = TrainRun(config, host, output_dir=context.trained_dir())
    session.run.run()
    panel = ComparePanel(session, poll_seconds=0.05)

    filled = panel.use_run()
    assert filled["files"]["value"] == ["tinylora-000001.safetensors", "tinylora-000002.safetensors",
                                        "tinylora-000003.safetensors", "tinylora.safetensors"]
    assert (filled["data"], filled["prompts"], filled["width"]) == (str(data), f"{TRIGGER} --s 1", "64")
    assert filled["result"].startswith("**Loader check:** every key of every file applies in")
    shown = last(panel.compare(filled["files"]["value"], filled["data"], "", filled["prompts"], "1", "0",
                               filled["width"], filled["height"], "none"))
    assert "Recommended" in shown["status"] and shown["grid"].height > 4 * 64
    assert "**Loader check:** every key of every file applies in diffusers, A1111 1.10, Forge Neo, ComfyUI" \
        in shown["result"]
    assert "not scored: validation loss" in shown["result"]  # this run measured none
    best = shown["keep_pick"]["value"]
    kept = panel.keep(best)
    assert "3 other LoRA files (with their cards) moved into" in kept["status"]
    assert "Nothing was deleted" in kept["status"]
    folder = context.trained_dir()
    chosen = "tinylora-000004" if best == "tinylora.safetensors" else best.removesuffix(".safetensors")
    moved = [f"epochs/tinylora-00000{epoch}.safetensors" for epoch in (1, 2, 3, 4)
             if f"tinylora-00000{epoch}" != chosen]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors")) == sorted(
        [*moved, "tinylora.safetensors"])
    assert kept["files"]["choices"] == panel.file_choices()
    with pytest.raises(TrainUIError, match="Compare the files first"):
        panel.keep(best)  # the files moved: a second keep needs a new comparison


@hostcompat
def test_unmatched_keys_are_listed(tmp_path):
    from lib_lora.networks.loaders import KeyFailure, LoaderCheck, LoaderReport
    from lib_lora.train.compare import CompareFile
    from lib_lora.train.compare.run import FileRow
    from lib_lora.ui.train.compare import loader_lines

    failures = tuple(KeyFailure(f"lora_unet_foreign_{i}.lora_up.weight", "unknown module") for i in range(12))
    report = LoaderReport("a1111", "A1111 1.10", "sd1", 20, 8, failures)
    row = FileRow(CompareFile(Path("x.safetensors")), None, (), loaders=LoaderCheck("sd1", (report,)))
    lines = loader_lines([row])
    assert "8 of 20 keys applied" in lines[1] and "lora\\_unet\\_foreign\\_0" not in "".join(lines)
    assert "`lora_unet_foreign_0.lora_up.weight`: unknown module" in "\n".join(lines)
    assert lines[-1] == "  - … and 2 more"
