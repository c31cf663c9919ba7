"""Resume: a run stopped and resumed from its state folder ends with the weights of the run that never stopped."""

from __future__ import annotations

import json

import pytest
import torch
from train_run_helpers import tiny_config

from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.networks.files import load_lora_file
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.errors import TrainingError
from lib_lora.train.loop import TrainRun
from lib_lora.train.resume_state import STATE_FILE, TrainPosition, read_position, save_state

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, count=4, repeats=1, sizes=((64, 64),))
    return root


@pytest.fixture(scope="module")
def host():
    return load_diffusers_host("tiny")


def tensors(path):
    return load_lora_file(path).tensors


def assert_same_weights(a, b):
    first, second = tensors(a), tensors(b)
    assert first.keys() == second.keys()
    worst = max(float((first[k] - second[k]).abs().max()) for k in first)
    assert worst <= 1e-6, worst


def test_stopped_at_50_and_resumed_to_100_equals_100_uninterrupted(tmp_path, dataset, host):
    # captions shuffled and flipped images: the data order and the augment draws must continue exactly too
    common = dict(max_train_steps=100, train_batch_size=1, network_train_unet_only=True, shuffle_caption=True,
                  flip_aug=True, noise_offset=0.05, lr_scheduler="cosine", lr_warmup_steps=10)
    straight = TrainRun(tiny_config(dataset, tmp_path, output_name="straight", save_every_n_steps=50,
                                    save_state=True, **common), host).run()
    state = tmp_path / "straight-step00000050-state"
    assert read_position(state).step == 50

    resumed = TrainRun(tiny_config(dataset, tmp_path, output_name="resumed", resume=str(state), **common), host).run()
    assert resumed.steps == 100 and len(resumed.loss_history) == 100
    assert resumed.loss_history == pytest.approx(straight.loss_history, abs=1e-6)
    assert_same_weights(straight.output, resumed.output)
    assert load_lora_file(resumed.output).metadata["ss_steps"] == "100"


def test_a_stop_with_state_resumes_exactly_with_accumulation_dropout_and_text_encoder(tmp_path, dataset, host):
    common = dict(max_train_steps=6, gradient_accumulation_steps=2, network_dropout=0.2, shuffle_caption=True,
                  caption_tag_dropout_rate=0.2, multires_noise_iterations=3, min_snr_gamma=5, seed=9,
                  lr_scheduler="linear", save_state=True)
    straight = TrainRun(tiny_config(dataset, tmp_path, output_name="straight", **common), host).run()

    runs: list[TrainRun] = []

    def stop_at_3(progress):
        if progress.step == 3:
            runs[0].request_stop()

    first = TrainRun(tiny_config(dataset, tmp_path, output_name="part", **common), host, on_step=stop_at_3)
    runs.append(first)
    stopped = first.run()
    assert stopped.cancelled and stopped.output.name == "part-step00000003.safetensors"
    state = tmp_path / "part-step00000003-state"
    position = json.loads((state / STATE_FILE).read_text(encoding="utf-8"))
    # 4 images in batches of 2, 2 batches a step: step 3 ends the third epoch (counted from 0 in the state)
    assert (position["step"], position["epoch"], position["batch_in_epoch"], position["seed"]) == (3, 2, 2, 9)

    resumed = TrainRun(tiny_config(dataset, tmp_path, output_name="part", resume=str(state),
                                   **{**common, "seed": 123}), host).run()
    assert any("seed 123 ignored" in note for note in resumed.notes)
    assert_same_weights(straight.output, resumed.output)


def test_state_folders_replace_atomically_and_refuse_what_is_not_one(tmp_path):
    network = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(network.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(0)
    folder = tmp_path / "run-state"
    for step in (1, 2):
        position = TrainPosition(step=step, epoch=0, batch_in_epoch=step, seed=1, session_id=2, started_at=3.0)
        save_state(folder, position=position, network=network, optimizer=optimizer, scheduler=scheduler,
                   noise_generator=generator)
    assert read_position(folder).step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-state"]  # no temp or old folder left

    with pytest.raises(TrainingError, match="not a training state folder"):
        read_position(tmp_path / "missing")
    (folder / STATE_FILE).write_text(json.dumps({"version": 99}), encoding="utf-8")
    with pytest.raises(TrainingError, match="another version"):
        read_position(folder)
    (folder / STATE_FILE).write_text("{", encoding="utf-8")
    with pytest.raises(TrainingError, match="not valid JSON"):
        read_position(folder)


def test_resuming_into_a_different_network_is_refused(tmp_path, dataset, host):
    TrainRun(tiny_config(dataset, tmp_path, max_train_steps=1, save_state=True), host).run()
    config = tiny_config(dataset, tmp_path, max_train_steps=2, network_dim=8, resume=str(tmp_path / "tinylora-state"))
    with pytest.raises(TrainingError, match="cannot load"):
        TrainRun(config, host).run()
