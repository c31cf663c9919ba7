"""Which event of the Dataset tab does what: the bindings, each a line from a component to a session action."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from ...dataset.editing import DatasetSession
from ...jobs import Job
from ..context import StudioContext
from ..jobs_ui import follow
from .actions import (
    EXCLUDE_MODES,
    INCLUDE_MODES,
    add_edit,
    dedupe_edit,
    move_to_front_edit,
    remove_edit,
    rename_edit,
    replace_edit,
    run_action,
    sort_edit,
)
from .folders import dataset_folder_choices
from .saving import follow_save
from .tagging import (
    OPTION_NAMES,
    cancel_tagging,
    finish_tagging,
    start_tagging,
    tagger_choices,
    tagger_options,
    tagger_vocabulary,
    unload_tagger,
)
from .wiring import DatasetWiring

TAGGER_INPUTS = ("general_threshold", "character_threshold", "general_mcut", "character_mcut", "include_rating",
                 "max_tags", "exclude_tags", "underscores_to_spaces", "escape_brackets", "trigger_words", "existing",
                 "batch_size")
"""The panel's components for tagging.OPTION_NAMES, in that order."""


def wire_dataset_tab(context: StudioContext, ui: dict[str, Any], state: gr.State, tab: gr.Tab) -> None:
    """Bind every event of the tab built by tab.build_dataset_tab."""
    assert len(TAGGER_INPUTS) == len(OPTION_NAMES)
    wiring = DatasetWiring(context, ui, state)
    _wire_lists(wiring, tab)
    _wire_folder(wiring)
    _wire_browsing(wiring)
    _wire_edits(wiring)
    _wire_tagger(wiring)


def _wire_lists(wiring: DatasetWiring, tab: gr.Tab) -> None:
    """The folder and tagger model lists, refreshed when shown or asked; a folder chosen fills the Folder box."""
    ui, context = wiring.components, wiring.context
    for listener in (ui["folders_refresh"].click, ui["folders"].focus, tab.select):
        wiring.bind_choices(listener, lambda: dataset_folder_choices(context.data_roots()), "folders")
    for listener in (ui["model_refresh"].click, ui["model"].focus):
        wiring.bind_choices(listener, lambda: tagger_choices(context.tagger_dir()), "model")
    ui["folders"].input(lambda choice: choice or "", inputs=[ui["folders"]], outputs=[ui["path"]],
                        show_progress="hidden", api_name=False)


def _wire_folder(wiring: DatasetWiring) -> None:
    """Loading, saving, reverting, undo and the subfolders' repeats."""
    ui, bind, context = wiring.components, wiring.bind, wiring.context

    def vocabulary(session: DatasetSession, model: str | None, underscores: bool) -> None:
        session.set_vocabulary(tagger_vocabulary(model, context.tagger_dir(), underscores))

    def load(session: DatasetSession, path: str, ext: str, recursive: bool, model: str | None,
             underscores: bool) -> str:
        message = session.load(path, ext, recursive)
        vocabulary(session, model, underscores)
        return message

    load_inputs = ("path", "caption_ext", "recursive", "model", "underscores_to_spaces")
    bind(ui["load"].click, load, load_inputs)
    bind(ui["path"].submit, load, load_inputs)
    bind(ui["model"].input, vocabulary, ("model", "underscores_to_spaces"))
    wiring.bind_job(ui["save"].click, DatasetSession.start_save, follow_save, (), progress_parts=("status",))
    bind(ui["save_cancel"].click, DatasetSession.cancel_save, queue=False)
    bind(ui["revert"].click, DatasetSession.revert)
    bind(ui["undo"].click, DatasetSession.undo)
    bind(ui["redo"].click, DatasetSession.redo)
    bind(ui["overwrite"].click, DatasetSession.overwrite_conflicts)
    bind(ui["reload_conflicts"].click, DatasetSession.reload_conflicts)
    bind(ui["subset"].input, DatasetSession.choose_subset, ("subset",))
    bind(ui["rename"].click, DatasetSession.rename_repeats, ("subset", "repeats"))


def _wire_browsing(wiring: DatasetWiring) -> None:
    """The filter, the gallery's pages and selection, the page's JSON actions and the tag table."""
    ui, bind = wiring.components, wiring.bind

    def set_filter(session: DatasetSession, include: str, include_mode: str, exclude: str,
                   exclude_mode: str) -> str:
        return session.set_filter(include, INCLUDE_MODES.get(include_mode, "all"), exclude,
                                  EXCLUDE_MODES.get(exclude_mode, "any"))

    def clear_filter(session: DatasetSession, include_mode: str, exclude_mode: str) -> str:
        return set_filter(session, "", include_mode, "", exclude_mode)

    filter_inputs = ("include", "include_mode", "exclude", "exclude_mode")
    for listener in (ui["filter_apply"].click, ui["include"].submit, ui["exclude"].submit,
                     ui["include_mode"].input, ui["exclude_mode"].input):
        bind(listener, set_filter, filter_inputs)
    bind(ui["filter_clear"].click, clear_filter, ("include_mode", "exclude_mode"))
    bind(ui["page_prev"].click, lambda session: session.go_page(-1))
    bind(ui["page_next"].click, lambda session: session.go_page(1))
    bind(ui["image"].input, DatasetSession.select, ("image",))
    bind(ui["image_prev"].click, lambda session: session.step_selection(-1))
    bind(ui["image_next"].click, lambda session: session.step_selection(1))
    bind(ui["action"].input, run_action, ("action",))
    bind(ui["frequency_search"].input, DatasetSession.search_tags, ("frequency_search",))
    bind(ui["frequency_prev"].click, lambda session: session.turn_tag_page(-1))
    bind(ui["frequency_next"].click, lambda session: session.turn_tag_page(1))


def _wire_edits(wiring: DatasetWiring) -> None:
    """The editor's edits of one caption, the batch edits of the filtered captions and consolidation."""
    ui, bind = wiring.components, wiring.bind
    bind(ui["add"].click, DatasetSession.add_tags, ("caption_key", "add_tag"))
    bind(ui["add_tag"].submit, DatasetSession.add_tags, ("caption_key", "add_tag"))
    bind(ui["caption_apply"].click, DatasetSession.set_caption, ("caption_key", "caption"))
    bind(ui["caption"].blur, DatasetSession.set_caption, ("caption_key", "caption"))

    def batch(make: Any) -> Any:
        return lambda session, *values: session.batch(make(*values))

    bind(ui["batch_add"].click, batch(add_edit), ("batch_add_tags", "batch_add_position", "batch_add_index"))
    bind(ui["batch_remove"].click, batch(remove_edit), ("batch_remove_tags",))
    bind(ui["batch_front"].click, batch(move_to_front_edit), ("batch_front_tags",))
    bind(ui["batch_rename"].click, batch(rename_edit), ("batch_old", "batch_new"))
    bind(ui["batch_replace"].click, batch(replace_edit),
         ("batch_find", "batch_replacement", "batch_regex", "batch_scope", "batch_ignore_case"))
    bind(ui["batch_dedupe"].click, batch(dedupe_edit))
    bind(ui["batch_sort"].click, lambda session, order, keep, reverse: session.batch(
        sort_edit(order, keep, reverse, session.texts)), ("batch_sort_order", "batch_keep", "batch_reverse"))
    bind(ui["propose"].click, DatasetSession.propose, ("trigger", "min_share"))
    bind(ui["consolidate"].click, DatasetSession.consolidate, ("trigger", "proposals"))


def _wire_tagger(wiring: DatasetWiring) -> None:
    """The tagger panel: a tagging job on the loaded dataset, followed to its end; cancel; free the model."""
    ui, bind, context = wiring.components, wiring.bind, wiring.context

    def start(session: DatasetSession, path: str | None, model: str | None, *values: Any) -> tuple[str, Job[Any]]:
        session.require_shown(path)  # the folder the page shows, not one loaded before
        options = tagger_options(session, dict(zip(OPTION_NAMES, values)))
        job = start_tagging(session, context, model, options)
        return f"Tagging with **{model}**…", job

    def follow_tagging(session: DatasetSession, job: Job[Any]) -> Iterator[tuple[str | None, bool]]:
        for snapshot in follow(job):
            if snapshot.active:
                yield None, False
            else:
                with session.lock:
                    message = finish_tagging(session, snapshot)
                yield message, True

    wiring.bind_job(ui["tag_start"].click, start, follow_tagging, ("path", "model", *TAGGER_INPUTS))
    bind(ui["tag_cancel"].click, cancel_tagging, queue=False)
    bind(ui["tag_unload"].click,
         lambda session: "The tagger model was freed." if unload_tagger() else "No tagger model was loaded.")
