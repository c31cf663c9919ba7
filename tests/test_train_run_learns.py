"""It learns: 200 steps on a pattern tied to a trigger word lower the loss and pull `<lora:name:1>` generations to it.

The tiny model is random, so "the pattern" is measured where the model works: the latents it generates for the
trigger word against the pattern's own latent (the posterior mean of its VAE). Without the LoRA the generated
latents are unrelated to the pattern; with it they must be much closer (a margin of 20% of the distance, where
the measured improvement is about 40%).
"""

from __future__ import annotations

import pytest
from train_run_helpers import (
    TRIGGER,
    generated_latents,
    latent_distance,
    make_pattern_dataset,
    pattern_latent,
    tiny_config,
)

from lib_lora.blocks.apply import LoraLibrary, resolve_calls
from lib_lora.blocks.presets import PresetBook
from lib_lora.blocks.syntax import parse_prompt
from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.keys import build_target_index
from lib_lora.train.loop import TrainRun

pytest.importorskip("diffusers")

STEPS = 200
SEEDS = (0, 1, 2)
MARGIN = 0.8


def test_two_hundred_steps_learn_the_pattern_of_the_trigger_word(tmp_path):
    host = load_diffusers_host("tiny")
    data = make_pattern_dataset(tmp_path / "data", count=4)
    # batch 1 and AdamW's foreach implementation: the cheapest 200 steps (the tiny model's cost is per call)
    config = tiny_config(data, tmp_path / "loras", output_name="zqlora", max_train_steps=STEPS, train_batch_size=1,
                         optimizer_args=["foreach=True"], network_train_unet_only=True,
                         cache_text_encoder_outputs=True)
    result = TrainRun(config, host).run()

    first, last = result.loss_history[:20], result.loss_history[-20:]
    assert sum(last) / len(last) < MARGIN * sum(first) / len(first), (first, last)

    target = pattern_latent(host)
    without = [latent_distance(generated_latents(host, TRIGGER, seed), target) for seed in SEEDS]
    prompt, calls = parse_prompt(f"<lora:zqlora:1> {TRIGGER}")
    applied = resolve_calls(calls, LoraLibrary([tmp_path / "loras"]), PresetBook.builtin(), host.arch)
    with WeightMerger(build_target_index(host)).applied(applied):
        with_lora = [latent_distance(generated_latents(host, prompt.strip(), seed), target) for seed in SEEDS]
    assert sum(with_lora) < MARGIN * sum(without), (with_lora, without)
    assert all(w < wo for w, wo in zip(with_lora, without)), (with_lora, without)
