"""The Block Weight tab: pick a LoRA, set per-block strengths (presets, sliders, vector), generate, compare.

Layout and wiring only; the handlers live in blocks_picker (LoRA list, metadata), blocks_editor (sliders,
presets, vector box, tag), blocks_runs (image, XY grid, analyzer: each a job with a progress bar and Cancel) and
blocks_save (the picked LoRA saved with its block weights baked in).
Handlers return {name: value} dicts; `wiring.bound` maps them to components and turns a LoraStudioError into the
status line, so no stack trace reaches the page. Nothing is read while building: the model, folders and presets
are read by events (tab select, Refresh), which also fit steps and size to the model the first time they see it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from ...blocks.analyze import DEFAULT_THRESHOLD, THRESHOLD_HELP
from ...blocks.grid import AXIS_HELP
from ...blocks.presets import PresetBook
from ..context import StudioContext
from ..wiring import wire
from .editor import DEFAULT_PRESET, SLIDER_KEYS, SLIDER_RANGE, BlockEditor, BlockLayout, vector_text
from .picker import LoraPicker
from .runs import BlockRuns
from .save import BlockSaver

TAB_ID = "lora_studio_blocks"
STATUS = (
    "Per-block LoRA strengths: pick a LoRA, load a preset or move the sliders, and copy the tag — "
    "`<lora:name:0.8:NCNF>` works in prompts. Compare presets, strengths, LoRAs, seeds or each block in an XY "
    "grid, and find the blocks a LoRA acts in with the analyzer."
)
DEFAULT_X = "preset: NONE, ALL, CHAR, NCNF"
DEFAULT_Y = "strength: 0.5, 1"
SLIDERS_PER_ROW = 6
ANALYZER_HEADERS = ["rank", "block", "changed"]
VECTOR_LABEL = ("Block weights (press Enter to apply): numbers, a preset's name, or LBW's R (random 0…1), "
                "U (random −0.5…1.5) and X (1, or the grid's x values)")
IMAGE_HEIGHT = 384
SAVE_LORA_LABEL = "Save as LoRA: a new file in the LoRA folder that, at 1, equals the tag above"

Component = Any


def _wire(listener: Callable[..., Any], fn: Callable[..., Any], inputs: list[Component],
          outputs: Mapping[str, Component], **options: Any) -> Any:
    return wire(listener, fn, inputs, outputs, tab='Block Weight', **options)


def build_blocks_tab(context: StudioContext) -> gr.Tab:
    """Add the Block Weight tab to the current `gr.Tabs` and return it (for its `select` event)."""
    editor = BlockEditor(lambda: context.presets_file)
    picker = LoraPicker(context, editor)
    runs = BlockRuns(context, editor)
    initial = BlockLayout("sd1", 17)
    c: dict[str, Component] = {}

    with gr.Tab("Block Weight", id=TAB_ID, elem_id="lora_studio_blocks_tab") as tab:
        c["status"] = gr.Markdown(STATUS, elem_id="lora_studio_blocks_status", elem_classes=["lora-studio-status"])
        c["arch"] = gr.State(initial.arch)
        with gr.Row(elem_id="lora_studio_blocks_top"):
            _build_picker_column(c)
            _build_editor_column(c, initial)
        _build_settings(c)
        _build_generate(c)
        _build_grid(c)
        _build_analyzer(c)

    _wire_editor(c, editor, picker, runs, tab)
    _wire_runs(c, runs)
    saver = BlockSaver(context, editor)
    _wire(c["save_lora"].click, saver.save,
          [c[n] for n in ("lora", "weight", "vector", "preset", "arch", "save_lora_name", "save_lora_overwrite",
                          "search")], _pick(c, "status", "lora"))
    return tab


def _build_picker_column(c: dict[str, Component]) -> None:
    """The left column: find and pick a LoRA, its strength and tag, and save it with its block weights baked in."""
    with gr.Column(scale=1, min_width=280):
        c["search"] = gr.Textbox(label="Search LoRAs", placeholder="part of a name",
                                 elem_id="lora_studio_blocks_search")
        with gr.Row(equal_height=True):
            c["lora"] = gr.Dropdown(label="LoRA", choices=[], value=None, elem_id="lora_studio_blocks_lora",
                                    scale=4)
            c["refresh"] = gr.Button("Refresh", elem_id="lora_studio_blocks_refresh", size="sm", scale=1,
                                     min_width=80)
        c["lora_info"] = gr.Markdown("", elem_id="lora_studio_blocks_lora_info")
        c["weight"] = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="Strength",
                                elem_id="lora_studio_blocks_weight")
        c["tag"] = gr.Textbox(label="Tag for the prompt", interactive=False, show_copy_button=True,
                              elem_id="lora_studio_blocks_tag")
        with gr.Row(equal_height=True):
            c["save_lora_name"] = gr.Textbox(label=SAVE_LORA_LABEL, placeholder="NAME", scale=3,
                                             elem_id="lora_studio_blocks_save_lora_name")
            c["save_lora_overwrite"] = gr.Checkbox(label="Overwrite", value=False, scale=1,
                                                   elem_id="lora_studio_blocks_save_lora_overwrite")
        c["save_lora"] = gr.Button("Save as LoRA…", elem_id="lora_studio_blocks_save_lora")


def _build_editor_column(c: dict[str, Component], initial: BlockLayout) -> None:
    """The right column: preset, vector box, one slider per block (laid out for `initial`), save/delete preset."""
    with gr.Column(scale=2, min_width=400):
        with gr.Row(equal_height=True):
            c["preset"] = gr.Dropdown(label="Preset", choices=PresetBook.builtin().names("sd1"),
                                      value=DEFAULT_PRESET, elem_id="lora_studio_blocks_preset", scale=2)
            c["full"] = gr.Checkbox(label="Every block (26 values SD1/SD2, 20 SDXL; LyCORIS/LoCon)",
                                    value=False, elem_id="lora_studio_blocks_full", scale=2)
        c["vector"] = gr.Textbox(label=VECTOR_LABEL, value=vector_text([1.0] * initial.length),
                                 elem_id="lora_studio_blocks_vector")
        c["vector_note"] = gr.Markdown("", elem_id="lora_studio_blocks_vector_note")
        low, high, step = SLIDER_RANGE
        for start in range(0, len(SLIDER_KEYS), SLIDERS_PER_ROW):
            with gr.Row(elem_classes=["lora-studio-blocks-sliders"]):
                for index in range(start, min(start + SLIDERS_PER_ROW, len(SLIDER_KEYS))):
                    shown = index < initial.length
                    c[SLIDER_KEYS[index]] = gr.Slider(
                        low, high, value=1.0 if shown else 0.0, step=step,
                        label=initial.blocks[index] if shown else f"block {index}", visible=shown,
                        min_width=100, elem_id=f"lora_studio_blocks_{SLIDER_KEYS[index]}")
        with gr.Row(equal_height=True):
            c["preset_name"] = gr.Textbox(label="Save as preset", placeholder="NAME",
                                          elem_id="lora_studio_blocks_preset_name", scale=2)
            c["overwrite"] = gr.Checkbox(label="Overwrite", value=False,
                                         elem_id="lora_studio_blocks_overwrite", scale=1)
            c["save"] = gr.Button("Save preset", elem_id="lora_studio_blocks_save", scale=1)
            c["delete"] = gr.Button("Delete preset", elem_id="lora_studio_blocks_delete", scale=1)


def _build_settings(c: dict[str, Component]) -> None:
    with gr.Row(elem_id="lora_studio_blocks_prompts"):
        c["prompt"] = gr.Textbox(label="Prompt (the LoRA tag is added)", lines=2, elem_id="lora_studio_blocks_prompt")
        c["negative"] = gr.Textbox(label="Negative prompt", lines=2, elem_id="lora_studio_blocks_negative")
    with gr.Row(elem_id="lora_studio_blocks_settings"):
        c["seed"] = gr.Number(label="Seed", value=0, precision=0, elem_id="lora_studio_blocks_seed", min_width=90)
        c["steps"] = gr.Number(label="Steps", value=20, precision=0, elem_id="lora_studio_blocks_steps", min_width=90)
        c["cfg"] = gr.Number(label="CFG scale", value=7.0, elem_id="lora_studio_blocks_cfg", min_width=90)
        c["width"] = gr.Number(label="Width", value=512, precision=0, elem_id="lora_studio_blocks_width", min_width=90)
        c["height"] = gr.Number(label="Height", value=512, precision=0, elem_id="lora_studio_blocks_height",
                                min_width=90)
        c["random_seed"] = gr.Number(label="Seed for R and U (-1: new)", value=-1, precision=0,
                                     elem_id="lora_studio_blocks_random_seed", min_width=90)
    c["settings_note"] = gr.Markdown("", elem_id="lora_studio_blocks_settings_note")
    c["settings_for"] = gr.State("")


def _build_generate(c: dict[str, Component]) -> None:
    with gr.Accordion("Generate", open=True, elem_id="lora_studio_blocks_generate_panel"):
        with gr.Row(equal_height=True):
            c["generate"] = gr.Button("Generate", variant="primary", elem_id="lora_studio_blocks_generate", scale=3)
            c["image_cancel"] = gr.Button("Cancel", elem_id="lora_studio_blocks_image_cancel", scale=1)
        c["image_progress"] = gr.Markdown("", elem_id="lora_studio_blocks_image_progress")
        with gr.Row():
            c["image"] = gr.Image(label="Image", type="pil", interactive=False, height=IMAGE_HEIGHT,
                                  elem_id="lora_studio_blocks_image")
            c["infotext"] = gr.Textbox(label="Parameters", lines=6, interactive=False,
                                       elem_id="lora_studio_blocks_infotext")


def _build_grid(c: dict[str, Component]) -> None:
    with gr.Accordion("XY grid", open=True, elem_id="lora_studio_blocks_grid_panel"):
        gr.Markdown(f"Axes: {AXIS_HELP}. Leave Y empty for one row. Values not on an axis come from the picker "
                    "and the sliders; block-only and block-off start from the sliders' weights.",
                    elem_id="lora_studio_blocks_grid_help")
        with gr.Row(equal_height=True):
            c["x_axis"] = gr.Textbox(label="X axis", value=DEFAULT_X, elem_id="lora_studio_blocks_x_axis", scale=3)
            c["y_axis"] = gr.Textbox(label="Y axis", value=DEFAULT_Y, elem_id="lora_studio_blocks_y_axis", scale=3)
            c["grid_run"] = gr.Button("Run grid", variant="primary", elem_id="lora_studio_blocks_grid_run", scale=1)
            c["grid_cancel"] = gr.Button("Cancel", elem_id="lora_studio_blocks_grid_cancel", scale=1)
        c["grid_progress"] = gr.Markdown("", elem_id="lora_studio_blocks_grid_progress")
        c["grid_image"] = gr.Image(label="XY grid", type="pil", interactive=False,
                                   elem_id="lora_studio_blocks_grid_image")
        c["grid_path"] = gr.Textbox(label="Saved to", interactive=False, elem_id="lora_studio_blocks_grid_path")


def _build_analyzer(c: dict[str, Component]) -> None:
    with gr.Accordion("Effective block analyzer", open=False, elem_id="lora_studio_blocks_analyzer_panel"):
        gr.Markdown("Renders the prompt without the LoRA, with every block on, and with each block off in turn "
                    "(same seed); ranks the blocks by the pixels that change. The format follows the "
                    "'Every block' box.", elem_id="lora_studio_blocks_analyzer_help")
        with gr.Row(equal_height=True):
            c["threshold"] = gr.Number(label="Threshold", value=DEFAULT_THRESHOLD, precision=0, info=THRESHOLD_HELP,
                                       elem_id="lora_studio_blocks_threshold", scale=2)
            c["analyzer_run"] = gr.Button("Analyze blocks", variant="primary",
                                          elem_id="lora_studio_blocks_analyzer_run", scale=1)
            c["analyzer_cancel"] = gr.Button("Cancel", elem_id="lora_studio_blocks_analyzer_cancel", scale=1)
        c["analyzer_progress"] = gr.Markdown("", elem_id="lora_studio_blocks_analyzer_progress")
        with gr.Row():
            c["analyzer_table"] = gr.Dataframe(headers=ANALYZER_HEADERS, datatype=["str", "str", "str"],
                                               interactive=False, elem_id="lora_studio_blocks_analyzer_table")
            c["analyzer_image"] = gr.Image(label="Blocks", type="pil", interactive=False,
                                           elem_id="lora_studio_blocks_analyzer_image")
        c["analyzer_path"] = gr.Textbox(label="Saved to", interactive=False,
                                        elem_id="lora_studio_blocks_analyzer_path")


def _pick(c: Mapping[str, Component], *names: str) -> dict[str, Component]:
    return {name: c[name] for name in names}


def _wire_editor(c: dict[str, Component], editor: BlockEditor, picker: LoraPicker, runs: BlockRuns,
                 tab: gr.Tab) -> None:
    sliders = [c[key] for key in SLIDER_KEYS]
    shown = _pick(c, *SLIDER_KEYS, "full", "vector", "vector_note", "tag", "status")
    refresh_outputs = {**shown, **_pick(c, "arch", "lora", "preset", "lora_info", "steps", "width", "height",
                                        "settings_for", "settings_note")}
    refresh_inputs = [c[n] for n in ("search", "lora", "preset", "full", "vector", "weight", "arch", "settings_for")]

    def refresh(*values: Any) -> dict[str, Any]:
        """The picker's refresh, and steps and size fitted to a model the page has not seen yet (one event)."""
        return {**picker.refresh(*values[:-1]), **runs.fit_settings(values[-1])}

    for listener in (tab.select, c["refresh"].click):
        _wire(listener, refresh, refresh_inputs, refresh_outputs)
    _wire(c["search"].submit, picker.search, [c["search"], c["lora"]], _pick(c, "lora", "status"))
    _wire(c["search"].blur, picker.search, [c["search"], c["lora"]], _pick(c, "lora", "status"))
    # `input`: the user's pick only (`change` also fires when the tab's refresh re-sends the list).
    _wire(c["lora"].input, picker.choose, [c[n] for n in ("lora", "weight", "vector", "preset", "arch")],
          _pick(c, "lora_info", "tag", "status"))
    _wire(c["weight"].release, editor.retag, [c[n] for n in ("lora", "weight", "vector", "preset", "arch")],
          _pick(c, "tag", "status"))
    _wire(c["preset"].change, editor.load_preset, [c[n] for n in ("preset", "arch", "full", "lora", "weight")],
          shown)
    slider_inputs = [c[n] for n in ("vector", "arch", "full", "lora", "weight", "preset")] + sliders
    for index, slider in enumerate(sliders):
        _wire(slider.release, editor.slider_handler(index), slider_inputs,
              _pick(c, SLIDER_KEYS[index], "vector", "vector_note", "tag", "status"))
    vector_inputs = [c[n] for n in ("vector", "arch", "full", "lora", "weight", "preset")]
    for listener in (c["vector"].submit, c["vector"].blur):
        _wire(listener, editor.from_vector, vector_inputs, {**shown, "preset": c["preset"]})
    _wire(c["full"].input, editor.switch_format, [c[n] for n in ("full", "vector", "arch", "lora", "weight", "preset")],
          shown)
    _wire(c["save"].click, editor.save_preset, [c[n] for n in ("preset_name", "overwrite", "arch", "vector")],
          _pick(c, "preset", "status"))
    _wire(c["delete"].click, editor.delete_preset, [c["preset"], c["arch"]], _pick(c, "preset", "status"))


SETTINGS = ("prompt", "negative", "seed", "steps", "cfg", "width", "height")


def _wire_runs(c: dict[str, Component], runs: BlockRuns) -> None:
    settings = [c[n] for n in SETTINGS]
    _wire(c["generate"].click, runs.generate,
          [c[n] for n in ("lora", "weight", "vector", "preset", "arch", "random_seed")] + settings,
          _pick(c, "image_progress", "image", "infotext", "status"))
    _wire(c["image_cancel"].click, runs.image_slot.cancel, [], _pick(c, "status"), queue=False)
    _wire(c["grid_run"].click, runs.run_grid,
          [c[n] for n in ("x_axis", "y_axis", "lora", "weight", "vector", "preset", "arch", "random_seed")]
          + settings, _pick(c, "grid_progress", "grid_image", "grid_path", "status"))
    _wire(c["grid_cancel"].click, runs.grid_slot.cancel, [], _pick(c, "status"), queue=False)
    _wire(c["analyzer_run"].click, runs.run_analyzer,
          [c[n] for n in ("lora", "weight", "threshold", "arch", "full")] + settings,
          _pick(c, "analyzer_progress", "analyzer_image", "analyzer_table", "analyzer_path", "status"))
    _wire(c["analyzer_cancel"].click, runs.analyzer_slot.cancel, [], _pick(c, "status"), queue=False)
