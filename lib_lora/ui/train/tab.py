"""The Train tab: dataset, name, trigger word, recipe, basic and advanced options, VRAM estimate, start / stop /
save now, live progress (loss curve, samples), TOML import/export.

Layout and wiring only: the form is data (train_form), the handlers live in train_session. Handlers return
{name: value} dicts; `wiring.bound` maps them to components and turns any error into the status line, so no stack trace
reaches the page. Nothing is read while building: folders, model and presets are read by events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gradio as gr
from gradio.context import Context

from ...blocks.presets import PresetBook, family_of
from ...train.config import TRAIN_HELP
from ...wording import escape_markdown
from ..context import StudioContext
from ..wiring import wire
from . import form as train_form
from . import hints as train_hints
from . import recipes as train_recipes
from .compare import build_compare_panel
from .queue import QueuePanel
from .session import OwnFields, TrainSession
from .view import CURVE_SIZE

TAB_ID = "lora_studio_train"
STATUS = (
    "Train a LoRA in-process on the model shown above: no second copy of the checkpoint, the model "
    "restored exactly afterwards. Choose a dataset folder and a recipe, check the options, press **Start**."
)
OWN = ("dataset", "output_name", "overwrite", "trigger", "prompts")
FIELDS_PER_ROW = 3
IMAGE_HEIGHT = 256

Component = Any


def _wire(listener: Callable[..., Any], fn: Callable[..., Any], inputs: list[Component],
          outputs: Mapping[str, Component], **options: Any) -> Any:
    return wire(listener, fn, inputs, outputs, tab='Train', **options)


class TrainHandlers:
    """The tab's event handlers over a TrainSession: the whole form comes in as OWN + FIELD_NAMES values."""

    def __init__(self, session: TrainSession) -> None:
        self.session = session
        self.queue = QueuePanel(session)

    @staticmethod
    def split(args: tuple[Any, ...]) -> tuple[OwnFields, dict[str, Any]]:
        own = OwnFields(*(value if value is not None else default
                          for value, default in zip(args[:len(OWN)], ("", "", False, "", ""))))
        return own, dict(zip(train_form.FIELD_NAMES, args[len(OWN):]))

    def refresh(self, dataset: str | None) -> dict[str, Any]:
        """Dataset folders and the loaded model's block presets (for train_blocks)."""
        updates: dict[str, Any] = {"dataset": gr.update(choices=self.session.dataset_choices())}
        host = self.session.context.host_provider()
        if host is not None:
            updates["train_blocks"] = gr.update(choices=["", *PresetBook.builtin().names(family_of(host.arch))])
        return updates

    def recipe(self, title: str | None) -> dict[str, Any]:
        if not title:
            return {}
        return {**train_recipes.recipe_values(title), "recipe_info": train_recipes.recipe_markdown(title),
                "status": f"Recipe **{escape_markdown(title)}** loaded: check the options, then Start."}

    def estimate(self, *args: Any) -> dict[str, Any]:
        return {"estimate": self.session.estimate(*self.split(args))}

    def hints(self, recipe: str | None, *args: Any) -> dict[str, Any]:
        """Every hint for the form as it is now (after any change: a field, a recipe, an import, an install)."""
        updates = train_hints.hints(self.session, *self.split(args), recipe)
        package = updates.pop("install")
        updates["install"] = gr.update(visible=package is not None, value=f"Install {package or ''}".strip())
        updates["status"] = updates.pop("estimate")  # the estimate panel is the hints' status line (see wiring)
        return updates

    def switch_optimizer(self, optimizer_type: str | None, args: str | None, rate: str | None) -> dict[str, Any]:
        return train_hints.switch_optimizer(optimizer_type, args, rate)

    def install(self, optimizer_type: str | None) -> Iterator[dict[str, Any]]:
        yield from train_hints.install(optimizer_type)

    def start(self, *args: Any) -> dict[str, Any]:
        """Start the run and return at once (its progress is `follow_started`'s), so a second press is answered."""
        job = self.session.start(*self.split(args))
        return {"status": "Training started.", "output": "", "sample": None, "curve": None,
                "run_token": self.session.token_of(job)}

    def follow_started(self, token: str | None) -> Iterator[dict[str, Any]]:
        yield from _at_least_once(self.session.follow_started(token))

    def follow(self) -> Iterator[dict[str, Any]]:
        yield from self.session.follow()

    def follow_active(self) -> Iterator[dict[str, Any]]:
        yield from _at_least_once(self.session.follow_active())

    def reattach(self) -> Iterator[dict[str, Any]]:
        yield from _at_least_once(self.session.reattach())

    def stop(self) -> dict[str, Any]:
        return self.session.stop()

    def save_now(self) -> dict[str, Any]:
        return self.session.save_now()

    def queue_listing(self) -> dict[str, Any]:
        return self.queue.listing()

    def queue_add(self, *args: Any) -> dict[str, Any]:
        return self.queue.add(*self.split(args))

    def queue_remove(self, name: str | None) -> dict[str, Any]:
        return self.queue.remove(name)

    def queue_up(self, name: str | None) -> dict[str, Any]:
        return self.queue.move(name, -1)

    def queue_down(self, name: str | None) -> dict[str, Any]:
        return self.queue.move(name, 1)

    def queue_on_load(self) -> dict[str, Any]:
        """The queue as the page opens; the status line says when runs wait (they never start by themselves)."""
        updates = self.queue.listing()
        if self.queue.queue().runs and not self.session.active:
            updates["status"] = (f"{len(self.queue.queue().runs)} run(s) wait in the **Queue** (below the progress): "
                                 "nothing starts by itself; continue them there when you are ready.")
        return updates

    def queue_run(self) -> dict[str, Any]:
        job = self.queue.start()
        return {"status": "Training the queued runs, one after another.", "output": "", "sample": None,
                "curve": None, "run_token": self.session.token_of(job)}

    def queue_follow(self, token: str | None) -> Iterator[dict[str, Any]]:
        yield from _at_least_once(self.session.follow_started(token))
        yield self.queue.listing()

    def import_toml(self, text: str | None, upload: Any) -> dict[str, Any]:
        return self.session.import_toml(text or "", upload)

    def export_toml(self, *args: Any) -> dict[str, Any]:
        return self.session.export_toml(*self.split(args))


def _at_least_once(updates: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """`updates`, or one update that changes nothing when there are none (a gradio event must yield once)."""
    empty = True
    for update in updates:
        empty = False
        yield update
    if empty:
        yield {"progress": gr.update()}


def _field(f: train_form.FormField) -> Component:
    options: dict[str, Any] = {"label": f.label, "info": f.help, "elem_id": f"lora_studio_train_{f.name}"}
    if f.kind == "bool":
        return gr.Checkbox(value=f.default, **options)
    if f.name == "train_blocks":  # the Block Weight presets (SD1 until a tab select reads the loaded model)
        return gr.Dropdown(choices=["", *PresetBook.builtin().names("sd1")], value=f.default, allow_custom_value=True,
                           **options)
    if f.choices or f.name in train_form.CUSTOM_CHOICES:
        return gr.Dropdown(choices=list(f.choices), value=f.default,
                           allow_custom_value=f.name in train_form.CUSTOM_CHOICES, **options)
    if f.kind == "args":
        return gr.Textbox(value=f.default, lines=2, placeholder="key=value, one per line", **options)
    return gr.Textbox(value=f.default, max_lines=1, **options)


def _fields_in_rows(fields: list[train_form.FormField], c: dict[str, Component]) -> None:
    for start in range(0, len(fields), FIELDS_PER_ROW):
        with gr.Row():
            for f in fields[start:start + FIELDS_PER_ROW]:
                c[f.name] = _field(f)


def build_train_tab(context: StudioContext) -> gr.Tab:
    """Add the Train tab to the current `gr.Tabs` and return it (for its `select` event)."""
    handlers = TrainHandlers(TrainSession(context))
    groups = train_form.grouped()
    c: dict[str, Component] = {}
    with gr.Tab("Train", id=TAB_ID, elem_id="lora_studio_train_tab") as tab:
        c["status"] = gr.Markdown(STATUS, elem_id="lora_studio_train_status", elem_classes=["lora-studio-status"])
        with gr.Row(elem_id="lora_studio_train_top"):
            with gr.Column(scale=2, min_width=480):
                _build_own(c)
                _fields_in_rows(groups.pop("basic"), c)
                with gr.Row(equal_height=True):
                    c["optimizer_info"] = gr.Markdown("", elem_id="lora_studio_train_optimizer_info")
                    c["install"] = gr.Button("Install", visible=False, size="sm", scale=0, min_width=160,
                                             elem_id="lora_studio_train_install")
                with gr.Accordion("Samples", open=True, elem_id="lora_studio_train_samples_panel"):
                    c["prompts"] = gr.Textbox(
                        label="Sample prompts", lines=2, elem_id="lora_studio_train_prompts",
                        placeholder="empty: the trigger word",
                        info="One prompt per line, with sd-scripts' options --n (negative) --w --h --d (seed) "
                             "--l (CFG) --s (steps). The last sample becomes the LoRA's preview.")
                    _fields_in_rows(groups.pop("samples"), c)
                with gr.Accordion("Advanced", open=False, elem_id="lora_studio_train_advanced"):
                    for section, fields in groups.items():
                        with gr.Accordion(train_form.SECTION_TITLES[section], open=False,
                                          elem_id=f"lora_studio_train_section_{section}"):
                            _fields_in_rows(fields, c)
                _build_toml(c)
            with gr.Column(scale=1, min_width=320):
                _build_run_panel(c)
        build_compare_panel(handlers.session, tab)  # choose an epoch of the finished run, keep it
    _wire_events(c, handlers, tab)
    return tab


def _build_own(c: dict[str, Component]) -> None:
    with gr.Row():
        c["dataset"] = gr.Dropdown(label="Dataset folder (train_data_dir)", choices=[], value=None,
                                   allow_custom_value=True, info=TRAIN_HELP["train_data_dir"],
                                   elem_id="lora_studio_train_dataset", scale=4)
        c["dataset_refresh"] = gr.Button("Refresh", elem_id="lora_studio_train_dataset_refresh", size="sm",
                                         scale=1, min_width=80)
    c["dataset_info"] = gr.Markdown("", elem_id="lora_studio_train_dataset_info")
    with gr.Row(equal_height=True):
        c["output_name"] = gr.Textbox(label="output_name", info=TRAIN_HELP["output_name"], max_lines=1,
                                      elem_id="lora_studio_train_output_name", scale=3)
        c["overwrite"] = gr.Checkbox(label="Overwrite", value=False, elem_id="lora_studio_train_overwrite", scale=1,
                                     info="replace a LoRA file of that name")
        c["trigger"] = gr.Textbox(label="Trigger word (activation_text)", max_lines=1, scale=3,
                                  info=TRAIN_HELP["activation_text"], elem_id="lora_studio_train_trigger")
    with gr.Row(equal_height=True):
        c["recipe"] = gr.Dropdown(label="Recipe", choices=train_recipes.recipe_titles(), value=None, scale=2,
                                  info="fills the options with a tested starting point",
                                  elem_id="lora_studio_train_recipe")
        c["recipe_info"] = gr.Markdown("", elem_id="lora_studio_train_recipe_info")


def _build_toml(c: dict[str, Component]) -> None:
    with gr.Accordion("Config file (TOML)", open=False, elem_id="lora_studio_train_toml_panel"):
        with gr.Row():
            c["toml_upload"] = gr.File(label="Open a .toml file", file_types=[".toml"],
                                       elem_id="lora_studio_train_toml_upload")
            c["toml_file"] = gr.File(label="Exported file", interactive=False, elem_id="lora_studio_train_toml_file")
        c["toml"] = gr.Textbox(label="TOML (paste to import; export writes here)", lines=8,
                               elem_id="lora_studio_train_toml")
        with gr.Row():
            c["import"] = gr.Button("Import into the form", elem_id="lora_studio_train_import")
            c["export"] = gr.Button("Export the form", elem_id="lora_studio_train_export")


def _build_run_panel(c: dict[str, Component]) -> None:
    c["estimate"] = gr.Markdown("", elem_id="lora_studio_train_estimate")
    c["estimate_button"] = gr.Button("Estimate VRAM", elem_id="lora_studio_train_estimate_button", size="sm")
    with gr.Row():
        c["start"] = gr.Button("Start", variant="primary", elem_id="lora_studio_train_start")
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="lora_studio_train_stop")
        c["save_now"] = gr.Button("Save now", elem_id="lora_studio_train_save_now")
    c["progress"] = gr.Markdown("", elem_id="lora_studio_train_progress")
    c["follow"] = gr.Button("Show progress", elem_id="lora_studio_train_follow", size="sm")
    c["curve"] = gr.Image(label="Loss", type="pil", interactive=False, height=CURVE_SIZE[1],
                          elem_id="lora_studio_train_curve")
    c["sample"] = gr.Image(label="Latest sample", type="pil", interactive=False, height=IMAGE_HEIGHT,
                           elem_id="lora_studio_train_sample")
    c["output"] = gr.Textbox(label="LoRA file", interactive=False, elem_id="lora_studio_train_output")
    c["run_token"] = gr.State(None)  # the run this page started, for the event that follows it
    with gr.Accordion("Queue", open=False, elem_id="lora_studio_train_queue_panel"):
        c["queue_list"] = gr.Markdown("The queue is empty.", elem_id="lora_studio_train_queue_list")
        with gr.Row():
            c["queue_add"] = gr.Button("Add to queue", elem_id="lora_studio_train_queue_add")
            c["queue_run"] = gr.Button("Run the queue", elem_id="lora_studio_train_queue_run")
        with gr.Row(equal_height=True):
            c["queue_pick"] = gr.Dropdown(label="Queued run", choices=[], value=None, scale=2,
                                          elem_id="lora_studio_train_queue_pick")
            c["queue_remove"] = gr.Button("Remove", elem_id="lora_studio_train_queue_remove", scale=1)
        with gr.Row():
            c["queue_up"] = gr.Button("Up", elem_id="lora_studio_train_queue_up", size="sm")
            c["queue_down"] = gr.Button("Down", elem_id="lora_studio_train_queue_down", size="sm")


def _pick(c: Mapping[str, Component], *names: str) -> dict[str, Component]:
    return {name: c[name] for name in names}


def _wire_events(c: dict[str, Component], handlers: TrainHandlers, tab: gr.Tab) -> None:
    form = [c[name] for name in OWN + train_form.FIELD_NAMES]
    estimate = _pick(c, "estimate", "status")
    for listener in (tab.select, c["dataset_refresh"].click):
        _wire(listener, handlers.refresh, [c["dataset"]], _pick(c, "dataset", "train_blocks", "status"))
    # Not the tab's status line: gradio 3.41 grows a pending output, so a hint recomputed on a field's blur would
    # move Start under the pointer and the click would be lost. A hint's own error shows in the estimate panel.
    hint_outputs = {**_pick(c, "dataset_info", "optimizer_info", "install", "recipe_info"), "status": c["estimate"]}

    def then_hints(event: Any) -> None:  # every change ends with the hints recomputed from the whole form
        _wire(event.then, handlers.hints, [c["recipe"], *form], hint_outputs, show_progress="hidden")

    recipe_outputs = {**_pick(c, *train_form.FIELD_NAMES), **_pick(c, "recipe_info", "status")}
    then_hints(_wire(c["recipe"].input, handlers.recipe, [c["recipe"]], recipe_outputs))
    then_hints(_wire(c["optimizer_type"].input, handlers.switch_optimizer,
                     [c["optimizer_type"], c["optimizer_args"], c["learning_rate"]],
                     _pick(c, "optimizer_args", "learning_rate", "status")))
    then_hints(_wire(c["install"].click, handlers.install, [c["optimizer_type"]], _pick(c, "status")))
    _wire(c["estimate_button"].click, handlers.estimate, form, estimate)
    for name in ("dataset", "output_name", "trigger", "prompts", *train_form.FIELD_NAMES):
        component = c[name]
        if name == "optimizer_type":
            continue  # its switch above ends with the hints
        if name == "dataset":
            listener = component.change  # chosen, typed, or set by an import
        else:
            listener = component.blur if isinstance(component, gr.Textbox) else component.input
        _wire(listener, handlers.hints, [c["recipe"], *form], hint_outputs, show_progress="hidden")
    queue_outputs = _pick(c, "queue_list", "queue_pick", "queue_run", "status")
    _wire(tab.select, handlers.queue_listing, [], queue_outputs)
    _wire(c["queue_add"].click, handlers.queue_add, form, queue_outputs)
    _wire(c["queue_remove"].click, handlers.queue_remove, [c["queue_pick"]], queue_outputs)
    for name in ("queue_up", "queue_down"):
        _wire(c[name].click, getattr(handlers, name), [c["queue_pick"]], queue_outputs)
    run_outputs = _pick(c, "progress", "curve", "sample", "output", "status")
    token = [c["run_token"]]
    queued = _wire(c["queue_run"].click, handlers.queue_run, [], {**run_outputs, **_pick(c, "run_token")})
    _wire(queued.then, handlers.queue_follow, token, {**run_outputs, **queue_outputs})
    started = _wire(c["start"].click, handlers.start, form, {**run_outputs, **_pick(c, "run_token")})
    _wire(started.then, handlers.follow_started, token, run_outputs)
    _wire(c["follow"].click, handlers.follow, [], run_outputs)
    _wire(Context.root_block.load, handlers.reattach, [], run_outputs)  # a reloaded page shows the run going
    _wire(Context.root_block.load, handlers.queue_on_load, [], queue_outputs)  # what waits; nothing starts
    stopped = _wire(c["stop"].click, handlers.stop, [], _pick(c, "status"), queue=False)
    _wire(stopped.then, handlers.follow_active, [], run_outputs)  # to its end: what was saved, and where
    _wire(c["save_now"].click, handlers.save_now, [], _pick(c, "status"), queue=False)
    import_outputs = {**_pick(c, *OWN), **_pick(c, *train_form.FIELD_NAMES), "status": c["status"]}
    import_outputs.pop("overwrite")
    then_hints(_wire(c["import"].click, handlers.import_toml, [c["toml"], c["toml_upload"]], import_outputs))
    _wire(c["export"].click, handlers.export_toml, form, _pick(c, "toml", "toml_file", "status"))
