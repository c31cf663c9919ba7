"""The UI's one error edge: an event of every tab whose core fails shows the failure in the tab's status line,
worded the same way in each tab (a typed error as its own message, anything else as an unexpected error, logged).

The events are the real ones of the built studio, called as gradio calls them; the core they reach is made to fail.
Runs under A1111's pins too (gradio 3.41.2)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest

from lib_lora.blocks.apply import LoraLibrary
from lib_lora.dataset.editing.browsing import DatasetBrowsing
from lib_lora.dataset.editing.saving import CaptionSaving
from lib_lora.dataset.roots import AllowedRoots
from lib_lora.errors import LoraStudioError
from lib_lora.ui import StudioContext, build_studio

pytestmark = pytest.mark.hostcompat

DATASET_STATUS, TRAIN_STATUS, BLOCKS_STATUS = ("lora_studio_dataset_message", "lora_studio_train_status",
                                               "lora_studio_blocks_status")

EVENTS = [
    # (tab, event, its inputs' values, the core it reaches, where the tab shows its status)
    ("Dataset", "dataset_undo", (None,), (DatasetBrowsing, "begin"), DATASET_STATUS),
    ("Dataset", "dataset_redo", (None,), (DatasetBrowsing, "suggestions"), DATASET_STATUS),  # showing the page
    ("Dataset", "dataset_start_save", (None,), (CaptionSaving, "_plan_unsaved"), DATASET_STATUS),
    ("Dataset", "dataset_list_folders", (None,), (AllowedRoots, "__init__"), DATASET_STATUS),
    ("Train", "train_refresh", ("",), (AllowedRoots, "__init__"), TRAIN_STATUS),
    ("Block Weight", "block_weight_search", ("", None), (LoraLibrary, "names"), BLOCKS_STATUS),
]
FAILURES = [
    (RuntimeError("boom <1>"), r"**Unexpected error** (details in the console): RuntimeError: boom \<1\>"),
    (LoraStudioError("bad <thing>"), r"**Error:** bad \<thing\>"),
]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_studio(StudioContext.for_folder(lambda: None, tmp_path_factory.mktemp("workspace")))


def _event(blocks: Any, name: str, status: str) -> tuple[Any, list[int]]:
    """The callback named `name` that shows the status line `status`, and the ids of its outputs (3.41 and 4.x)."""
    fns = blocks.fns if isinstance(blocks.fns, list) else [blocks.fns[key] for key in sorted(blocks.fns)]
    for dependency, block_fn in zip(blocks.config["dependencies"], fns):
        outputs = list(dependency["outputs"])
        if getattr(block_fn.fn, "__name__", "") == name and status in (blocks.blocks[i].elem_id for i in outputs):
            return block_fn.fn, outputs
    raise AssertionError(f"no event {name!r} showing {status} in the studio")


def _shown(blocks: Any, outputs: list[int], result: Any) -> dict[str | None, Any]:
    """What an event's result puts in the page, by element id (gradio takes a dict by component or a list)."""
    if inspect.isgenerator(result):
        result = list(result)[-1]
    if isinstance(result, dict):
        return {component.elem_id: value for component, value in result.items()}
    return {blocks.blocks[index].elem_id: value for index, value in zip(outputs, result)}


@pytest.mark.parametrize(("error", "wording"), FAILURES, ids=["unexpected", "typed"])
@pytest.mark.parametrize(("tab", "name", "values", "core", "status"), EVENTS, ids=[row[1] for row in EVENTS])
def test_a_failing_core_is_one_message_in_the_tab_s_status(studio: Any, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture, tab: str, name: str,
                                                           values: tuple[Any, ...], core: tuple[Any, str],
                                                           status: str, error: Exception, wording: str) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    fn, outputs = _event(studio, name, status)
    monkeypatch.setattr(*core, fail)
    with caplog.at_level(logging.ERROR, logger="lora_studio"):
        shown = _shown(studio, outputs, fn(*values))
    assert shown[status] == wording
    logged = [record for record in caplog.records if record.exc_info and record.exc_info[1] is error]
    assert len(logged) == (0 if isinstance(error, LoraStudioError) else 1)  # a bug's traceback is in the console
    assert tab in logged[0].getMessage() if logged else True


def test_every_dataset_event_goes_through_the_edge(studio: Any) -> None:
    """The Dataset tab's callbacks are the edge's (named like the other tabs'), except filling the Folder box."""
    fns = studio.fns if isinstance(studio.fns, list) else list(studio.fns.values())
    names = [getattr(block_fn.fn, "__name__", "") for block_fn in fns]
    dataset = [name for name in names if name.startswith("dataset_")]
    assert len(dataset) > 40 and "handle" not in names
