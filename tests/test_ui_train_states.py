"""The Train tab says what a run is doing in every state: a page opened while it runs reattaches, a second Start
names the run that is going and its step, a stop saves with a preview and says where. Without a browser (the
browser checks are in test_browser_train.py); the wiring checks are hostcompat (gradio 3.41 and 4.x)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lib_lora.tiny.images import generate_dataset
from lib_lora.ui.context import StudioContext
from lib_lora.ui.train import form as train_form
from lib_lora.ui.train.session import OwnFields, TrainSession, TrainUIError
from lib_lora.ui.train.tab import OWN, TrainHandlers
from lib_lora.ui.wiring import bound

TINY_VALUES = {"resolution": "64", "network_dim": "2", "network_alpha": "2", "learning_rate": "1e-3",
               "caption_extension": ".txt", "max_train_steps": "500", "seed": "3", "train_batch_size": "1"}
PROMPT = "tinychar, solo --s 1 --w 64 --h 64"
RUN_OUTPUTS = ("progress", "curve", "sample", "output", "status", "run_token")


def form(**changes: Any) -> dict[str, Any]:
    return {**train_form.default_values(), **TINY_VALUES, **changes}


def args_of(own: OwnFields, values: dict[str, Any]) -> list[Any]:
    return [getattr(own, name) for name in OWN] + [values[name] for name in train_form.FIELD_NAMES]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    generate_dataset(tmp_path / "datasets", count=2, repeats=10, name="tinychar")
    return tmp_path


@pytest.fixture(scope="module")
def tiny_host() -> Any:
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host

    return load_diffusers_host("tiny")


def session_for(workspace: Path, host: Any) -> TrainSession:
    return TrainSession(StudioContext.for_folder(lambda: host, workspace), poll_seconds=0.05)


def wait_for_step(session: TrainSession, step: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while session.job.snapshot().extra.get("step", 0) < step:
        assert time.monotonic() < deadline and session.active, session.job.snapshot().describe()
        time.sleep(0.05)


def stop_and_finish(session: TrainSession) -> dict[str, Any]:
    """Stop the run; the last update of following it to its end."""
    session.stop()
    return list(session.follow())[-1]


def test_a_second_start_names_the_run_going_and_its_step(workspace, tiny_host):
    session = session_for(workspace, tiny_host)
    handlers = TrainHandlers(session)
    own = OwnFields(str(workspace / "datasets"), "long")
    first = handlers.start(*args_of(own, form()))
    assert first["status"] == "Training started." and first["run_token"]
    wait_for_step(session)
    second = bound(handlers.start, {name: name for name in RUN_OUTPUTS}, tab="Train")(
        *args_of(OwnFields(str(workspace / "datasets"), "other"), form()))
    assert list(second) == ["status"]  # the page's token stays the first run's: the second follows nothing
    assert "already running: long, step " in second["status"] and " of 500" in second["status"]
    with pytest.raises(TrainUIError, match=r"already running: long, step \d+ of 500\. Stop it"):
        session.start(own, form())
    stop_and_finish(session)


def test_following_a_start_claims_its_run_once(workspace, tiny_host):
    session = session_for(workspace, tiny_host)
    handlers = TrainHandlers(session)
    started = handlers.start(*args_of(OwnFields(str(workspace / "datasets"), "quick"), form(max_train_steps="1")))
    session.job.wait(timeout=240)
    followed = list(handlers.follow_started(started["run_token"]))  # it ended before the page followed it
    assert "**Done:**" in followed[-1]["status"]
    for token in (started["run_token"], None, "run-0"):  # again, a failed start's empty or stale token
        assert [set(update) for update in handlers.follow_started(token)] == [{"progress"}]


def test_a_page_opened_while_a_run_goes_reattaches_to_it(workspace, tiny_host):
    session = session_for(workspace, tiny_host)
    handlers = TrainHandlers(session)
    assert [set(update) for update in handlers.reattach()] == [{"progress"}]  # nothing going: nothing changes
    session.start(OwnFields(str(workspace / "datasets"), "going"), form())
    wait_for_step(session)
    updates = handlers.reattach()
    first = next(updates)
    assert "Training **going, step " in first["status"] and "started before this page was opened" in first["status"]
    assert "step " in next(updates)["progress"]
    session.stop()
    final = list(updates)[-1]
    assert "Stopped and saved" in final["status"]


@pytest.mark.parametrize(("prompts", "every", "preview", "said"), [
    (PROMPT, "", True, "preview `stopped-step"),  # no sample yet: one is made for the preview
    (PROMPT, "1", True, "preview `stopped-step"),  # the last sample becomes the preview
    ("", "", False, "no preview: give a sample prompt or a trigger word"),
])
def test_a_stopped_run_is_saved_with_its_preview_and_says_where(workspace, tiny_host, prompts, every, preview,
                                                                said):
    session = session_for(workspace, tiny_host)
    session.start(OwnFields(str(workspace / "datasets"), "stopped", prompts=prompts),
                  form(sample_every_n_steps=every))
    wait_for_step(session, 2)
    final = stop_and_finish(session)
    saved = Path(final["output"])
    assert saved.is_file() and saved.name.startswith("stopped-step")
    assert f"**Stopped and saved** `{saved}`" in final["status"].replace("\\", "") and said in final["status"]
    assert saved.with_name(f"{saved.stem}.preview.png").is_file() is preview
    assert session.job.snapshot().result.preview == (saved.with_name(f"{saved.stem}.preview.png") if preview else None)


# --- the wiring, in both gradio versions ----------------------------------------------------------------------


def _events(blocks: Any) -> list[tuple[set[str], str, int | None]]:
    """(triggers, callback name, the event it follows) of every event of `blocks` (3.41 and 4.x configs)."""
    fns = blocks.fns if isinstance(blocks.fns, list) else [blocks.fns[key] for key in sorted(blocks.fns)]
    events = []
    for dependency, block_fn in zip(blocks.config["dependencies"], fns):
        targets = dependency.get("targets", [])
        triggers = {dependency.get("trigger")} | {t[1] for t in targets if isinstance(t, (list, tuple))}
        events.append((triggers - {None}, getattr(block_fn.fn, "__name__", ""), dependency.get("trigger_after")))
    return events


@pytest.mark.hostcompat
def test_the_page_load_reattaches_and_start_and_stop_hand_over_to_a_follower():
    from lib_lora.ui import build_studio

    blocks = build_studio(StudioContext.for_folder(lambda: None, Path("/nonexistent")))
    events = _events(blocks)
    names = [name for _, name, _ in events]
    assert any("load" in triggers and name == "train_reattach" for triggers, name, _ in events)
    for first, then in (("train_start", "train_follow_started"), ("train_stop", "train_follow_active"),
                        ("train_queue_run", "train_queue_follow")):
        assert events[names.index(then)][2] == names.index(first)  # runs when the quick first event is done
