"""Events of the Dataset tab: each runs one session action under the session's lock and sends the parts that changed.

Every handler takes the page's `gr.State` (a DatasetSession, made on first use) and returns it plus one value
per part of views.PARTS. A part whose rendering equals what the page already shows is sent as a no-op
update, so a chip click re-sends the chips, not the gallery; for the text fields the user types in, the value
received with the event counts as what the page shows. Every error becomes the tab's message, worded by the UI's
one edge (ui/wiring.py's `error_markdown`): a LoraStudioError as it is, anything else as an unexpected error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import gradio as gr

from ...dataset.editing import DatasetSession
from ..context import StudioContext
from ..wiring import error_markdown
from .views import PARTS, Choices, Visible, render

Action = Callable[..., "str | None"]
"""A session action: returns the message to show (Markdown), or None to leave the message as it is."""
EDITABLE_PARTS = frozenset({"caption", "caption_key", "include", "exclude", "add_tag"})
"""Parts the user types into: the value an event brings is what the page shows."""
EVENT: dict[str, Any] = {"show_progress": "hidden", "api_name": False, "trigger_mode": "multiple"}
"""Our events' options. gradio 4 drops a click made while the same event is still running ("once"): two quick
Undo clicks, or a chip click right after a gallery click, must both count, so each is queued ("multiple") and
run in turn under the session's lock. gradio 3.41 has no trigger_mode and queues them anyway."""


def listen(listener: Callable[..., Any], fn: Callable[..., Any], **options: Any) -> Any:
    """`listener(fn, **options)` with only the options this gradio's listener accepts.

    Forge Neo wraps every component event in an `EventWrapper(*args, **kwargs)` that keeps gradio's own listener as
    `replaced_event`: the options are read from that one, else every option (inputs and outputs too) would be
    dropped."""
    accepted = inspect.signature(getattr(listener, "replaced_event", listener)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return listener(fn, **options)
    return listener(fn, **{name: value for name, value in options.items() if name in accepted})


def error_message(error: BaseException) -> str:
    """The tab's message for an error an event raised (logged with its traceback when unexpected)."""
    return error_markdown(error, tab="Dataset")


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # a check list's value is a list


def as_update(value: Any) -> Any:
    if isinstance(value, Choices):
        return gr.update(choices=list(value.choices), value=_listed(value.value))
    if isinstance(value, Visible):
        return gr.update(visible=value.visible)
    return value


class DatasetWiring:
    """Binds events of the tab's components (by part or input name) to session actions."""

    def __init__(self, context: StudioContext, components: dict[str, Any], state: gr.State) -> None:
        self.context = context
        self.components = components
        self.state = state
        self.outputs = [state, *(components[name] for name in PARTS)]

    def session(self, value: Any) -> DatasetSession:
        if isinstance(value, DatasetSession):
            return value
        session = DatasetSession(self.context.data_roots)
        session.thumb_dir = lambda: self.context.work_dir() / "thumbnails"
        return session

    def updates(self, session: DatasetSession, message: str | None,
                parts: Iterable[str] | None = None) -> list[Any]:
        """The state and one update per part: the new value where it differs from what the page shows.

        A message of None leaves the page's message as it is."""
        names = PARTS if parts is None else tuple(parts)
        view = render(session, message or "", [name for name in names if message is not None or name != "message"])
        result: list[Any] = [session]
        for name in PARTS:
            value, shown = view.get(name), session.sent.get(name)
            if name not in view or (name in session.sent and shown == value):
                result.append(gr.update())
                continue
            session.sent[name] = value
            if isinstance(value, Choices) and isinstance(shown, Choices) and shown.choices == value.choices:
                result.append(gr.update(value=_listed(value.value)))  # a new selection: the choices stay
            else:
                result.append(as_update(value))
        return result

    def run(self, session: DatasetSession, action: Action, names: Sequence[str], values: Sequence[Any]) -> list[Any]:
        """Run `action(session, *values)` under the lock and return the outputs (the error as the message)."""
        with session.lock:
            for name, value in zip(names, values):
                if name in EDITABLE_PARTS:
                    session.sent[name] = value if isinstance(value, str) else ""
            try:
                message = action(session, *values)
            except Exception as error:  # the edge: every failure is a message in the page
                message = error_message(error)
            return self.updates(session, message)

    def failed(self, session: DatasetSession, error: BaseException) -> list[Any]:
        """The outputs when showing the page failed: the error as the message, every other part left as it is."""
        text = error_message(error)
        session.sent["message"] = text
        return [session, *(text if name == "message" else gr.update() for name in PARTS)]

    def guarded(self, session: DatasetSession, make: Callable[[], list[Any]]) -> list[Any]:
        """`make()`, or `failed` when it raises: no event of the tab lets an error reach gradio."""
        try:
            return make()
        except Exception as error:  # the edge: every failure is a message in the page
            with session.lock:
                return self.failed(session, error)

    def bind(self, listener: Callable[..., Any], action: Action, inputs: Sequence[str] = (), **options: Any) -> None:
        """On `listener` (e.g. `button.click`), run `action(session, *values of inputs)`."""
        names = list(inputs)

        def handle(state: Any, *values: Any) -> list[Any]:
            session = self.session(state)
            return self.guarded(session, lambda: self.run(session, action, names, values))

        handle.__name__ = f"dataset_{getattr(action, '__name__', 'action')}"  # as ui/wiring names them
        listen(listener, handle, inputs=[self.state, *(self.components[name] for name in names)],
               outputs=self.outputs, **{**EVENT, **options})

    def bind_job(self, listener: Callable[..., Any], start: Callable[..., tuple[str, Any]],
                 follow: Callable[[DatasetSession, Any], Iterator[tuple["str | None", bool]]],
                 inputs: Sequence[str], progress_parts: Sequence[str] = ("tag_status",)) -> None:
        """A generator event: `start(session, *values)` -> (message, job); then `follow(session, job)` yields
        (message, finished) while the job runs, which updates `progress_parts` (and the message when given) until
        the end updates every part. The lock is taken per step, never held across a yield."""
        names = list(inputs)

        def handle(state: Any, *values: Any) -> Iterator[list[Any]]:
            session = self.session(state)
            with session.lock:
                try:
                    message, job = start(session, *values)
                except Exception as error:  # the edge: every failure is a message in the page
                    message, job = error_message(error), None
                outputs = self.guarded(session, lambda: self.updates(session, message))
            yield outputs
            if job is None:
                return
            try:
                for message, finished in follow(session, job):
                    with session.lock:
                        outputs = self.updates(session, message, None if finished else (*progress_parts, "message"))
                    yield outputs
            except Exception as error:  # the edge: every failure is a message in the page
                with session.lock:
                    outputs = self.failed(session, error)
                yield outputs

        handle.__name__ = f"dataset_{start.__name__}"
        listen(listener, handle, inputs=[self.state, *(self.components[name] for name in names)],
               outputs=self.outputs, **{**EVENT, "trigger_mode": "once"})

    def bind_choices(self, listener: Callable[..., Any], choices: Callable[[], list[str]], part: str) -> None:
        """On `listener`, give the dropdown `part` (not one of PARTS) the choices `choices()` lists; an error
        becomes the tab's message instead. The session is read, never sent: a list refreshed while a first Load
        makes the session must not put back the empty state it was given."""
        component = self.components[part]
        message = self.components["message"]

        def handle(state: Any) -> list[Any]:
            try:
                return [gr.update(choices=choices()), gr.update()]
            except Exception as error:  # the edge: every failure is a message in the page
                text = error_message(error)
                if isinstance(state, DatasetSession):
                    with state.lock:
                        state.sent["message"] = text
                return [gr.update(), text]

        handle.__name__ = f"dataset_list_{part}"
        listen(listener, handle, inputs=[self.state], outputs=[component, message], show_progress="hidden",
               api_name=False)
