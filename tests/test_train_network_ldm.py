"""Trainable networks on LDM-layout models as A1111 has them (the A1111 host over the stand-in `sd_model`: real
ldm UNets, HF CLIP), in both environments: identity at start, a trained network equals its saved file merged by
the Block Weight path, nothing left on the host; open_clip's fused attention refuses neuron dropout with the way
out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from host_checks import assert_same_state, snapshot_host

from lib_lora.hosts.a1111 import A1111Host
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.keys import build_target_index, build_target_index_for
from lib_lora.networks.loaded import as_applied, network_from_state_dict
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet
from lib_lora.tiny.openclip import build_tiny_openclip_text_model
from lib_lora.train.errors import ConfigError
from lib_lora.train.network.config import NetworkConfig
from lib_lora.train.network.targets import plan_modules
from lib_lora.train.network.trainable import TrainableNetwork

pytestmark = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.fixtures",)  # a1111_host, sd_model, standin_arch, webui, webui_opts


CASES: dict[str, dict] = {
    # LoRA with the text encoder(s); LoKr with LyCORIS's "full" preset: ResBlock and sampler convolutions,
    # conv_in/conv_out and the time embedding too, so every LDM spelling of a UNet key is exercised
    "lora": {"network_module": "networks.lora"},
    "lokr": {"network_module": "lycoris.kohya", "network_args": {"algo": "lokr", "dora_wd": "true"},
             "network_train_unet_only": True},
}


def outputs(host: A1111Host) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        cond = host.encode_prompts(["a photo of girl, blue hair"])
        x = torch.randn(1, 4, 8, 8, generator=generator)
        return host.apply_unet(x, torch.tensor([250]), cond), cond.context


def train(host: A1111Host, network: TrainableNetwork, steps: int = 1) -> None:
    generator = torch.Generator().manual_seed(5)
    x, target = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    optimizer = torch.optim.AdamW(network.param_groups(unet_lr=None, text_encoder_lr=None, learning_rate=3e-2))
    with host.training_mode(), network.attached():
        for _ in range(steps):
            cond = host.encode_prompts(["a photo of girl, blue hair"], with_grad=network.trains_text_encoder)
            F.mse_loss(host.apply_unet(x, torch.tensor([250]), cond), target).backward()
            optimizer.step()
            optimizer.zero_grad()
    network.eval()


@pytest.mark.parametrize("algo", list(CASES))
def test_trained_network_on_ldm_layout_equals_its_file_merged(a1111_host: A1111Host, algo: str) -> None:
    host = a1111_host
    before = snapshot_host(host)
    base_unet, base_text = outputs(host)
    network = TrainableNetwork.create(NetworkConfig(network_dim=4, network_alpha=2, **CASES[algo]), host, seed=0)
    with network.attached():
        start_unet, _ = outputs(host)
    assert torch.allclose(start_unet, base_unet, atol=1e-5)
    train(host, network)
    assert_same_state(before, snapshot_host(host))
    with network.attached():
        hooked_unet, hooked_text = outputs(host)
    assert (hooked_unet - base_unet).abs().max() > 1e-3
    file = network_from_state_dict(network.kohya_state_dict(), name=algo)
    assert any(key.startswith("lora_unet_input_blocks_" if host.arch.name == "sdxl" else "lora_unet_down_blocks_")
               for key in file.modules), "keys are spelled as kohya spells them for the family"
    with WeightMerger(build_target_index(host)).applied([as_applied(file)]) as report:
        assert not report.unmatched
        merged_unet, merged_text = outputs(host)
    assert torch.allclose(hooked_unet, merged_unet, atol=1e-5), (hooked_unet - merged_unet).abs().max()
    assert torch.allclose(hooked_text, merged_text, atol=1e-5)
    if network.trains_text_encoder:
        assert (hooked_text - base_text).abs().max() > 1e-4
    assert_same_state(before, snapshot_host(host))


def test_open_clip_text_encoder_is_planned_and_neuron_dropout_there_refused_with_the_way_out() -> None:
    index = build_target_index_for(build_tiny_ldm_unet("sd2", seed=0), "ldm", [build_tiny_openclip_text_model()],
                                   "sd2")
    plans, _ = plan_modules(NetworkConfig(), index)
    assert any(plan.target.rows is not None for plan in plans), "fused q/k/v rows train (tests/test_fused_te_*)"
    with pytest.raises(ConfigError, match="network_train_unet_only = true") as caught:
        plan_modules(NetworkConfig(network_dropout=0.1), index)
    assert caught.value.key == "network_dropout"
    plans, _ = plan_modules(NetworkConfig(network_dropout=0.1, network_train_unet_only=True), index)
    assert plans and all(plan.target.root == "unet" for plan in plans)
