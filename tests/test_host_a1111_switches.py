"""While training holds the A1111 host's model, switching the checkpoint, VAE or SD-UNet in the WebUI settings is
refused (the setting snaps back, the reload never runs) and works again afterwards, also after a failed run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from train_run_helpers import tiny_config
from webui_standin.fake_extension_api import OptionInfo, OptionsStandIn
from webui_standin.fake_modules import make_opts
from webui_standin.models import build_sd_model_standin

from lib_lora.hosts.a1111 import A1111Host
from lib_lora.hosts.a1111_training import MODEL_SETTINGS, model_switches_refused
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.loop import TrainRun

pytestmark = pytest.mark.hostcompat


def webui_options(reloads: list[str]) -> OptionsStandIn:
    """A1111's Options with the three model settings and their reload callbacks (recording into `reloads`)."""
    labels = {key: OptionInfo(default="", onchange=(lambda key=key: reloads.append(key))) for key in MODEL_SETTINGS}
    labels["sd_unet"].onchange = None  # an option without a callback stays as it is
    labels["outdir_samples"] = OptionInfo(default="", onchange=lambda: reloads.append("outdir_samples"))
    return OptionsStandIn(labels, {key: "a" for key in labels})  # config.json holds every value


def test_switches_refused_while_held_and_restored_after():
    reloads: list[str] = []
    opts = webui_options(reloads)
    with model_switches_refused(opts, "training") as guarded:
        assert guarded == ["sd_model_checkpoint", "sd_vae"]
        assert opts.set("sd_model_checkpoint", "other.safetensors") is False
        assert opts.sd_model_checkpoint == "a" and reloads == []
        assert "sd_model_checkpoint cannot change while the loaded model is busy with training" in opts.shown_errors[0]
        assert opts.set("sd_vae", "other.vae.pt") is False
        assert opts.set("outdir_samples", "/tmp/x") is True  # other settings are not ours to refuse
        assert opts.set("sd_unet", "other") is True and opts.data_labels["sd_unet"].onchange is None
    assert reloads == ["outdir_samples"]
    assert opts.set("sd_model_checkpoint", "other.safetensors") is True and reloads[-1] == "sd_model_checkpoint"


def test_restored_after_an_error_and_others_callbacks_kept():
    reloads: list[str] = []
    opts = webui_options(reloads)
    theirs = lambda: reloads.append("theirs")  # noqa: E731
    with pytest.raises(RuntimeError, match="boom"), model_switches_refused(opts, "training"):
        opts.onchange("sd_vae", theirs, call=False)  # someone replaces a callback during the run
        raise RuntimeError("boom")
    assert opts.data_labels["sd_vae"].onchange is theirs
    assert opts.set("sd_model_checkpoint", "b") is True and reloads == ["sd_model_checkpoint"]


@pytest.mark.parametrize("opts", [None, make_opts()], ids=["no opts", "opts without data_labels"])
def test_nothing_to_guard_outside_a1111(opts: Any):
    with model_switches_refused(opts, "training") as guarded:
        assert guarded == []


@pytest.mark.parametrize("ending", ["finished", "crashed"])
def test_a_training_run_refuses_a_checkpoint_switch(tmp_path, ending):
    reloads: list[str] = []
    opts = webui_options(reloads)
    host = A1111Host(build_sd_model_standin("sd1", make_opts()), opts=opts)
    generate_dataset(tmp_path / "data", count=1, repeats=1, sizes=((64, 64),))
    answers: list[bool] = []

    def on_step(progress: Any) -> None:
        answers.append(opts.set("sd_model_checkpoint", f"other-{progress.step}.safetensors"))
        if ending == "crashed":
            raise RuntimeError("injected failure")

    run = TrainRun(tiny_config(tmp_path / "data", tmp_path / "out", max_train_steps=2), host, on_step=on_step)
    if ending == "crashed":
        with pytest.raises(RuntimeError, match="injected failure"):
            run.run()
    else:
        run.run()
    assert answers and not any(answers) and reloads == [] and opts.sd_model_checkpoint == "a"
    assert opts.set("sd_model_checkpoint", "other.safetensors") is True and reloads == ["sd_model_checkpoint"]
    assert torch.is_grad_enabled()
