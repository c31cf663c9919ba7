"""build_studio on the installed gradio (3.41.2 in the A1111 env, 4.40 standalone), without the model."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from lib_lora.errors import ModelLoadError
from lib_lora.ui import StudioContext, build_studio, describe_host
from lib_lora.ui.compat import event_functions

pytestmark = pytest.mark.hostcompat

TAB_IDS = ("lora_studio_dataset_tab", "lora_studio_train_tab", "lora_studio_blocks_tab")


class CountingProvider:
    """A host provider that counts its calls and returns (or raises) what it is given."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def studio(provider: Any, *, standalone: bool) -> Any:
    """build_studio on a context whose folders must not be touched while building."""

    def untouched() -> Any:
        raise AssertionError("a folder was read while building the UI")

    context = StudioContext(host_provider=provider, lora_dirs=untouched, trained_dir=untouched,
                            data_roots=untouched, tagger_dir=untouched, work_dir=untouched, standalone=standalone)
    return build_studio(context)


def panel_refreshers(blocks: Any) -> list[Any]:
    """The model panel's callbacks (refresh button, sub-tab selects, standalone page load)."""
    return [fn for fn in event_functions(blocks) if fn.__name__ == "describe"]


def elem_ids(blocks: Any) -> Iterator[str]:
    for component in blocks.config["components"]:
        elem_id = component.get("props", {}).get("elem_id")
        if elem_id is not None:
            yield elem_id


@pytest.mark.parametrize("standalone", [False, True])
def test_builds_without_calling_the_provider(standalone):
    provider = CountingProvider()
    blocks = studio(provider, standalone=standalone)
    assert provider.calls == 0
    ids = list(elem_ids(blocks))
    assert set(TAB_IDS) <= set(ids)
    assert {"lora_studio_model_info", "lora_studio_model_refresh"} <= set(ids)
    assert ("lora_studio_app" in ids) is standalone


@pytest.mark.parametrize("standalone", [False, True])
def test_every_elem_id_is_prefixed(standalone):
    ids = list(elem_ids(studio(CountingProvider(), standalone=standalone)))
    assert ids and all(elem_id.startswith("lora_studio") for elem_id in ids), ids
    assert len(ids) == len(set(ids))


def test_tabs_say_what_they_do():
    from lib_lora.ui.blocks import tab as blocks_tab
    from lib_lora.ui.dataset import tab as dataset_tab
    from lib_lora.ui.train import tab as train_tab

    assert "WD14" in (dataset_tab.__doc__ or "") and not hasattr(dataset_tab, "STATUS")  # issue #5: the real tab
    assert "in-process" in train_tab.STATUS and "**Start**" in train_tab.STATUS  # the tab has its controls now
    assert "Per-block" in blocks_tab.STATUS and "<lora:name:0.8:NCNF>" in blocks_tab.STATUS
    assert "XY grid" in blocks_tab.STATUS and "analyzer" in blocks_tab.STATUS  # the tab has its controls now


def test_events_call_the_provider_and_show_its_errors_as_a_message():
    provider = CountingProvider(ModelLoadError("cannot read /models/my_model.safetensors"))
    blocks = studio(provider, standalone=False)
    functions = panel_refreshers(blocks)
    assert len(functions) == 4  # the refresh button and the three sub-tabs' select
    text = functions[0]()
    assert provider.calls == 1
    assert text.startswith("**Model not available:**")
    assert r"my\_model.safetensors" in text  # escaped: Markdown must not eat the underscores


def test_no_model_is_a_message():
    assert "No model is loaded" in describe_host(CountingProvider(None))


def test_other_exceptions_are_bugs_and_propagate():
    with pytest.raises(ZeroDivisionError):
        describe_host(CountingProvider(ZeroDivisionError()))


def test_standalone_shows_the_tiny_model_on_page_load():
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host

    host = load_diffusers_host("tiny")
    provider = CountingProvider(host)
    blocks = studio(provider, standalone=True)
    assert provider.calls == 0
    texts = [fn() for fn in panel_refreshers(blocks)]
    assert len(texts) == 5  # refresh, three sub-tab selects, page load
    assert all(text == host.info().as_markdown() for text in texts)
    assert "tiny" in texts[0] and "sd1" in texts[0]


class WebuiEventWrapper:
    """Forge Neo's wrapping of component events, as read in its modules/gradio_extensions.py: a callable taking
    (*args, **kwargs) that keeps gradio's own listener as `replaced_event`."""

    def __init__(self, replaced_event: Any) -> None:
        self.replaced_event = replaced_event

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.replaced_event(*args, **kwargs)


@pytest.fixture
def wrap_events_as_in_neo(monkeypatch):
    """Call it to have every component built afterwards get its events replaced by WebuiEventWrapper (gradio 4)."""
    import gradio as gr

    if not hasattr(gr.Button, "EVENTS"):
        pytest.skip("gradio 3.41 (A1111) has no EVENTS list; Forge Neo runs gradio 4")

    def wrap() -> None:
        classes = {cls for name in gr.components.__all__ + gr.layouts.__all__
                   if isinstance(cls := getattr(gr, name, None), type) and getattr(cls, "EVENTS", None)}
        for cls in classes:
            def wrapped_init(self, *args, _original=cls.__init__, _cls=cls, **kwargs):
                _original(self, *args, **kwargs)
                if type(self) is _cls:
                    for event in self.EVENTS:
                        setattr(self, str(event), WebuiEventWrapper(getattr(self, str(event))))
            monkeypatch.setattr(cls, "__init__", wrapped_init)

    return wrap


def dependency_shapes(blocks: Any) -> list[tuple[int, int]]:
    return [(len(dep["inputs"]), len(dep["outputs"])) for dep in blocks.config["dependencies"]]


def test_events_keep_their_inputs_and_outputs_when_the_webui_wraps_them(wrap_events_as_in_neo):
    plain = studio(CountingProvider(), standalone=False)
    wrap_events_as_in_neo()
    wrapped = studio(CountingProvider(), standalone=False)
    assert any(isinstance(getattr(block, "click", None), WebuiEventWrapper) for block in wrapped.blocks.values())
    assert len(dependency_shapes(plain)) > 20
    assert dependency_shapes(wrapped) == dependency_shapes(plain)
