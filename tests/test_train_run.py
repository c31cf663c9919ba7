"""TrainRun on the tiny diffusers hosts: the saved file and its card, the host left untouched, stops, saves, jobs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from PIL import Image
from train_run_helpers import tiny_config

from lib_lora.blocks.presets import PresetBook
from lib_lora.hosts.base import GenerationRequest
from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.jobs import GpuBusyError, GpuGate, Job
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import load_lora_file
from lib_lora.networks.keys import build_target_index
from lib_lora.networks.loaded import as_applied, load_network
from lib_lora.networks.tools.info import network_info
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.errors import ConfigError
from lib_lora.train.loop import TrainRun
from lib_lora.train.network.trainable import TrainableNetwork
from lib_lora.train.queue import TrainQueue
from lib_lora.train.vram import estimate_vram

pytest.importorskip("diffusers")

REQUEST = GenerationRequest(prompt="tinychar, red hair", steps=3, cfg_scale=5.0, width=64, height=64, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, count=4, repeats=1, sizes=((64, 64),))
    return root


@pytest.fixture(scope="module")
def host():
    return load_diffusers_host("tiny")


def render(host) -> np.ndarray:
    return np.asarray(host.generate(REQUEST))


def test_a_run_writes_the_lora_its_metadata_samples_and_card(tmp_path, dataset, host):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# samples\ntinychar, 1girl --s 2 --d 5\nlandscape --s 2 --w 64 --h 64\n", encoding="utf-8")
    config = tiny_config(dataset, tmp_path / "out", max_train_steps=3, sample_prompts=str(prompts),
                         sample_every_n_steps=2, notes="made by a test", training_comment="hello")
    result = TrainRun(config, host).run()

    assert result.output == tmp_path / "out" / "tinylora.safetensors" and result.output.is_file()
    assert (result.steps, result.cancelled, len(result.loss_history)) == (3, False, 3)
    assert all(np.isfinite(result.loss_history))
    metadata = load_lora_file(result.output).metadata
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_network_dim"] == "4"
    assert (metadata["ss_steps"], metadata["ss_max_train_steps"], metadata["ss_seed"]) == ("3", "3", "1")
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["modelspec.architecture"].endswith("/lora")
    assert metadata["ss_optimizer"].endswith("AdamW") and metadata["ss_learning_rate"] == "0.001"
    assert metadata["ss_training_comment"] == "hello" and "sshs_model_hash" in metadata
    assert metadata["ss_resolution"] == "(64, 64)" and metadata["ss_num_train_images"] == "4"
    frequency = json.loads(metadata["ss_tag_frequency"])
    assert frequency["1_tinychar"]["tinychar"] == 4 and frequency["1_tinychar"]["1girl"] == 4
    assert json.loads(metadata["ss_dataset_dirs"]) == {"1_tinychar": {"n_repeats": 1, "img_count": 4}}
    assert float(metadata["ss_training_finished_at"]) >= float(metadata["ss_training_started_at"])

    # samples at step 2 and after the last step, two prompts each; the last round's first image is the preview
    names = sorted(path.name for path in result.samples)
    assert names == ["tinylora_000002_00.png", "tinylora_000002_01.png", "tinylora_000003_00.png",
                     "tinylora_000003_01.png"]
    card = json.loads((tmp_path / "out" / "tinylora.json").read_text(encoding="utf-8"))
    assert card["activation text"] == "tinychar" and card["sd version"] == "SD1"
    assert card["preferred weight"] == 1.0 and card["notes"] == "made by a test"
    preview = tmp_path / "out" / "tinylora.preview.png"
    assert preview.read_bytes() == (tmp_path / "out" / "sample" / "tinylora_000003_00.png").read_bytes()
    with Image.open(preview) as image:
        assert image.size == (64, 64)

    network = load_network(result.output)
    assert network.format == "lora" and network.arch == "sd1"
    assert any(key.startswith("lora_te_") for key in network.modules)
    assert any(key.startswith("lora_unet_") for key in network.modules)


def test_lora_info_shows_the_metadata_and_tag_frequency(tmp_path, dataset, host):
    from lib_lora.cli.main import main

    result = TrainRun(tiny_config(dataset, tmp_path, max_train_steps=1), host).run()
    out = io.StringIO()
    assert main(["lora", "info", str(result.output)], out=out) == 0
    text = out.getvalue()
    assert "ss_output_name: tinylora" in text and "ss_network_dim: 4" in text and "ss_steps: 1" in text
    assert "top tags: 1girl (4), long hair (4), solo (4), tinychar (4), " in text


def test_sidecar_keeps_what_the_user_wrote(tmp_path, dataset, host):
    (tmp_path / "tinylora.json").write_text(json.dumps({"description": "mine", "notes": "keep me"}), encoding="utf-8")
    TrainRun(tiny_config(dataset, tmp_path, max_train_steps=1, activation_text="zq, tinychar"), host).run()
    card = json.loads((tmp_path / "tinylora.json").read_text(encoding="utf-8"))
    assert card["description"] == "mine" and card["notes"] == "keep me" and card["activation text"] == "zq, tinychar"
    assert not (tmp_path / "tinylora.preview.png").exists()  # no samples, no preview


@pytest.mark.parametrize("ending", ["finished", "stopped", "crashed"])
def test_the_host_is_bit_identical_after_a_run(tmp_path, dataset, host, ending):
    before_image, before = render(host), snapshot_host(host)
    rng_before = torch.get_rng_state()
    config = tiny_config(dataset, tmp_path, max_train_steps=4, gradient_checkpointing=True,
                         mixed_precision="bf16", clip_skip=2)
    run_holder: list[TrainRun] = []

    def on_step(progress):
        assert host.clip_skip == 2  # set for the run only
        assert any("_conv_forward" in module.__dict__ for module in host.unet.modules())  # CPU kernel routing on
        if progress.step == 2 and ending == "stopped":
            run_holder[0].request_stop()
        if progress.step == 2 and ending == "crashed":
            raise RuntimeError("injected failure at step 2")

    run = TrainRun(config, host, on_step=on_step)
    run_holder.append(run)
    if ending == "crashed":
        with pytest.raises(RuntimeError, match="injected failure"):
            run.run()
    else:
        result = run.run()
        assert result.cancelled == (ending == "stopped")
        assert result.steps == (2 if ending == "stopped" else 4)
    assert_same_state(before, snapshot_host(host))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the run seeds its own draws and gives the state back
    assert np.array_equal(render(host), before_image)
    assert host.clip_skip == 1
    for module in host.unet.modules():
        assert "forward" not in module.__dict__ and not getattr(module, "gradient_checkpointing", False)
    saved = sorted(path.name for path in tmp_path.glob("*.safetensors"))
    assert saved == {"finished": ["tinylora.safetensors"], "stopped": ["tinylora-step00000002.safetensors"],
                     "crashed": []}[ending]


def test_a_cancelled_job_saves_what_was_learned_and_reports_progress(tmp_path, dataset, host):
    gate = GpuGate()
    config = tiny_config(dataset, tmp_path, max_train_steps=50, save_state=True)
    holders: list[str | None] = []
    job_box: list[Job] = []

    def on_step(progress):
        holders.append(gate.holder)
        if progress.step == 3:
            job_box[0].cancel()

    run = TrainRun(config, host, gpu=gate, on_step=on_step)
    job = run.job()
    job_box.append(job)
    snapshot = job.start().wait(timeout=300)
    assert snapshot.state == "done" and snapshot.result.cancelled
    assert snapshot.result.output == tmp_path / "tinylora-step00000003.safetensors"
    assert (tmp_path / "tinylora-step00000003-state" / "train_state.json").is_file()
    assert (tmp_path / "tinylora-step00000003.json").is_file()
    extra = snapshot.extra
    assert (snapshot.done, snapshot.total, extra["step"], extra["total_steps"]) == (3, 50, 3, 50)
    assert extra["total_epochs"] == 25 and np.isfinite(extra["loss"]) and len(extra["loss_curve"]) == 3
    assert extra["saved"] == str(snapshot.result.output)
    assert holders == ["training"] * 3 and gate.holder is None


def test_the_gate_refuses_a_second_holder(tmp_path, dataset, host):
    gate = GpuGate()
    with gate.hold("generation"), pytest.raises(GpuBusyError, match="generation"):
        TrainRun(tiny_config(dataset, tmp_path, max_train_steps=1), host, gpu=gate).run()


def test_periodic_saves_rotate_and_save_now(tmp_path, dataset, host):
    runs: list[TrainRun] = []

    def on_step(progress):
        if progress.step == 1:
            runs[0].request_save()

    config = tiny_config(dataset, tmp_path, max_train_steps=5, save_every_n_steps=2, save_last_n_steps=2,
                         save_state=True)
    run = TrainRun(config, host, on_step=on_step)
    runs.append(run)
    result = run.run()
    files = sorted(path.name for path in tmp_path.glob("*.safetensors"))
    # step 1: save now; 2 and 4: every 2 steps; at 4, step saves older than the last 2 steps go (1 and 2); 5: final
    assert files == ["tinylora-step00000004.safetensors", "tinylora.safetensors"]
    states = sorted(path.name for path in tmp_path.glob("*-state"))
    assert states == ["tinylora-state", "tinylora-step00000004-state"]
    assert [p.name for p in result.saved] == ["tinylora-step00000001.safetensors", "tinylora-step00000002"
                                              ".safetensors", "tinylora-step00000004.safetensors",
                                              "tinylora.safetensors"]


def test_epoch_saves_rotate_and_epoch_samples(tmp_path, dataset, host):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tinychar --s 1\n", encoding="utf-8")
    config = tiny_config(dataset, tmp_path, max_train_epochs=4, save_every_n_epochs=1, save_last_n_epochs=2,
                         sample_prompts=str(prompts), sample_every_n_epochs=2, sample_at_first=True)
    result = TrainRun(config, host).run()
    assert (result.steps, result.epochs) == (8, 4)  # 4 images, batch 2: 2 steps an epoch
    files = sorted(path.name for path in tmp_path.glob("*.safetensors"))
    assert files == ["tinylora-000002.safetensors", "tinylora-000003.safetensors", "tinylora.safetensors"]
    assert load_lora_file(tmp_path / "tinylora-000002.safetensors").metadata["ss_epoch"] == "2"
    # before the first step, after epoch 2 (step 4), and at the end (epoch 4 is the last: no epoch sample)
    assert [path.name for path in result.samples] == ["tinylora_000000_00.png", "tinylora_000004_00.png",
                                                      "tinylora_000008_00.png"]


def test_half_precision_network_and_saved_dtype(tmp_path, dataset, host):
    before = snapshot_host(host)
    config = tiny_config(dataset, tmp_path, max_train_steps=2, mixed_precision="bf16", full_bf16=True,
                         save_precision="fp16")
    result = TrainRun(config, host).run()
    assert all(np.isfinite(result.loss_history))
    tensors = load_lora_file(result.output).tensors
    assert {t.dtype for k, t in tensors.items() if not k.endswith(".alpha")} == {torch.float16}
    assert_same_state(before, snapshot_host(host))


def test_the_file_renders_the_same_in_diffusers_and_in_our_merge(tmp_path, dataset, host):
    pytest.importorskip("peft")
    config = tiny_config(dataset, tmp_path, max_train_steps=3, learning_rate=0.05, network_alpha=8)
    output = TrainRun(config, host).run().output
    generator = torch.Generator().manual_seed(0)

    def image(pipeline):
        return pipeline("tinychar, red hair", num_inference_steps=3, height=64, width=64, guidance_scale=5.0,
                        generator=generator.manual_seed(0), output_type="np").images[0]

    base = image(host.pipeline)
    with WeightMerger(build_target_index(host)).applied([as_applied(load_network(output))]):
        ours = image(host.pipeline)
    reference = load_diffusers_host("tiny").pipeline
    reference.load_lora_weights(str(tmp_path), weight_name=output.name, adapter_name="trained")
    theirs = image(reference)
    assert np.abs(ours - base).max() > 1e-3, "the trained LoRA must change the image"
    assert np.allclose(ours, theirs, atol=1e-4), np.abs(ours - theirs).max()


def test_sdxl_host_trains_and_says_sdxl(tmp_path, dataset):
    host = load_diffusers_host("tiny-sdxl")
    before = snapshot_host(host)
    config = tiny_config(dataset, tmp_path, max_train_steps=2, network_train_unet_only=True,
                         cache_text_encoder_outputs=True)
    result = TrainRun(config, host).run()
    assert_same_state(before, snapshot_host(host))
    metadata = load_lora_file(result.output).metadata
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert json.loads((tmp_path / "tinylora.json").read_text(encoding="utf-8"))["sd version"] == "SDXL"
    assert all(key.startswith("lora_unet_") for key in load_network(result.output).modules)


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"v_parameterization": True}, "v_parameterization", "predicts epsilon"),
        ({"learning_rate": 0.0}, "learning_rate", "nothing would train"),
        ({"output_dir": None}, "output_dir", "set the folder"),
    ],
)
def test_settings_the_host_cannot_take(tmp_path, dataset, host, overrides, key, reason):
    before = snapshot_host(host)
    config = tiny_config(dataset, tmp_path, max_train_steps=1).with_values(**overrides)
    with pytest.raises(ConfigError, match=reason) as caught:
        TrainRun(config, host, output_dir=None if key == "output_dir" else tmp_path).run()
    assert caught.value.key == key
    assert_same_state(before, snapshot_host(host))


def test_a_queue_runs_each_config_and_keeps_going_after_a_failure(tmp_path, dataset, host):
    queue = TrainQueue()
    queue.add(tiny_config(dataset, tmp_path, max_train_steps=1, output_name="first"))
    queue.add(tiny_config(tmp_path / "no-such-folder", tmp_path, max_train_steps=1, output_name="broken"))
    queue.add(tiny_config(dataset, tmp_path, max_train_steps=1, output_name="third"))
    with pytest.raises(ConfigError, match="already queued"):
        queue.add(tiny_config(dataset, tmp_path, output_name="first"))
    saved = tmp_path / "queue.toml"
    queue.save(saved)
    restored = TrainQueue.load(saved)
    assert [run.name for run in restored.runs] == ["first", "broken", "third"]
    assert restored.runs[0].config.to_dict() == queue.runs[0].config.to_dict()

    outcomes = Job("queue", lambda control: restored.run_all(lambda: host, control)).run_here()
    assert [(o.name, o.status) for o in outcomes] == [("first", "done"), ("broken", "failed"), ("third", "done")]
    assert "no such folder" in outcomes[1].error
    assert (tmp_path / "first.safetensors").is_file() and (tmp_path / "third.safetensors").is_file()
    assert len(restored) == 0


def test_a_stop_skips_the_rest_of_the_queue(tmp_path, dataset, host):
    queue = TrainQueue()
    for name in ("one", "two"):
        queue.add(tiny_config(dataset, tmp_path, max_train_steps=20, output_name=name))
    job_box: list[Job] = []

    def work(control):
        return queue.run_all(lambda: host, control)

    job = Job("queue", work)
    job_box.append(job)
    job.cancel()  # asked before the first step: the first run stops at once, the second is skipped
    outcomes = job.run_here()
    assert [(o.name, o.status) for o in outcomes][1] == ("two", "skipped")


def test_vram_estimate_counts_the_parts(tmp_path, dataset, host):
    config = tiny_config(dataset, tmp_path, network_args=["conv_dim=2"])
    estimate = estimate_vram(config, host)
    with host.training_mode():
        network = TrainableNetwork.create(config.network, host, seed=0)
    assert estimate.lora_parameters == sum(p.numel() for p in network.parameters())
    model_bytes = sum(p.numel() * p.element_size() for m in (host.unet, *host.text_encoders, host.vae)
                      for p in [*m.parameters(), *m.buffers()])
    assert estimate.parts["model (already loaded)"] == model_bytes
    assert estimate.parts["LoRA weights"] == estimate.parts["gradients"] == 4 * estimate.lora_parameters
    assert estimate.parts["optimizer state"] == 8 * estimate.lora_parameters  # AdamW: two fp32 moments
    assert estimate.additional == estimate.total - model_bytes > 0
    lighter = estimate_vram(config.with_values(gradient_checkpointing=True, optimizer_type="AdamW8bit",
                                               train_batch_size=1), host)
    assert lighter.parts["activations"] < estimate.parts["activations"] / 4
    assert lighter.parts["optimizer state"] == 2 * estimate.lora_parameters
    assert "activations:" in estimate.describe() and "GiB" in estimate.describe()


def test_train_blocks_can_name_a_user_preset(tmp_path, dataset, host):
    # SD1's 17-value LoRA vector: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03..OUT11 — only OUT03-OUT05
    presets = PresetBook.builtin().merge(PresetBook.parse_preset_text("FACEONLY:0,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0"))
    config = tiny_config(dataset, tmp_path, max_train_steps=1, network_args=["train_blocks=FACEONLY"])
    with pytest.raises(ConfigError, match="FACEONLY"):
        TrainRun(config, host).run()
    result = TrainRun(config, host, presets=presets).run()
    blocks = {module.block for module in network_info(result.output).modules}
    assert blocks == {"OUT03", "OUT04", "OUT05"}
