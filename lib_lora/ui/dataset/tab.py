"""The Dataset tab: load a folder, tag it with a WD14 tagger, edit the tags (chips, batch edits), save safely.

Layout only; the state is a DatasetSession per page (lib_lora.dataset.editing, no gradio), what is shown is
rendered by views.py and the events are bound by events.py through wiring.py. javascript/lora_studio_dataset.js
turns clicks on our HTML (gallery, chips, frequency table) into JSON actions in the hidden
`lora_studio_dataset_chip_action` box and adds shortcuts (Ctrl+S, Ctrl+Z, Ctrl+Shift+Z / Ctrl+Y) and the
unsaved-changes warning on leaving; without it, the dropdowns, text fields and buttons do the same work.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ...dataset.tagging.tagger import EXISTING_POLICIES, OPTION_HELP
from ..context import StudioContext
from .actions import ADD_POSITIONS, EXCLUDE_MODES, INCLUDE_MODES, REPLACE_SCOPES, SORT_ORDERS
from .events import wire_dataset_tab

TAB_ID = "lora_studio_dataset"
HIDDEN = ["lora-studio-hidden"]
TAG_INPUT: dict[str, Any] = {"elem_classes": ["lora-studio-tag-input"], "max_lines": 1}
"""A one-line text field (an <input>, which can have a list of suggestions) for tags."""


def _id(name: str) -> str:
    return f"lora_studio_dataset_{name}"


def build_dataset_tab(context: StudioContext) -> gr.Tab:
    """Add the Dataset tab to the current `gr.Tabs` and return it; nothing on disk is read until an event."""
    ui: dict[str, Any] = {}
    with gr.Tab("Dataset", id=TAB_ID, elem_id=_id("tab")) as tab:
        state = gr.State(None)
        _folder_row(ui)
        ui["message"] = gr.Markdown("", elem_id=_id("message"))
        with gr.Row(equal_height=True):
            ui["status"] = gr.HTML("", elem_id=_id("unsaved"))
            for name, label, variant in (("save", "Save", "primary"), ("save_cancel", "Cancel save", "secondary"),
                                         ("revert", "Revert", "secondary"), ("undo", "Undo", "secondary"),
                                         ("redo", "Redo", "secondary")):
                ui[name] = gr.Button(label, variant=variant, elem_id=_id(name), scale=0, min_width=80)
        ui["conflicts"] = gr.HTML("", elem_id=_id("conflicts"))
        with gr.Row(visible=False) as ui["conflict_row"]:
            ui["overwrite"] = gr.Button("Overwrite them with my edits", elem_id=_id("overwrite"))
            ui["reload_conflicts"] = gr.Button("Reload them from disk", elem_id=_id("reload"))
        _tagger_panel(ui)
        with gr.Accordion("Folder: subfolders, repeats and problems", open=False):
            ui["summary"] = gr.Markdown("", elem_id=_id("summary"))
            ui["problems"] = gr.HTML("", elem_id=_id("problems"))
            with gr.Row(equal_height=True):
                ui["subset"] = gr.Dropdown([], label="Subfolder", elem_id=_id("subset"))
                ui["repeats"] = gr.Number(1, label="Repeats", precision=0, minimum=1, elem_id=_id("repeats"))
                ui["rename"] = gr.Button("Rename to <repeats>_<name>", elem_id=_id("rename"), scale=0)
        with gr.Row():
            with gr.Column(scale=3):
                _filter_row(ui)
                ui["gallery"] = gr.HTML("", elem_id=_id("gallery"))
                with gr.Row(equal_height=True):
                    ui["page_prev"] = gr.Button("◀ Page", elem_id=_id("page_prev"), scale=0, min_width=80)
                    ui["page"] = gr.Markdown("", elem_id=_id("page"))
                    ui["page_next"] = gr.Button("Page ▶", elem_id=_id("page_next"), scale=0, min_width=80)
            with gr.Column(scale=2):
                _editor(ui)
        with gr.Accordion("Tag frequency (click a tag to filter by it)", open=True):
            with gr.Row(equal_height=True):
                ui["frequency_search"] = gr.Textbox(label="Search tags", elem_id=_id("frequency_search"), scale=4)
                ui["frequency_prev"] = gr.Button("◀ Tags", elem_id=_id("frequency_prev"), scale=0, min_width=80)
                ui["frequency_next"] = gr.Button("Tags ▶", elem_id=_id("frequency_next"), scale=0, min_width=80)
            ui["frequency"] = gr.HTML("", elem_id=_id("frequency"))
        _batch_panel(ui)
        _consolidation_panel(ui)
        ui["caption_key"] = gr.Textbox("", elem_id=_id("caption_key"), elem_classes=HIDDEN, show_label=False)
        ui["action"] = gr.Textbox("", elem_id=_id("chip_action"), elem_classes=HIDDEN, show_label=False)
    wire_dataset_tab(context, ui, state, tab)
    return tab


def _folder_row(ui: dict[str, Any]) -> None:
    with gr.Row(equal_height=True):
        ui["folders"] = gr.Dropdown([], label="Dataset folders (inside the allowed folders)", scale=3,
                                    elem_id=_id("folders"))
        ui["folders_refresh"] = gr.Button("↻", elem_id=_id("folders_refresh"), scale=0, min_width=50)
        ui["path"] = gr.Textbox(label="Folder", placeholder="a folder inside the allowed folders", scale=4,
                                elem_id=_id("path"))
        ui["caption_ext"] = gr.Textbox(".txt", label="Caption extension", scale=1, elem_id=_id("caption_ext"))
        ui["recursive"] = gr.Checkbox(True, label="Subfolders too", scale=1, elem_id=_id("recursive"))
        ui["load"] = gr.Button("Load", variant="primary", scale=0, min_width=80, elem_id=_id("load"))


def _tagger_panel(ui: dict[str, Any]) -> None:
    with gr.Accordion("Tagger (WD14)", open=True):
        with gr.Row(equal_height=True):
            ui["model"] = gr.Dropdown([], label="Model", info="a folder in the tagger folder, or a known model "
                                      "(downloaded at its pinned revision)", elem_id=_id("tagger_model"), scale=3)
            ui["model_refresh"] = gr.Button("↻", elem_id=_id("tagger_refresh"), scale=0, min_width=50)
            ui["existing"] = gr.Radio(list(EXISTING_POLICIES), value="skip", label="Existing captions",
                                      info=OPTION_HELP["existing"], elem_id=_id("tagger_existing"), scale=3)
        with gr.Row():
            ui["general_threshold"] = gr.Slider(0, 1, 0.35, step=0.01, label="General threshold",
                                                info=OPTION_HELP["general_threshold"], elem_id=_id("general_threshold"))
            ui["character_threshold"] = gr.Slider(0, 1, 0.85, step=0.01, label="Character threshold",
                                                  info=OPTION_HELP["character_threshold"],
                                                  elem_id=_id("character_threshold"))
            ui["max_tags"] = gr.Number(0, label="Max tags", precision=0, minimum=0, info=OPTION_HELP["max_tags"],
                                       elem_id=_id("max_tags"))
            ui["batch_size"] = gr.Textbox("auto", label="Batch size", info=OPTION_HELP["batch_size"],
                                          elem_id=_id("batch_size"))
        with gr.Row():
            for name, label, value in (("general_mcut", "MCut (general)", False),
                                       ("character_mcut", "MCut (character)", False),
                                       ("include_rating", "Rating tag", False),
                                       ("underscores_to_spaces", "Underscores to spaces", True),
                                       ("escape_brackets", "Escape brackets", False)):
                ui[name] = gr.Checkbox(value, label=label, info=OPTION_HELP[name], elem_id=_id(name))
        with gr.Row():
            ui["exclude_tags"] = gr.Textbox(label="Exclude", info=OPTION_HELP["exclude"], elem_id=_id("tagger_exclude"),
                                            **TAG_INPUT)
            ui["trigger_words"] = gr.Textbox(label="Trigger words", info=OPTION_HELP["trigger"],
                                             elem_id=_id("tagger_trigger"))
        with gr.Row(equal_height=True):
            ui["tag_start"] = gr.Button("Tag the loaded dataset", variant="primary", elem_id=_id("tag_start"))
            ui["tag_cancel"] = gr.Button("Cancel", elem_id=_id("tag_cancel"), scale=0, min_width=90)
            ui["tag_unload"] = gr.Button("Free the model", elem_id=_id("tag_unload"), scale=0, min_width=130)
        ui["tag_status"] = gr.HTML("", elem_id=_id("tag_status"))


def _filter_row(ui: dict[str, Any]) -> None:
    with gr.Row(equal_height=True):
        ui["include"] = gr.Textbox(label="Show images with", placeholder="tags, comma-separated", scale=3,
                                   elem_id=_id("include"), **TAG_INPUT)
        ui["include_mode"] = gr.Radio(list(INCLUDE_MODES), value="all (AND)", label="of the tags", scale=2,
                                      elem_id=_id("include_mode"))
        ui["exclude"] = gr.Textbox(label="Hide images with", placeholder="tags, comma-separated", scale=3,
                                   elem_id=_id("exclude"), **TAG_INPUT)
        ui["exclude_mode"] = gr.Radio(list(EXCLUDE_MODES), value="any of them", label="hide when they hold",
                                      scale=2, elem_id=_id("exclude_mode"))
    with gr.Row():
        ui["filter_apply"] = gr.Button("Apply filter", elem_id=_id("filter_apply"), size="sm")
        ui["filter_clear"] = gr.Button("Show all", elem_id=_id("filter_clear"), size="sm")


def _editor(ui: dict[str, Any]) -> None:
    with gr.Row(equal_height=True):
        ui["image_prev"] = gr.Button("◀", elem_id=_id("image_prev"), scale=0, min_width=50)
        ui["image"] = gr.Dropdown([], label="Image", elem_id=_id("image"), scale=5)
        ui["image_next"] = gr.Button("▶", elem_id=_id("image_next"), scale=0, min_width=50)
    ui["preview"] = gr.HTML("", elem_id=_id("preview"))
    ui["chips"] = gr.HTML("", elem_id=_id("chips"))
    with gr.Row(equal_height=True):
        ui["add_tag"] = gr.Textbox(label="Add tags", placeholder="type a tag, Enter adds it", scale=4,
                                   elem_id=_id("add_tag"), **TAG_INPUT)
        ui["add"] = gr.Button("Add", elem_id=_id("add"), scale=0, min_width=70)
    ui["caption"] = gr.Textbox(label="Caption (as saved)", lines=3, elem_id=_id("caption"))
    ui["caption_apply"] = gr.Button("Use this caption", elem_id=_id("caption_apply"), size="sm")
    ui["suggestions"] = gr.HTML("", elem_id=_id("suggestions"))


def _batch_panel(ui: dict[str, Any]) -> None:
    with gr.Accordion("Batch edit (the images in the filter)", open=False):
        ui["scope"] = gr.Markdown("", elem_id=_id("scope"))
        with gr.Row(equal_height=True):
            ui["batch_add_tags"] = gr.Textbox(label="Add tags", scale=3, elem_id=_id("batch_add_tags"),
                                              **TAG_INPUT)
            ui["batch_add_position"] = gr.Radio(list(ADD_POSITIONS), value="back", label="Where", scale=2,
                                                elem_id=_id("batch_add_position"))
            ui["batch_add_index"] = gr.Number(1, label="Position (1 = first)", precision=0, minimum=1, scale=1,
                                              elem_id=_id("batch_add_index"))
            ui["batch_add"] = gr.Button("Add", elem_id=_id("batch_add"), scale=0, min_width=80)
        with gr.Row(equal_height=True):
            ui["batch_remove_tags"] = gr.Textbox(label="Remove tags", scale=3, elem_id=_id("batch_remove_tags"),
                                                 **TAG_INPUT)
            ui["batch_remove"] = gr.Button("Remove", elem_id=_id("batch_remove"), scale=0, min_width=80)
            ui["batch_front_tags"] = gr.Textbox(label="Move to the front", scale=3, elem_id=_id("batch_front_tags"),
                                                **TAG_INPUT)
            ui["batch_front"] = gr.Button("Move", elem_id=_id("batch_front"), scale=0, min_width=80)
        with gr.Row(equal_height=True):
            ui["batch_old"] = gr.Textbox(label="Rename tag", scale=2, elem_id=_id("batch_old"), **TAG_INPUT)
            ui["batch_new"] = gr.Textbox(label="to", scale=2, elem_id=_id("batch_new"), **TAG_INPUT)
            ui["batch_rename"] = gr.Button("Rename", elem_id=_id("batch_rename"), scale=0, min_width=80)
        with gr.Row(equal_height=True):
            ui["batch_find"] = gr.Textbox(label="Find", scale=2, elem_id=_id("batch_find"))
            ui["batch_replacement"] = gr.Textbox(label="Replace with", scale=2, elem_id=_id("batch_replacement"))
            ui["batch_scope"] = gr.Radio(list(REPLACE_SCOPES), value="each tag", label="In", scale=2,
                                         elem_id=_id("batch_scope"))
            ui["batch_regex"] = gr.Checkbox(False, label="Regular expression", scale=1, elem_id=_id("batch_regex"))
            ui["batch_ignore_case"] = gr.Checkbox(False, label="Ignore case", scale=1,
                                                  elem_id=_id("batch_ignore_case"))
            ui["batch_replace"] = gr.Button("Replace", elem_id=_id("batch_replace"), scale=0, min_width=80)
        with gr.Row(equal_height=True):
            ui["batch_sort_order"] = gr.Radio(list(SORT_ORDERS), value="alphabetical", label="Sort", scale=2,
                                              elem_id=_id("batch_sort_order"))
            ui["batch_keep"] = gr.Number(1, label="Keep the first N in place", precision=0, minimum=0, scale=1,
                                         elem_id=_id("batch_keep"))
            ui["batch_reverse"] = gr.Checkbox(False, label="Reverse", scale=1, elem_id=_id("batch_reverse"))
            ui["batch_sort"] = gr.Button("Sort", elem_id=_id("batch_sort"), scale=0, min_width=80)
            ui["batch_dedupe"] = gr.Button("Remove duplicate tags", elem_id=_id("batch_dedupe"), scale=0)


def _consolidation_panel(ui: dict[str, Any]) -> None:
    with gr.Accordion("Consolidate into a trigger word (character LoRA)", open=False):
        gr.Markdown("Physical-feature tags (hair, eyes, horns, …) found in most of the filtered captions are "
                    "folded into the trigger word, so it alone calls them up; clothing, counts such as 1girl and "
                    "directions stay. Review the list, then apply (one Undo).", elem_id=_id("consolidate_help"))
        with gr.Row(equal_height=True):
            ui["trigger"] = gr.Textbox(label="Trigger word", scale=3, elem_id=_id("trigger"))
            ui["min_share"] = gr.Slider(0.05, 1, 0.5, step=0.05, label="In at least this share of the captions",
                                        scale=3, elem_id=_id("min_share"))
            ui["propose"] = gr.Button("Propose", elem_id=_id("propose"), scale=0, min_width=90)
        ui["proposals"] = gr.CheckboxGroup([], label="Tags to fold into the trigger", elem_id=_id("proposals"))
        ui["consolidate"] = gr.Button("Apply to the filtered captions", elem_id=_id("consolidate"))
