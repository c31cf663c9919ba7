"""The Train tab's controllers without a browser: the form as data, TOML in and out, the VRAM line, start / stop /
save now on real tiny models, the progress it shows. Pure parts (marked hostcompat) also run under A1111's pins."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lib_lora.dataset.roots import AllowedRoots
from lib_lora.errors import LoraStudioError
from lib_lora.jobs import GpuBusyError, JobSnapshot
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.config import OPTION_PART, TRAIN_HELP, TrainConfig
from lib_lora.train.errors import ConfigError
from lib_lora.train.recipes import RECIPES
from lib_lora.ui.context import StudioContext
from lib_lora.ui.train import form as train_form
from lib_lora.ui.train.queue import QueuePanel
from lib_lora.ui.train.session import OwnFields, TrainSession, TrainUIError
from lib_lora.ui.train.tab import OWN, TrainHandlers
from lib_lora.ui.train.view import loss_curve_image, progress_text, result_text

hostcompat = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.fixtures",)  # a1111_host, sd_model, standin_arch (the WebUI's model stand-in)

TINY_VALUES = {"resolution": "64", "network_dim": "2", "network_alpha": "2", "learning_rate": "1e-3",
               "caption_extension": ".txt", "max_train_steps": "2", "seed": "3", "train_batch_size": "1"}
SAMPLE_PROMPT = "tinychar, solo --s 1 --w 64 --h 64"


def form(**changes: Any) -> dict[str, Any]:
    return {**train_form.default_values(), **TINY_VALUES, **changes}


def context_for(root: Path, host: Any = None) -> StudioContext:
    return StudioContext.for_folder(lambda: host, root)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    generate_dataset(tmp_path / "datasets", count=2, repeats=10, name="tinychar")
    return tmp_path


# --- the form as data -------------------------------------------------------------------------------------------


@hostcompat
def test_every_option_has_a_field_labelled_with_its_name_and_help_or_is_the_tabs_own():
    assert set(train_form.FIELD_NAMES) | set(train_form.OWN_FIELDS) >= set(OPTION_PART)
    for f in train_form.FIELDS:
        if f.name in OPTION_PART:
            assert f.label == f.name and f.help == TRAIN_HELP[f.name]
        else:
            assert f.name in train_form.NETWORK_ARG_FIELDS and f.label == f"{f.name} (network_args)"
    basic = [f.name for f in train_form.grouped()["basic"]]
    for name in ("network_dim", "network_alpha", "learning_rate", "max_train_steps", "max_train_epochs",
                 "resolution", "train_batch_size", "optimizer_type", "lr_scheduler", "network_module", "algo",
                 "train_blocks"):
        assert name in basic
    assert "AdamW" in train_form.FIELD_BY_NAME["optimizer_type"].choices


@hostcompat
@pytest.mark.parametrize("name, text, expected", [
    ("network_dim", "16", 16),
    ("network_dim", " 8 ", 8),
    ("learning_rate", "1e-4", 1e-4),
    ("learning_rate", "0.0005", 0.0005),
    ("network_alpha", "16", 16),
    ("max_train_epochs", "", None),
    ("seed", "", None),
    ("resolution", "512,768", "512,768"),
    ("caption_extension", ".txt", ".txt"),
    ("keep_tokens_separator", "", ""),
    ("conv_dim", "", None),
    ("conv_dim", "8", 8),
    ("algo", "", None),
    ("gradient_checkpointing", True, True),
    ("optimizer_args", "weight_decay=0.01\nbetas=0.9,0.99", ["weight_decay=0.01", "betas=0.9,0.99"]),
])
def test_field_values_become_option_values(name, text, expected):
    value = train_form.from_form(train_form.FIELD_BY_NAME[name], text)
    assert value == expected and type(value) is type(expected)


@hostcompat
@pytest.mark.parametrize("name, text, key, reason", [
    ("network_dim", "abc", "network_dim", "whole number"),
    ("network_dim", "2.5", "network_dim", "whole number"),
    ("max_train_steps", "", "max_train_steps", "must be set"),
    ("learning_rate", "fast", "learning_rate", "number"),
    ("learning_rate", "nan", "learning_rate", "finite"),
    ("conv_dim", "x", "network_args.conv_dim", "whole number"),
])
def test_bad_field_values_name_the_option(name, text, key, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        train_form.from_form(train_form.FIELD_BY_NAME[name], text)
    assert caught.value.key == key


@hostcompat
@pytest.mark.parametrize("changes, key", [
    ({"network_dim": "0"}, "network_dim"),
    ({"resolution": "500"}, "resolution"),
    ({"lr_scheduler": "cosinus"}, "lr_scheduler"),
    ({"algo": "loha"}, "network_args.algo"),  # needs lycoris.kohya
    ({"full_fp16": True}, "full_fp16"),
    ({"network_args": "nonsense=1"}, "network_args.nonsense"),
])
def test_form_checks_reach_the_config_and_name_the_option(changes, key):
    with pytest.raises(ConfigError) as caught:
        train_form.config_from(form(**changes))
    assert caught.value.key == key


TOML_CONFIGS = [
    {},
    {"network_module": "lycoris.kohya", "network_args": ["algo=loha", "conv_dim=4", "preset=attn-mlp"],
     "network_dim": 8, "network_alpha": 4.0},
    {"network_dim": 64, "network_alpha": 16, "network_args": ["conv_dim=8", "conv_alpha=1", "train_blocks=CHAR"],
     "optimizer_type": "Prodigy", "optimizer_args": ["weight_decay=0.01", "betas=0.9,0.99"], "learning_rate": 1.0,
     "lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 3, "lr_warmup_steps": 0.05,
     "resolution": "768,512", "enable_bucket": True, "min_bucket_reso": 256, "max_bucket_reso": 1024,
     "shuffle_caption": True, "keep_tokens": 1, "noise_offset": 0.05, "min_snr_gamma": 5, "max_train_epochs": 10,
     "save_every_n_epochs": 2, "mixed_precision": "bf16", "gradient_checkpointing": True, "clip_skip": 2,
     "save_precision": "fp16", "caption_prefix": "a photo of", "seed": 42, "training_comment": "seed notes"},
]


@hostcompat
@pytest.mark.parametrize("options", TOML_CONFIGS, ids=["defaults", "loha", "many"])
def test_config_to_form_and_back_is_the_same_config(options):
    config = TrainConfig.from_dict(options)
    values = train_form.values_of(config)
    assert set(values) == set(train_form.FIELD_NAMES)
    assert train_form.config_from(values) == config


@hostcompat
@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_fills_every_field_with_its_values(name):
    recipe = RECIPES[name]
    handlers = TrainHandlers(TrainSession(context_for(Path("/nonexistent"))))
    updates = handlers.recipe(recipe.title)
    assert set(train_form.FIELD_NAMES) <= set(updates) and not set(OWN) & set(updates)
    assert train_form.config_from({n: updates[n] for n in train_form.FIELD_NAMES}) == TrainConfig.from_dict(
        dict(recipe.values))
    assert recipe.source[:20] in updates["recipe_info"].replace("\\", "")


@hostcompat
def test_a_recipe_replaces_earlier_edits_and_the_character_one_trains_the_character_blocks():
    handlers = TrainHandlers(TrainSession(context_for(Path("/nonexistent"))))
    updates = handlers.recipe(RECIPES["character-sd1"].title)
    assert (updates["network_dim"], updates["network_alpha"], updates["train_blocks"]) == (
        "16", "4", "IN04-IN07,OUT03-OUT06")
    assert updates["optimizer_type"] == "DAdaptLion" and updates["shuffle_caption"] is True
    style = handlers.recipe(RECIPES["style"].title)
    assert style["train_blocks"] == "" and style["optimizer_args"] == "" and style["keep_tokens"] == "0"
    assert handlers.recipe(None) == {}


# --- TOML import and export through the tab -----------------------------------------------------------------------


@hostcompat
def test_export_then_import_gives_the_same_form(workspace):
    session = TrainSession(context_for(workspace))
    own = OwnFields(dataset=str(workspace / "datasets"), output_name="mychar", trigger="tinychar",
                    prompts=SAMPLE_PROMPT)
    values = form(network_dim="8", network_args="rank_dropout=0.1", conv_dim="4", train_blocks="CHAR",
                  shuffle_caption=True, keep_tokens="1", sample_every_n_steps="5")
    exported = session.export_toml(own, values)
    assert Path(exported["toml_file"]).is_file() and "network_dim = 8" in exported["toml"]
    assert (workspace / "lora_studio" / "train" / "mychar.toml").read_text(encoding="utf-8") == exported["toml"]
    for text, upload in ((exported["toml"], None), ("", exported["toml_file"])):
        imported = session.import_toml(text, upload)
        assert {name: imported[name] for name in train_form.FIELD_NAMES} == train_form.values_of(
            session.config(own, values))
        assert (imported["dataset"], imported["output_name"], imported["trigger"], imported["prompts"]) == (
            own.dataset, "mychar", "tinychar", SAMPLE_PROMPT)
        assert imported["status"] == "Config loaded into the form."  # output_dir is the tab's own LoRA folder


@hostcompat
@pytest.mark.parametrize("text, expected", [
    ("network_dim = 'x'", "network_dim"),
    ("[training_arguments\nmax_train_steps = 1", "not valid TOML"),
    ("learning_rat = 1e-4", "did you mean learning_rate"),
    ("vae = 'x.safetensors'", "the host's own VAE"),
])
def test_importing_a_bad_config_says_what_is_wrong(workspace, text, expected):
    handlers = TrainHandlers(TrainSession(context_for(workspace)))
    outputs = {name: name for name in ("status",)}
    from lib_lora.ui.wiring import bound

    status = bound(handlers.import_toml, outputs, tab="Train")(text, None)["status"]
    assert status.startswith("**Error:**") and expected in status.replace("\\", "")


@hostcompat
@pytest.mark.parametrize("changes, expected", [
    ({"network_dim": "abc"}, "network_dim = 'abc': expected a whole number"),
    ({"learning_rate": "-1"}, "learning_rate = -1"),
    ({"dataset": "/"}, "outside the allowed folders"),
])
def test_start_with_a_bad_value_is_a_message_naming_the_option_and_starts_nothing(workspace, changes, expected):
    from lib_lora.ui.wiring import bound

    session = TrainSession(context_for(workspace, host=object()))
    own = {"dataset": str(workspace / "datasets"), "output_name": "x", "overwrite": False, "trigger": "",
           "prompts": ""}
    values = form(**{k: v for k, v in changes.items() if k not in own})
    own.update({k: v for k, v in changes.items() if k in own})
    args = [own[name] for name in OWN] + [values[name] for name in train_form.FIELD_NAMES]
    outputs = {name: name for name in ("progress", "curve", "sample", "output", "status")}
    updates = [bound(TrainHandlers(session).start, outputs, tab="Train")(*args)]
    assert len(updates) == 1 and updates[0]["status"].startswith("**Error:**")
    assert expected in updates[0]["status"].replace("\\", "")
    assert session.job is None and not (workspace / "Lora" / "x.safetensors").exists()


@hostcompat
def test_import_notes_what_the_tab_does_not_use(workspace):
    status = TrainSession(context_for(workspace)).import_toml(
        "pretrained_model_name_or_path = 'x.ckpt'\nxformers = true\nsample_prompts = 'p.toml'\n"
        "output_dir = '/elsewhere'\n")["status"]
    for word in ("pretrained", "xformers", "sample", "elsewhere"):
        assert word in status


# --- dataset folder, names, samples -------------------------------------------------------------------------------


@hostcompat
def test_dataset_is_described_and_confined_to_the_allowed_roots(workspace, tmp_path_factory):
    session = TrainSession(context_for(workspace))
    text = session.describe_dataset(str(workspace / "datasets"), ".txt")
    assert "`10_tinychar`: 2 images × 10 repeats = 20 per epoch" in text and "caption" not in text
    assert "2 of 2 images have no `.caption`" in session.describe_dataset(str(workspace / "datasets"), ".caption")
    assert session.dataset_choices() == [str((workspace / "datasets").resolve()), "10_tinychar"]  # relative to the root
    assert ": 2 images ×" in session.describe_dataset("10_tinychar", ".txt")  # a name as listed is found in the roots
    outside = tmp_path_factory.mktemp("elsewhere")
    assert "outside the allowed folders" in session.describe_dataset(str(outside), ".txt")
    with pytest.raises(ConfigError, match="choose a dataset"):
        session.config(OwnFields(output_name="x"), form())


@hostcompat
@pytest.mark.parametrize("own, values, key", [
    (OwnFields(output_name=""), {}, "output_name"),
    (OwnFields(output_name="a/b"), {}, "output_name"),
    (OwnFields(output_name="x"), {"sample_every_n_steps": "5"}, "sample_prompts"),
])
def test_own_fields_are_checked(workspace, own, values, key):
    own = OwnFields(**{**own.__dict__, "dataset": str(workspace / "datasets")})
    with pytest.raises(ConfigError) as caught:
        TrainSession(context_for(workspace)).config(own, form(**values))
    assert caught.value.key == key


@hostcompat
def test_trigger_word_is_the_activation_text_and_the_default_sample_prompt(workspace):
    session = TrainSession(context_for(workspace))
    config = session.config(OwnFields(str(workspace / "datasets"), "mychar", trigger="tinychar"), form())
    assert config.run.activation_text == "tinychar"
    assert config.run.sample_prompts == str(workspace / "lora_studio" / "train" / "mychar-prompts.txt")
    assert OwnFields(trigger="tinychar").sample_text == "tinychar"
    assert OwnFields(trigger="tinychar", prompts="other --s 2").sample_text == "other --s 2"
    assert session.config(OwnFields(str(workspace / "datasets"), "x"), form()).run.sample_prompts is None


# --- what the progress panel shows ----------------------------------------------------------------------------------


def _snapshot(state: str = "running", **extra: Any) -> JobSnapshot:
    return JobSnapshot(name="training", state=state, extra=extra, message=extra.pop("message", ""))


STEP = {"stage": "train", "step": 12, "total_steps": 400, "epoch": 1, "total_epochs": 3, "loss": 0.12345,
        "loss_avg": 0.1, "lr": 1e-4, "it_per_s": 1.5, "eta_s": 259.0, "memory_bytes": 3 * 1024**3}


@hostcompat
@pytest.mark.parametrize("snapshot, expected", [
    (_snapshot(message="caching latents", stage="prepare data"), ["**caching latents**"]),
    (_snapshot(**STEP), ["**step 12/400**", "epoch 1/3", "loss 0.1235 (average 0.1000)", "1.50 it/s",
                         "ETA 4:19", "lr 0.0001", "GPU memory 3.00 GiB"]),
    (_snapshot(**{**STEP, "memory_bytes": None, "it_per_s": None, "eta_s": None}), ["GPU memory —"]),
    (_snapshot("cancelling", **STEP), ["stopping…"]),
    (_snapshot(**{**STEP, "stage": "save"}), ["save"]),
])
def test_progress_text(snapshot, expected):
    text = progress_text(snapshot)
    for part in expected:
        assert part in text


@hostcompat
def test_result_text_for_each_ending():
    assert "Training failed:" in result_text(JobSnapshot(name="t", state="failed", error="loss is nan"))
    assert "nothing was written" in result_text(JobSnapshot(name="t", state="cancelled"))


@hostcompat
def test_loss_curve_is_drawn_from_its_points():
    assert loss_curve_image([]) is None
    falling = loss_curve_image([(1, 1.0), (50, 0.5), (100, 0.1)], size=(200, 100))
    rising = loss_curve_image([(1, 0.1), (50, 0.5), (100, 1.0)], size=(200, 100))
    flat = loss_curve_image([(5, 0.3)], size=(200, 100))
    assert falling.size == (200, 100) and flat is not None

    def blue_rows(image: Image.Image, x: int) -> list[int]:
        return [y for y in range(image.height) if image.getpixel((x, y)) == (37, 99, 235)]

    early, late = 60, 180
    assert min(blue_rows(falling, early)) < min(blue_rows(falling, late))  # high loss on the left
    assert min(blue_rows(rising, early)) > min(blue_rows(rising, late))


# --- runs on the tiny standalone model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_host():
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host

    return load_diffusers_host("tiny")


def _weights(host: Any) -> dict[str, torch.Tensor]:
    modules = {"unet": host.unet, "vae": host.vae, **{f"te{i}": te for i, te in enumerate(host.text_encoders)}}
    return {f"{root}.{name}": t.detach().clone() for root, module in modules.items()
            for name, t in module.state_dict().items()}


def _wait(session: TrainSession, condition, timeout: float = 240) -> JobSnapshot:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = session.job.snapshot()
        if condition(snapshot):
            return snapshot
        time.sleep(0.05)
    raise AssertionError(f"timed out; last: {session.job.snapshot().describe()}")


def test_vram_estimate_line(workspace, tiny_host):
    session = TrainSession(context_for(workspace, tiny_host))
    text = session.estimate(OwnFields(output_name="x"), form())
    assert "LoRA weights" in text and "activations" in text and "RAM, not VRAM" in text
    bigger = session.estimate(OwnFields(output_name="x"), form(network_dim="32"))
    assert text != bigger
    assert "fix the settings first" in session.estimate(OwnFields(output_name="x"), form(network_dim="abc"))
    assert "No model is loaded" in TrainSession(context_for(workspace)).estimate(OwnFields(output_name="x"), form())


def test_a_run_writes_the_lora_its_card_and_preview_and_leaves_the_host_as_it_was(workspace, tiny_host):
    session = TrainSession(context_for(workspace, tiny_host), poll_seconds=0.05)
    handlers = TrainHandlers(session)
    before = _weights(tiny_host)
    own = OwnFields(str(workspace / "datasets"), "mychar", trigger="tinychar", prompts=SAMPLE_PROMPT)
    args = [getattr(own, name) for name in OWN] + [form()[name] for name in train_form.FIELD_NAMES]
    started = handlers.start(*args)
    updates = [started, *handlers.follow_started(started["run_token"])]
    final = updates[-1]
    lora = workspace / "Lora" / "mychar.safetensors"
    assert final["output"] == str(lora) and lora.is_file() and "**Done:**" in final["status"]
    assert json.loads((workspace / "Lora" / "mychar.json").read_text())["activation text"] == "tinychar"
    assert (workspace / "Lora" / "mychar.preview.png").is_file()
    assert any(isinstance(u.get("curve"), Image.Image) for u in updates)
    assert any(isinstance(u.get("sample"), Image.Image) for u in updates)
    assert "step 2/2" in final["progress"]
    after = _weights(tiny_host)
    assert all(torch.equal(before[key], after[key]) for key in before)
    with pytest.raises(TrainUIError, match="already exists: tick Overwrite"):
        session.start(own, form())
    session.start(OwnFields(**{**own.__dict__, "overwrite": True}), form(max_train_steps="1"))
    assert _wait(session, lambda s: not s.active).state == "done"


def test_stop_and_save_now_keep_what_was_learned_and_the_gate_refuses_generation(workspace, tiny_host):
    context = context_for(workspace, tiny_host)
    session = TrainSession(context, poll_seconds=0.05)
    own = OwnFields(str(workspace / "datasets"), "long")
    session.start(own, form(max_train_steps="500"))
    with pytest.raises(TrainUIError, match="already running: long, "):
        session.start(own, form(max_train_steps="500"))
    assert session.save_now()["status"].startswith("Saving")
    saved = _wait(session, lambda s: s.extra.get("saved"))
    with pytest.raises(GpuBusyError, match="training"), context.gpu.hold("generation"):
        pass
    assert "Stopping after the current step" in session.stop()["status"]
    final = list(session.follow())[-1]
    result = session.job.snapshot().result
    assert result.cancelled and 0 < result.steps < 500
    assert Path(saved.extra["saved"]).is_file() and Path(final["output"]).is_file()
    assert final["output"] != saved.extra["saved"] and "Stopped and saved" in final["status"]
    assert context.gpu.holder is None
    assert session.stop()["status"] == "No training run is going."


def test_start_is_refused_while_the_model_is_busy(workspace, tiny_host):
    context = context_for(workspace, tiny_host)
    session = TrainSession(context)
    with context.gpu.hold("XY grid"), pytest.raises(TrainUIError, match="busy with XY grid"):
        session.start(OwnFields(str(workspace / "datasets"), "x"), form())
    assert session.job is None


# --- the queue ----------------------------------------------------------------------------------------------


@hostcompat
def test_queue_adds_lists_removes_and_outlives_the_tab(workspace):
    session = TrainSession(context_for(workspace))
    panel = QueuePanel(session)
    dataset = str(workspace / "datasets")
    for name in ("first", "second"):
        panel.add(OwnFields(dataset, name), form())
    with pytest.raises(ConfigError, match="already queued"):
        panel.add(OwnFields(dataset, "first"), form())
    listing = QueuePanel(TrainSession(context_for(workspace))).listing()  # a new tab reads the saved queue
    assert "1. **first**" in listing["queue_list"] and "2. **second**" in listing["queue_list"]
    assert listing["queue_pick"]["choices"] in (["first", "second"], [("first", "first"), ("second", "second")])
    assert "Removed" in panel.remove("first")["status"]
    assert [run.name for run in QueuePanel(TrainSession(context_for(workspace))).queue().runs] == ["second"]
    with pytest.raises(LoraStudioError, match="not queued"):
        panel.remove("first")


def test_queue_trains_its_runs_in_turn(workspace, tiny_host):
    session = TrainSession(context_for(workspace, tiny_host), poll_seconds=0.05)
    handlers = TrainHandlers(session)
    dataset = str(workspace / "datasets")
    handlers.queue.add(OwnFields(dataset, "qa"), form(max_train_steps="1"))
    handlers.queue.add(OwnFields(dataset, "qb"), form(max_train_steps="1", network_dim="3"))
    started = handlers.queue_run()
    updates = [started, *handlers.queue_follow(started["run_token"])]
    status = next(u["status"] for u in reversed(updates) if "status" in u)
    assert "Queue finished" in status and "qa: wrote" in status and "qb: wrote" in status
    assert (workspace / "Lora" / "qa.safetensors").is_file() and (workspace / "Lora" / "qb.safetensors").is_file()
    assert updates[-1]["queue_list"] == "The queue is empty."


# --- a run on the WebUI's model (A1111 stand-in), under A1111's pins too ------------------------------------------


@hostcompat
@pytest.mark.parametrize("standin_arch", ["sd1"])
def test_a_run_on_the_a1111_model_holds_the_webui_gate_and_writes_the_lora(workspace, a1111_host, sd_model):
    from lib_lora.hosts.gate import WEBUI_GPU

    context = StudioContext(host_provider=lambda: a1111_host, lora_dirs=lambda: [workspace / "Lora"],
                            trained_dir=lambda: workspace / "Lora", data_roots=lambda: [workspace / "datasets"],
                            tagger_dir=lambda: workspace, work_dir=lambda: workspace / "work", gpu=WEBUI_GPU)
    session = TrainSession(context, poll_seconds=0.05)
    before = {name: t.clone() for name, t in sd_model.state_dict().items()}
    session.start(OwnFields(str(workspace / "datasets"), "webui", trigger="tinychar"), form(max_train_steps="40"))
    _wait(session, lambda s: s.extra.get("step", 0) >= 1)
    assert WEBUI_GPU.holder == "training"
    session.stop()
    final = list(session.follow())[-1]
    assert Path(final["output"]).is_file() and final["output"].startswith(str(workspace / "Lora" / "webui"))
    assert WEBUI_GPU.holder is None
    after = sd_model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


@hostcompat
@pytest.mark.parametrize("name", train_form.DATA_PATH_FIELDS)
def test_file_and_folder_options_are_confined_to_the_allowed_roots(workspace, tmp_path_factory, name):
    session = TrainSession(context_for(workspace))
    own = OwnFields(dataset=str(workspace / "datasets"), output_name="x")
    outside = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(ConfigError, match=f"{name} = .*outside the allowed folders"):
        session.config(own, form(**{name: str(outside)}))
    with pytest.raises(ConfigError, match=f"{name} = .*outside the allowed folders"):
        session.config(own, form(**{name: "../" + outside.name}))
    inside = workspace / "datasets" / "10_tinychar"
    checked = train_form.data_paths_checked(form(**{name: "10_tinychar"}), AllowedRoots([workspace / "datasets"]))
    assert checked == {name: str(inside.resolve())}


@hostcompat
def test_a_slider_needs_no_dataset_but_a_typed_one_must_be_allowed(workspace, tmp_path_factory):
    session = TrainSession(context_for(workspace))
    values = form(training_mode="slider", slider_prompt="red hair")
    assert session.config(OwnFields(output_name="x"), values).train_data_dir is None
    outside = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(LoraStudioError, match="outside the allowed folders"):
        session.config(OwnFields(dataset=str(outside), output_name="x"), values)
