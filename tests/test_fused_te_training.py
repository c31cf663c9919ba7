"""Text-encoder LoRA training on open_clip's fused attention (A1111's SDXL te2 and SD2 encoder), in both environments.

The A1111 stand-in gets an open_clip text encoder (torch's nn.MultiheadAttention, as open_clip builds it) where A1111
has one; the built-in Lora stand-in gets A1111 1.10's MultiheadAttention branch. Checked: the LoRA of every q/k/v
and out_proj trains, the saved file changes the image when the built-in Lora merges it (and equals what training
saw), A1111's key table applies every key, a whole training run (also with fp8_base) saves a learned module for
every attention, and the host is bit-identical afterwards, also when a step raises.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from host_checks import assert_same_state, snapshot_host
from safetensors.torch import save_file
from torch import nn
from train_run_helpers import tiny_config
from webui_standin.builtin_lora import BuiltinLora, NetworkModuleLora, NetworkWeights
from webui_standin.fake_modules import install_fake_modules, make_opts
from webui_standin.models import (
    DiffusionWrapperStandIn,
    FrozenCLIPEmbedderStandIn,
    build_sd_model_standin,
)

from lib_lora.hosts.a1111 import A1111Host
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import load_lora_file
from lib_lora.networks.keys import build_target_index
from lib_lora.networks.loaded import as_applied, network_from_state_dict
from lib_lora.networks.loaders.a1111 import check
from lib_lora.tiny.images import generate_dataset
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet
from lib_lora.tiny.openclip import openclip_from_hf
from lib_lora.train.errors import ConfigError
from lib_lora.train.fused_attention import fused_owners, is_fused
from lib_lora.train.loop import TrainRun
from lib_lora.train.network.config import NetworkConfig
from lib_lora.train.network.trainable import TrainableNetwork

pytestmark = pytest.mark.hostcompat

PROMPT = "a photo of girl, blue hair"


class OpenCLIPEmbedderStandIn(nn.Module):
    """A1111's `FrozenOpenCLIPEmbedder(2)WithCustomWords` over ldm/sgm's open_clip embedder: `.wrapped.model` is an
    open_clip text model. "sd2": ln_final of the penultimate layer; "sdxl_g": the penultimate layer and the pooled
    (ln_final of the last layer at the EOS token, projected), as sgm's `FrozenOpenCLIPEmbedder2` returns them."""

    def __init__(self, wrapped: FrozenCLIPEmbedderStandIn, mode: str) -> None:
        super().__init__()
        self.wrapped, self.mode = wrapped, mode
        self.is_trainable, self.input_key, self.ucg_rate, self.legacy_ucg_val = False, "txt", 0.0, None

    def forward(self, texts: list[str]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        model = self.wrapped.model
        tokens = self.wrapped.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True,
                                        return_tensors="pt").input_ids.to(model.token_embedding.weight.device)
        x = (model.token_embedding(tokens) + model.positional_embedding[:77]).permute(1, 0, 2)
        mask = model.attn_mask[:77, :77]
        for block in model.transformer.resblocks[:-1]:
            x = block(x, attn_mask=mask)
        penultimate = x.permute(1, 0, 2)
        if self.mode == "sd2":
            return model.ln_final(penultimate)
        last = model.ln_final(model.transformer.resblocks[-1](x, attn_mask=mask).permute(1, 0, 2))
        return penultimate, last[torch.arange(last.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def open_clip_sd_model(arch: str, opts: SimpleNamespace) -> nn.Module:
    """The stand-in `sd_model` with open_clip where A1111 has it: SDXL's second encoder, SD2's only one."""
    if arch == "sdxl":
        sd_model = build_sd_model_standin("sdxl", opts)
        hf = sd_model.conditioner.embedders[1].wrapped
        wrapped = FrozenCLIPEmbedderStandIn(openclip_from_hf(hf.model), hf.tokenizer, attr="model")
        sd_model.conditioner.embedders[1] = OpenCLIPEmbedderStandIn(wrapped, "sdxl_g")
        return sd_model.eval()
    sd_model = build_sd_model_standin("sd1", opts)
    hf = sd_model.cond_stage_model.wrapped
    wrapped = FrozenCLIPEmbedderStandIn(openclip_from_hf(hf.transformer), hf.tokenizer, attr="model")
    sd_model.cond_stage_model = OpenCLIPEmbedderStandIn(wrapped, "sd2")
    sd_model.model = DiffusionWrapperStandIn(build_tiny_ldm_unet("sd2", seed=0))
    sd_model.is_sd1, sd_model.is_sd2 = False, True
    return sd_model.eval()


class BuiltinLoraWithFusedAttention(BuiltinLora):
    """The built-in Lora stand-in plus A1111 1.10's nn.MultiheadAttention branch (networks.py): a `_q/k/v_proj` name
    lands on its attention, `_out_proj` on out_proj's own name; the attention changes only when all four have a
    module (in_proj += [Δq; Δk; Δv], out_proj.weight += Δout, both backed up first). out_proj's own forward never
    runs inside the attention, so its Linear path never merges anything."""

    def load_network(self, name, network_on_disk):
        net = super().load_network(name, network_on_disk)
        from safetensors.torch import load_file

        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, weight in load_file(network_on_disk.filename).items():
            module_key, _, part = key.partition(".")
            target = self._index.lookup(module_key)
            if target is not None and target.rows is not None:
                letter = "qkv"[target.rows.start // target.module.embed_dim]
                grouped.setdefault(f"{target.module.network_layer_name}_{letter}_proj", {})[part] = weight
                grouped[f"{target.module.network_layer_name}_{letter}_proj"]["_shape"] = target.weight
        for sd_key, tensors in grouped.items():
            shim = SimpleNamespace(weight=tensors.pop("_shape"))
            net.modules[sd_key] = NetworkModuleLora(net, NetworkWeights(sd_key, sd_key, tensors, shim))
        return net

    def network_apply_weights(self, layer: nn.Module) -> None:
        if isinstance(layer, nn.MultiheadAttention):
            self._apply_fused(layer)
        elif not getattr(layer, "inside_fused_attention", False):
            super().network_apply_weights(layer)

    def _apply_fused(self, layer: nn.MultiheadAttention) -> None:
        name = layer.network_layer_name
        wanted = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in self.loaded_networks)
        if getattr(layer, "network_weights_backup", None) is None and wanted != ():
            layer.network_weights_backup = (layer.in_proj_weight.to("cpu", copy=True),
                                            layer.out_proj.weight.to("cpu", copy=True))
        if getattr(layer, "network_current_names", ()) == wanted:
            return
        with torch.no_grad():
            if layer.network_weights_backup is not None:
                layer.in_proj_weight.copy_(layer.network_weights_backup[0])
                layer.out_proj.weight.copy_(layer.network_weights_backup[1])
            for net in self.loaded_networks:
                parts = [net.modules.get(f"{name}_{p}_proj") for p in ("q", "k", "v", "out")]
                if all(parts):
                    q, k, v = layer.in_proj_weight.chunk(3, 0)
                    qkv = torch.vstack([m.calc_updown(w)[0] for m, w in zip(parts[:3], (q, k, v))])
                    layer.in_proj_weight += qkv
                    layer.out_proj.weight += parts[3].calc_updown(layer.out_proj.weight)[0]
                    self.merges += 1
                    self.merged_layers.append(name)
        layer.network_current_names = wanted


def a1111_with_open_clip(monkeypatch: pytest.MonkeyPatch, arch: str) -> A1111Host:
    opts = make_opts()
    install_fake_modules(monkeypatch, open_clip_sd_model(arch, opts), opts)
    return A1111Host.from_webui()


def outputs(host: A1111Host) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        cond = host.encode_prompts([PROMPT])
        x = torch.randn(1, 4, 8, 8, generator=generator)
        return host.apply_unet(x, torch.tensor([250]), cond), cond.context


def train(host: A1111Host, network: TrainableNetwork, steps: int = 2, *, fail_at: int | None = None) -> None:
    generator = torch.Generator().manual_seed(5)
    x, target = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    optimizer = torch.optim.AdamW(network.param_groups(unet_lr=None, text_encoder_lr=None, learning_rate=3e-2))
    with host.training_mode(), network.attached():
        for step in range(steps):
            cond = host.encode_prompts([PROMPT], with_grad=True)
            F.mse_loss(host.apply_unet(x, torch.tensor([250]), cond), target).backward()
            if step == fail_at:
                raise RuntimeError("stopped mid-run")
            optimizer.step()
            optimizer.zero_grad()
    network.eval()


def fused_modules(host: A1111Host, network: TrainableNetwork) -> dict[str, torch.nn.Module]:
    owners = fused_owners(build_target_index(host))
    return {name: m for name, m in network.lora_modules.items() if is_fused(m.target, owners)}


@pytest.mark.parametrize("arch", ["sdxl", "sd2"])
def test_text_encoder_lora_on_fused_attention_trains_and_the_builtin_lora_applies_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path, arch: str) -> None:
    host = a1111_with_open_clip(monkeypatch, arch)
    before = snapshot_host(host)
    base_unet, base_text = outputs(host)
    network = TrainableNetwork.create(NetworkConfig(network_dim=4, network_alpha=2,
                                                    network_train_text_encoder_only=True), host, seed=0)
    fused = fused_modules(host, network)
    assert len(fused) >= 4 * 3, "q, k, v and out_proj of every open_clip block get a module"
    start = {name: m.lora_up.detach().clone() for name, m in fused.items()}
    with network.attached():
        assert torch.allclose(outputs(host)[1], base_text, atol=1e-6), "a new network changes nothing"
    train(host, network)
    assert_same_state(before, snapshot_host(host))
    last = f"_layers_{len(host.text_encoders[-1].transformer.resblocks) - 1}_"
    used = {name: m for name, m in fused.items() if arch == "sdxl" or last not in name}  # SD2: penultimate only
    assert all(not torch.equal(start[name], m.lora_up) for name, m in used.items()), "every fused module learned"
    with network.attached():
        hooked_unet, hooked_text = outputs(host)
    assert (hooked_text - base_text).abs().max() > 1e-4

    state = network.kohya_state_dict()
    if arch == "sdxl":
        report = check(list(state), "sdxl")
        assert report.complete, report.failures[:3]
    path = tmp_path / "te.safetensors"
    save_file(state, str(path))
    builtin = BuiltinLoraWithFusedAttention(host.sd_model, {"te": path})
    for attention in (m for te in host.text_encoders for m in te.modules() if isinstance(m, nn.MultiheadAttention)):
        attention.out_proj.inside_fused_attention = True
    builtin.load_networks(["te"])
    builtin.apply_weights_in(host.sd_model)
    merged_unet, merged_text = outputs(host)
    assert sum(isinstance(m, nn.MultiheadAttention) for m in map(host.sd_model.network_layer_mapping.get,
                                                                    builtin.merged_layers)) >= 3
    assert (merged_unet - base_unet).abs().max() > 1e-4, "the file changes the image"
    assert torch.allclose(merged_text, hooked_text, atol=1e-5), (merged_text - hooked_text).abs().max()
    assert torch.allclose(merged_unet, hooked_unet, atol=1e-5)
    builtin.load_networks([])
    builtin.apply_weights_in(host.sd_model)
    assert torch.equal(outputs(host)[1], base_text)


@pytest.mark.parametrize("fp8_base", [False, True])
def test_a_training_run_on_sdxl_with_open_clip_saves_every_attention_module(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path, fp8_base: bool) -> None:
    host = a1111_with_open_clip(monkeypatch, "sdxl")
    before = snapshot_host(host)
    data = tmp_path / "data"
    generate_dataset(data, count=2, repeats=1, sizes=((64, 64),))
    config = tiny_config(data, tmp_path / "out", max_train_steps=2, train_batch_size=1, learning_rate=1e-2,
                         fp8_base=fp8_base)
    result = TrainRun(config, host).run()
    modules = network_from_state_dict(dict(load_lora_file(result.output).tensors), name="run").modules
    for layer in range(len(host.text_encoders[1].transformer.resblocks)):
        for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
            module = modules[f"lora_te2_text_model_encoder_layers_{layer}_self_attn_{part}"]
            assert module.up.abs().max() > 0, f"layer {layer} {part} learned nothing"
    assert_same_state(before, snapshot_host(host))


def test_the_host_is_restored_when_a_step_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    host = a1111_with_open_clip(monkeypatch, "sdxl")
    before = snapshot_host(host)
    network = TrainableNetwork.create(NetworkConfig(network_dim=2), host, seed=0)
    with pytest.raises(RuntimeError, match="stopped mid-run"):
        train(host, network, fail_at=0)
    assert_same_state(before, snapshot_host(host))


@pytest.mark.parametrize("algo", ["loha", "lokr", "dora"])
def test_other_algorithms_train_fused_attention_and_match_their_merged_file(monkeypatch: pytest.MonkeyPatch,
                                                                           algo: str) -> None:
    host = a1111_with_open_clip(monkeypatch, "sd2")
    args = {"algo": "lora", "dora_wd": "true"} if algo == "dora" else {"algo": algo}
    network = TrainableNetwork.create(NetworkConfig(network_module="lycoris.kohya", network_dim=4, network_alpha=4,
                                                    network_args=args, network_train_text_encoder_only=True),
                                      host, seed=0)
    base_text = outputs(host)[1]
    train(host, network)
    last = f"_layers_{len(host.text_encoders[0].transformer.resblocks) - 1}_"
    fused = [m for name, m in fused_modules(host, network).items() if last not in name]
    assert fused and all(m.delta_weight().abs().max() > 0 for m in fused)
    with network.attached():
        hooked_text = outputs(host)[1]
    assert (hooked_text - base_text).abs().max() > 1e-4
    file = network_from_state_dict(network.kohya_state_dict(), name=algo)
    with WeightMerger(build_target_index(host)).applied([as_applied(file)]) as report:
        assert not report.unmatched
        merged_text = outputs(host)[1]
    assert torch.allclose(merged_text, hooked_text, atol=1e-5), (merged_text - hooked_text).abs().max()


def test_neuron_dropout_on_fused_attention_is_refused_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    host = a1111_with_open_clip(monkeypatch, "sd2")
    with pytest.raises(ConfigError, match="network_dropout") as caught:
        TrainableNetwork.create(NetworkConfig(network_dropout=0.1), host, seed=0)
    assert caught.value.key == "network_dropout"
    network = TrainableNetwork.create(NetworkConfig(network_dropout=0.1, network_train_unet_only=True), host, seed=0)
    assert network.trains_unet and not network.trains_text_encoder
