"""Captions default to `.txt` everywhere (the trainer's config, the Train tab, the command line, the Dataset tab,
the tagger, the demo's datasets, the help and the README), and the Train tab's hints are recomputed from the whole
form after every change: each field's own event, a recipe, an import, an optimizer switch, an install."""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lib_lora.tiny.images import generate_dataset
from lib_lora.train.config import TRAIN_HELP, TrainConfig
from lib_lora.train.data_config import DataConfig
from lib_lora.train.recipes import RECIPES
from lib_lora.ui.context import StudioContext
from lib_lora.ui.train import form as train_form
from lib_lora.ui.train import hints as train_hints
from lib_lora.ui.train import recipes as train_recipes
from lib_lora.ui.train.session import OwnFields, TrainSession

pytestmark = pytest.mark.hostcompat
ROOT = Path(__file__).resolve().parents[1]


def _printed_config(tmp_path: Path) -> str:
    from lib_lora.cli.main import main

    config = tmp_path / "cfg.toml"
    config.write_text('pretrained_model_name_or_path = "tiny"\ntrain_data_dir = "data"\noutput_name = "x"\n')
    out = io.StringIO()
    assert main(["train", str(config), "--print-config"], out=out) == 0
    return TrainConfig.from_toml_text(out.getvalue()).data.caption_extension


def _default_of(function: Callable[..., Any], name: str) -> Any:
    return inspect.signature(function).parameters[name].default


def _dataset_tab() -> str:
    from lib_lora.dataset.editing import DatasetSession

    return _default_of(DatasetSession.load, "caption_ext")


def _tagger() -> str:
    from lib_lora.dataset.tagging.tagger import TaggerOptions

    return TaggerOptions.caption_ext


PLACES: dict[str, Callable[[Path], str]] = {
    "the trainer's config": lambda _: DataConfig().caption_extension,
    "a whole config": lambda _: TrainConfig().data.caption_extension,
    "the Train tab's field": lambda _: train_form.default_values()["caption_extension"],
    "the command line (--print-config of a config without it)": _printed_config,
    "the Dataset tab": lambda _: _dataset_tab(),
    "the tagger": lambda _: _tagger(),
    "the demo's generated datasets": lambda _: _default_of(generate_dataset, "caption_ext"),
    "every recipe": lambda _: "".join({str(r.values.get("caption_extension", ".txt")) for r in RECIPES.values()}),
}


@pytest.mark.parametrize("place", list(PLACES))
def test_captions_default_to_txt(place, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert PLACES[place](tmp_path) == ".txt"


def test_the_help_and_the_readme_say_txt_is_the_default():
    assert TRAIN_HELP["caption_extension"].startswith("Extension of the caption file next to each image: .txt")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Captions are read from `.txt` files by default (`caption_extension`)" in readme


# --- the hints follow every change -----------------------------------------------------------------------------


@pytest.fixture
def session(tmp_path: Path) -> TrainSession:
    generate_dataset(tmp_path / "datasets", count=2, repeats=10, name="tinychar")  # .txt captions
    return TrainSession(StudioContext.for_folder(lambda: None, tmp_path))


@pytest.mark.parametrize(("extension", "warned"), [(".caption", True), (".txt", False), ("", False)])
def test_the_dataset_hint_follows_caption_extension(session, tmp_path, extension, warned):
    own = OwnFields(dataset=str(tmp_path / "datasets"), output_name="x")
    hints = train_hints.hints(session, own, {**train_form.default_values(), "caption_extension": extension}, None)
    assert "10_tinychar" in hints["dataset_info"]
    assert ("have no `.caption` caption" in hints["dataset_info"]) is warned
    assert hints["estimate"].startswith("VRAM estimate") and "recipe_info" not in hints


def test_a_recipe_s_values_are_hinted_as_a_whole(session, tmp_path, monkeypatch):
    """After a recipe set many fields at once: its caption_extension, optimizer and card, all from the new form."""
    monkeypatch.setitem(__import__("sys").modules, "dadaptation", None)
    own = OwnFields(dataset=str(tmp_path / "datasets"), output_name="x")
    title = RECIPES["character-sd1"].title
    stale = train_hints.hints(session, own, {**train_form.default_values(), "caption_extension": ".caption"}, None)
    fresh = train_hints.hints(session, own, train_recipes.recipe_values(title), title)
    assert "have no `.caption`" in stale["dataset_info"] and "have no" not in fresh["dataset_info"]
    assert stale["install"] is None and stale["optimizer_info"] == ""
    assert fresh["install"] == ("dadaptation" if train_hints.can_install("dadaptation") else None)
    assert "`dadaptation`, which is not installed" in fresh["optimizer_info"]
    assert "**not installed**" in fresh["recipe_info"]


def _events(blocks: Any) -> list[tuple[set[tuple[str, str]], str, int | None]]:
    """((elem_id, event) triggers, callback name, index of the event it follows) of every event, gradio 3.41/4.x."""
    fns = blocks.fns if isinstance(blocks.fns, list) else [blocks.fns[key] for key in sorted(blocks.fns)]
    events = []
    for dependency, block_fn in zip(blocks.config["dependencies"], fns):
        triggers = set()
        for target in dependency.get("targets", []):
            block_id, event = target if isinstance(target, (list, tuple)) else (target, dependency.get("trigger"))
            block = blocks.blocks.get(block_id)
            triggers.add((getattr(block, "elem_id", None) or "", str(event)))
        events.append((triggers, getattr(block_fn.fn, "__name__", ""), dependency.get("trigger_after")))
    return events


def test_every_field_and_every_bulk_change_ends_in_the_hints():
    from lib_lora.ui import build_studio

    blocks = build_studio(StudioContext.for_folder(lambda: None, Path("/nonexistent")))
    events = _events(blocks)
    names = [name for _, name, _ in events]

    def hinted(index: int) -> bool:
        return names[index] == "train_hints" or any(
            after == index and name == "train_hints" for _, name, after in events)

    fields = ("dataset", "output_name", "trigger", "prompts", *train_form.FIELD_NAMES)
    for field in fields:
        own = [i for i, (triggers, _, _) in enumerate(events)
               if any(elem == f"lora_studio_train_{field}" and event in ("change", "input", "blur")
                      for elem, event in triggers)]
        assert any(hinted(i) for i in own), f"{field}: no event of it recomputes the hints"
    for bulk in ("train_recipe", "train_import_toml", "train_switch_optimizer", "train_install"):
        assert hinted(names.index(bulk)), f"{bulk} is not followed by the hints"
