"""The Dataset tab's tagging panel at scale: a cancelled run continues where it stopped when Tag is pressed again,
its progress counts only the images left (so the ETA is theirs), and the messages say so."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from lib_lora.tiny.images import generate_dataset

pytestmark = pytest.mark.hostcompat

pytest.importorskip("onnxruntime")
pytest.importorskip("gradio")


def test_tag_again_after_cancel_continues_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from lib_lora.dataset.editing import DatasetSession
    from lib_lora.dataset.tagging.models import resolve_model
    from lib_lora.dataset.tagging.tagger import Tagger
    from lib_lora.tiny.tagger import write_tiny_wd14_tagger
    from lib_lora.ui import StudioContext
    from lib_lora.ui.dataset import tagging as dataset_tagging

    context = StudioContext.for_folder(lambda: None, tmp_path)
    write_tiny_wd14_tagger(context.tagger_dir() / "tiny", input_size=64)
    roots = tmp_path / "datasets"
    generate_dataset(roots / "char", count=8, seed=1)
    session = DatasetSession(lambda: [roots])
    session.load(str(roots / "char"))
    loaded = Tagger.load(resolve_model(context.tagger_dir() / "tiny"), providers=["cpu"])
    calls: list[int] = []
    cancel_after: list[int] = [2]

    def load(files: object) -> Tagger:
        tagger = copy.copy(loaded)

        def predict(batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            if cancel_after and sum(calls) >= cancel_after[0]:
                session.job.cancel()  # type: ignore[union-attr]
            return loaded.predict(batch)

        tagger.predict = predict  # type: ignore[method-assign]
        return tagger

    monkeypatch.setattr(dataset_tagging, "load_tagger", load)
    options = dataset_tagging.tagger_options(session, {"existing": "overwrite", "batch_size": "1"})
    first = dataset_tagging.start_tagging(session, context, "tiny", options).wait(60)
    assert first.state == "cancelled"
    message = dataset_tagging.finish_tagging(session, first)
    assert "continues where it stopped when started again with the same model and options" in message
    done_first = sum(calls)
    assert 2 <= done_first < 8

    calls.clear()
    cancel_after.clear()
    job = dataset_tagging.start_tagging(session, context, "tiny", options)
    second = job.wait(60)
    assert second.state == "done", second.error
    assert sum(calls) == 8 - done_first == second.total == second.done  # progress (and ETA) over what was left
    message = dataset_tagging.finish_tagging(session, second)
    assert f"tagged {8 - done_first}, {done_first} done earlier (resumed)" in message
