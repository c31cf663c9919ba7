"""Training on the LDM-layout A1111 host (stand-ins of A1111 1.10's sd_model) leaves it bit-identical; gradient
checkpointing gives the gradients of a plain backward pass on both layouts. Runs under A1111's pins too."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from host_checks import assert_same_state, snapshot_host
from train_run_helpers import ENDINGS, run_with_ending, tiny_config
from webui_standin.fake_modules import make_opts
from webui_standin.models import build_sd_model_standin

from lib_lora.hosts.a1111 import A1111Host
from lib_lora.networks.files import load_lora_file
from lib_lora.networks.loaded import load_network
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.loop import TrainRun
from lib_lora.train.network.config import NetworkConfig
from lib_lora.train.network.trainable import TrainableNetwork
from lib_lora.train.runtime import gradient_checkpointing

pytestmark = pytest.mark.hostcompat


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, count=2, repeats=1, sizes=((64, 64),))
    return root


def ldm_host(arch: str) -> A1111Host:
    return A1111Host(build_sd_model_standin(arch, make_opts()))


def sample(host: A1111Host, prompt: str = "tinychar, red hair", steps: int = 4) -> dict[str, torch.Tensor]:
    """What generation computes, through the host's own code: conditioning, a short DDIM loop, the VAE decode."""
    schedule = host.alphas_cumprod()
    cond = host.encode_prompts([prompt], size=(64, 64))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.linspace(999, 0, steps).long()
    with torch.no_grad():
        for index, t in enumerate(timesteps):
            eps = host.apply_unet(latents, t.view(1), cond)
            a, a_next = schedule[t], schedule[timesteps[index + 1]] if index + 1 < steps else torch.tensor(1.0)
            x0 = (latents - (1 - a).sqrt() * eps) / a.sqrt()
            latents = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        image = host.vae.decode(latents / host.latent_scale)
    return {"context": cond.context, "latents": latents, "image": image}


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("ending", ENDINGS)
def test_ldm_host_is_bit_identical_after_a_run(tmp_path, dataset, arch, ending):
    host = ldm_host(arch)
    before_state, before_sample = snapshot_host(host), sample(host)
    rng_before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    config = tiny_config(dataset, tmp_path, max_train_steps=3, train_batch_size=1, gradient_checkpointing=True,
                         network_args=["conv_dim=2"])
    result = run_with_ending(config, host, ending)
    if result is not None:
        network = load_network(result.output)
        assert network.arch == arch and network.format == "locon"
        assert result.steps == (2 if ending == "stopped" else 3)
        assert load_lora_file(result.output).metadata["ss_sd_model_name"] == f"tiny-{arch}"
    assert_same_state(before_state, snapshot_host(host))
    after = sample(host)
    for key, value in before_sample.items():
        assert torch.equal(value, after[key]), key
    assert torch.equal(rng_before[0], torch.get_rng_state()) and rng_before[1] == random.getstate()
    assert np.array_equal(rng_before[2], np.random.get_state()[1])
    assert all("forward" not in module.__dict__ for module in host.unet.modules())


def diffusers_host():
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host

    return load_diffusers_host("tiny")


@pytest.mark.parametrize("make_host", [lambda: ldm_host("sd1"), lambda: ldm_host("sdxl"), diffusers_host],
                         ids=["ldm-sd1", "ldm-sdxl", "diffusers-sd1"])
def test_gradient_checkpointing_gives_the_same_gradients(make_host):
    host = make_host()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([100, 700])
    config = NetworkConfig(network_dim=2, network_args={"conv_dim": "2"}, network_train_unet_only=True)
    grads = {}
    with host.training_mode():
        network = TrainableNetwork.create(config, host, seed=0)
        with torch.no_grad():  # lora_up starts at zero: make the update non-zero so every factor gets a gradient
            for name, param in network.named_parameters():
                if "lora_up" in name:
                    param.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        cond = host.encode_prompts(["a cat", "a dog"], size=(64, 64))
        for enabled in (False, True):
            network.zero_grad(set_to_none=True)
            with network.attached(), gradient_checkpointing(host.unet, enabled) as wrapped:
                assert (wrapped > 0) == enabled
                host.apply_unet(latents, timesteps, cond).square().mean().backward()
            grads[enabled] = {name: p.grad.clone() for name, p in network.named_parameters()}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 0
    for name in grads[False]:
        assert torch.allclose(grads[True][name], grads[False][name], atol=1e-6, rtol=1e-4), name
    assert all("forward" not in module.__dict__ for module in host.unet.modules())


def test_a_sample_that_cannot_render_is_noted_and_the_run_goes_on(tmp_path, dataset):
    """Outside the WebUI the A1111 host cannot generate (no modules.processing): the run still trains and saves."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tinychar --s 2\n", encoding="utf-8")
    host = ldm_host("sd1")
    config = tiny_config(dataset, tmp_path, max_train_steps=2, train_batch_size=1, sample_prompts=str(prompts),
                         sample_every_n_steps=1)
    result = TrainRun(config, host).run()
    assert result.output.is_file() and result.samples == []
    assert [note for note in result.notes if note.startswith("samples stopped at step 1: ")]
    assert not (tmp_path / "tinylora.preview.png").exists()
