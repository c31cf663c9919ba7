"""Trainable networks on the tiny diffusers SD1/SDXL hosts: hooks, files, cross-checks, block-wise settings.

The key cross-check: after a few optimizer steps, the hooked model gives the output the saved kohya file gives
when merged by our Block Weight path (WeightMerger), per algorithm; for LoRA/LoCon diffusers'
`load_lora_weights` gives it too.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from host_checks import assert_same_state, snapshot_host

from lib_lora.hosts.diffusers import load_diffusers_host
from lib_lora.networks.attach import WeightMerger
from lib_lora.networks.files import save_lora_file
from lib_lora.networks.keys import build_target_index
from lib_lora.networks.loaded import as_applied, load_network
from lib_lora.train.errors import ConfigError, TrainingError
from lib_lora.train.network.config import NetworkConfig
from lib_lora.train.network.trainable import TrainableNetwork

pytest.importorskip("diffusers")


ALGO_ARGS: dict[str, tuple[str, dict[str, str]]] = {
    "lora": ("networks.lora", {}),
    "locon": ("networks.lora", {"conv_dim": "4", "conv_alpha": "2"}),
    "loha": ("lycoris.kohya", {"algo": "loha", "preset": "attn-mlp"}),
    "lokr": ("lycoris.kohya", {"algo": "lokr", "preset": "full", "factor": "4"}),
    "dora": ("lycoris.kohya", {"algo": "locon", "dora_wd": "True", "preset": "attn-mlp"}),
}


@functools.cache
def tiny_host(spec: str):
    return load_diffusers_host(spec)


@pytest.fixture(scope="module", params=["tiny", "tiny-sdxl"])
def host(request):
    """Each tiny host, for what depends on the family (blocks, module shapes, the cross-checks)."""
    return tiny_host(request.param)


@pytest.fixture(scope="module")
def sd1_host():
    """The tiny SD1 host, for what does not depend on the family."""
    return tiny_host("tiny")


@pytest.fixture(scope="module")
def reference_hosts():
    """A second copy of each tiny pipeline, for diffusers' own LoRA loader (unloaded after each use)."""
    return {}


def perturb(network: TrainableNetwork, seed: int = 3) -> None:
    """Give every parameter small random values (a trained-looking network without the cost of training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(param + 0.05 * torch.randn(param.shape, generator=generator))


def make_network(host, algo: str = "lora", *, seed: int = 0, **fields) -> TrainableNetwork:
    module, args = ALGO_ARGS[algo]
    fields = {"network_args": args, "network_dim": 4, "network_alpha": 2.0, **fields}
    config = NetworkConfig(network_module=module, **fields)
    return TrainableNetwork.create(config, host, seed=seed)


class Probe:
    """Fixed UNet inputs and captions for one host."""

    def __init__(self, host) -> None:
        generator = torch.Generator().manual_seed(1)
        self.host = host
        self.x = torch.randn(1, 4, 8, 8, generator=generator)
        self.t = torch.tensor([300])
        self.texts = ["a photo of girl, blue hair"]
        self.target = torch.randn(1, 4, 8, 8, generator=generator)

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(UNet output, text context) with whatever is attached or merged now."""
        with torch.no_grad():
            cond = self.host.encode_prompts(self.texts)
            return self.host.apply_unet(self.x, self.t, cond), cond.context

    def train(self, network: TrainableNetwork, steps: int = 2, lr: float = 3e-2) -> None:
        groups = network.param_groups(unet_lr=None, text_encoder_lr=None, learning_rate=lr)
        optimizer = torch.optim.AdamW(groups, lr=lr)
        with self.host.training_mode(), network.attached():
            network.train()
            for _ in range(steps):
                cond = self.host.encode_prompts(self.texts, with_grad=network.trains_text_encoder)
                loss = F.mse_loss(self.host.apply_unet(self.x, self.t, cond), self.target)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        network.eval()


def merged_outputs(probe: Probe, path) -> tuple[torch.Tensor, torch.Tensor]:
    merger = WeightMerger(build_target_index(probe.host))
    with merger.applied([as_applied(load_network(path))]) as report:
        assert not report.unmatched
        return probe.outputs()


@pytest.mark.parametrize("algo", list(ALGO_ARGS))
def test_attached_network_starts_as_identity_and_detaches_cleanly(host, algo):
    probe = Probe(host)
    before = snapshot_host(host)
    base_unet, base_text = probe.outputs()
    network = make_network(host, algo)
    with network.attached():
        unet, text = probe.outputs()
    assert torch.allclose(unet, base_unet, atol=1e-5) and torch.allclose(text, base_text, atol=1e-5)
    assert_same_state(before, snapshot_host(host))  # no hook left, no weight, grad or flag changed


@pytest.fixture(scope="module")
def trained_networks():
    """(arch, algo) -> (network after two AdamW steps on random targets, host snapshot taken before): trained once."""
    return {}


def trained(host, algo: str, cache: dict) -> tuple[TrainableNetwork, object]:
    key = (host.arch.name, algo)
    if key not in cache:
        # the text encoder is trained with plain LoRA only: its hooks are the same code for every algorithm
        network = make_network(host, algo, network_train_unet_only=algo != "lora")
        before = snapshot_host(host)
        Probe(host).train(network)
        cache[key] = network, before
    return cache[key]


@pytest.mark.parametrize("algo", list(ALGO_ARGS))
def test_trained_network_equals_its_saved_file_merged_by_the_block_weight_path(host, algo, tmp_path,
                                                                              trained_networks):
    probe = Probe(host)
    base_unet, base_text = probe.outputs()
    network, before = trained(host, algo, trained_networks)
    assert_same_state(before, snapshot_host(host))
    with network.attached():
        hooked_unet, hooked_text = probe.outputs()
    assert (hooked_unet - base_unet).abs().max() > 1e-3, "training must change the output"
    assert ((hooked_text - base_text).abs().max() > 1e-4) == network.trains_text_encoder
    path = tmp_path / f"{algo}.safetensors"
    save_lora_file(path, network.kohya_state_dict(), network.metadata())
    assert load_network(path).format == algo
    merged_unet, merged_text = merged_outputs(probe, path)
    assert torch.allclose(hooked_unet, merged_unet, atol=1e-5), (hooked_unet - merged_unet).abs().max()
    assert torch.allclose(hooked_text, merged_text, atol=1e-5), (hooked_text - merged_text).abs().max()


@pytest.mark.parametrize("algo", ["lora", "locon"])
def test_diffusers_load_lora_weights_gives_the_hooked_output(host, algo, tmp_path, reference_hosts,
                                                            trained_networks):
    pytest.importorskip("peft")
    probe = Probe(host)
    network, _ = trained(host, algo, trained_networks)
    with network.attached():
        hooked, _ = probe.outputs()
    path = tmp_path / f"{algo}.safetensors"
    save_lora_file(path, network.kohya_state_dict(torch.float32), network.metadata())

    spec = "tiny-sdxl" if host.arch.name == "sdxl" else "tiny"
    if spec not in reference_hosts:
        reference_hosts[spec] = load_diffusers_host(spec)
    reference = reference_hosts[spec]
    reference.pipeline.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name=f"trained_{algo}")
    try:
        theirs, _ = Probe(reference).outputs()
    finally:
        reference.pipeline.unload_lora_weights()
    assert torch.allclose(hooked, theirs, atol=1e-5), (hooked - theirs).abs().max()


def test_fp16_host_trains_float32_parameters():
    host = load_diffusers_host("tiny", dtype="fp16")
    network = make_network(host, "lora")
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    probe = Probe(host)
    probe.x, probe.target = probe.x.half(), probe.target.half()
    probe.train(network, steps=1)
    assert any(p.abs().sum() > 0 for n, p in network.named_parameters() if n.endswith("lora_up"))
    with network.attached():
        out, _ = probe.outputs()
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    state = network.kohya_state_dict(torch.float16)
    assert {t.dtype for k, t in state.items() if not k.endswith(".alpha")} == {torch.float16}
    assert {t.dtype for k, t in state.items() if k.endswith(".alpha")} == {torch.float32}


@pytest.mark.parametrize("algo", list(ALGO_ARGS))
def test_kohya_state_dict_round_trips(host, algo):
    network = make_network(host, algo, seed=0)
    perturb(network)
    copy = make_network(host, algo, seed=5)
    copy.load_kohya_state_dict(network.kohya_state_dict())
    for (name, a), (_, b) in zip(network.named_parameters(), copy.named_parameters()):
        assert torch.equal(a, b), name


def test_load_refuses_foreign_modules_and_shapes_and_keeps_the_network(sd1_host):
    network = make_network(sd1_host, "lora")
    state = make_network(sd1_host, "lora", network_dim=8).kohya_state_dict()
    before = {k: v.clone() for k, v in network.kohya_state_dict().items()}
    with pytest.raises(ConfigError, match="dim_from_weights"):
        network.load_kohya_state_dict(state)
    after = network.kohya_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    unet_only = make_network(sd1_host, "lora", network_train_unet_only=True)
    with pytest.raises(ConfigError, match="not in this network"):
        unet_only.load_kohya_state_dict(network.kohya_state_dict())


def test_network_weights_and_dim_from_weights(sd1_host, tmp_path):
    probe = Probe(sd1_host)
    source = make_network(sd1_host, "lora", network_dim=8, network_args={"train_blocks": "IN04-IN07"})
    perturb(source)
    path = tmp_path / "start.safetensors"
    save_lora_file(path, source.kohya_state_dict(), source.metadata())
    with pytest.raises(ConfigError, match="not in this network|dim_from_weights"):
        make_network(sd1_host, "lora", network_weights=str(path))
    resumed = make_network(sd1_host, "lora", network_weights=str(path), dim_from_weights=True)
    assert set(resumed.lora_modules) == set(source.lora_modules)
    assert all(m.dim == 8 for m in resumed.lora_modules.values())
    with source.attached():
        expected, _ = probe.outputs()
    with resumed.attached():
        got, _ = probe.outputs()
    assert torch.equal(expected, got)
    assert resumed.metadata()["ss_network_dim"] == "Dynamic"
    unet_side = make_network(sd1_host, "lora", network_weights=str(path), dim_from_weights=True,
                             network_train_unet_only=True)
    assert unet_side.lora_modules and not unet_side.trains_text_encoder
    assert source.trains_text_encoder
    with pytest.raises(ConfigError, match="no such file"):
        make_network(sd1_host, "lora", network_weights=str(tmp_path / "missing.safetensors"))


def test_train_blocks_char_creates_modules_only_in_char_blocks(host):
    from lib_lora.blocks.presets import PresetBook

    char = PresetBook.builtin().get("CHAR", host.arch)
    network = make_network(host, "locon", network_args={"conv_dim": "4", "train_blocks": "CHAR"})
    blocks = {m.target.block for m in network.lora_modules.values() if m.target.root == "unet"}
    assert blocks and blocks <= {b for b, w in char.items() if w != 0}
    assert network.trains_text_encoder == (char["BASE"] != 0)
    listed = make_network(host, "lora", network_args={"train_blocks": "OUT03-OUT05"})
    unet_blocks = {m.target.block for m in listed.lora_modules.values() if m.target.root == "unet"}
    assert unet_blocks == {"OUT03", "OUT04", "OUT05"} & {t.block for t in build_target_index(host).targets()}
    assert listed.trains_text_encoder


def test_block_dims_give_per_block_ranks_and_zero_lr_blocks_get_no_module(host):
    n = 23 if host.arch.name == "sdxl" else 25
    dims = [0] * n
    for i in range(1, 9):  # IN00.. on SD1, the embeddings and IN00.. on SDXL
        dims[i] = 1 + i % 3
    network = make_network(host, "lora", network_train_unet_only=True,
                           network_args={"block_dims": ",".join(map(str, dims))})
    from lib_lora.train.network.blocks import sdscripts_blocks

    labels = sdscripts_blocks(host.arch)
    ranks = {m.target.block: m.dim for m in network.lora_modules.values()}
    assert ranks and all(ranks[block] == dims[labels.index(block)] for block in ranks)
    count = 12 if host.arch.name != "sdxl" else 9
    zeroed = make_network(host, "lora", network_train_unet_only=True,
                          network_args={"down_lr_weight": ",".join(["0"] * count)})
    assert not any(m.target.block.startswith("IN") for m in zeroed.lora_modules.values())
    with pytest.raises(ConfigError, match=f"expected {n} values"):
        make_network(host, "lora", network_args={"block_dims": "4,4,4"})


def test_param_groups_te_unet_loraplus_block_weights_and_zero_lr(sd1_host):
    network = make_network(sd1_host, "lora", network_args={"loraplus_lr_ratio": "16"})
    groups = network.param_groups(unet_lr=1e-4, text_encoder_lr=5e-5, learning_rate=1.0)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("textencoder", 5e-5), ("textencoder plus", 5e-5 * 16), ("unet", 1e-4), ("unet plus", 1e-4 * 16)]
    ups = {id(m.lora_up) for m in network.lora_modules.values()}
    assert all(id(p) in ups for g in groups if g["name"].endswith("plus") for p in g["params"])
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(network.parameters()))

    no_te = make_network(sd1_host, "lora").param_groups(unet_lr=None, text_encoder_lr=0.0, learning_rate=1e-3)
    assert [(g["name"], g["lr"]) for g in no_te] == [("unet", 1e-3)]

    count = 12 if sd1_host.arch.name != "sdxl" else 9
    mid = ",".join(["2"] * (3 if count == 9 else 1))
    weighted = make_network(sd1_host, "lora", network_train_unet_only=True,
                            network_args={"up_lr_weight": ",".join(["0.5"] * count), "mid_lr_weight": mid})
    by_name = {g["name"]: g["lr"] for g in weighted.param_groups(unet_lr=1e-3, text_encoder_lr=None,
                                                                 learning_rate=1.0)}
    assert all(lr == pytest.approx(5e-4) for name, lr in by_name.items() if " OUT" in name)
    assert all(lr == pytest.approx(2e-3) for name, lr in by_name.items() if " M00" in name)
    assert all(lr == pytest.approx(1e-3) for name, lr in by_name.items() if " IN" in name)


def test_dropout_acts_only_in_train_mode(sd1_host):
    probe = Probe(sd1_host)
    network = make_network(sd1_host, "lora", network_dropout=0.5,
                           network_args={"rank_dropout": "0.3", "module_dropout": "0.2"})
    for module in network.lora_modules.values():
        torch.nn.init.normal_(module.lora_up, std=0.05)
    with network.attached():
        network.eval()
        first, second = probe.outputs()[0], probe.outputs()[0]
        assert torch.equal(first, second)
        network.train()
        torch.manual_seed(0)
        noisy = probe.outputs()[0]
    assert not torch.allclose(noisy, first, atol=1e-4)


def test_attached_twice_is_refused_and_hooks_go_on_errors(sd1_host):
    network = make_network(sd1_host, "lora")
    before = snapshot_host(sd1_host)
    with pytest.raises(RuntimeError, match="boom"):
        with network.attached():
            with pytest.raises(TrainingError, match="already attached"):
                with network.attached():
                    pass
            raise RuntimeError("boom")
    assert_same_state(before, snapshot_host(sd1_host))


def test_max_norm_scales_large_modules_down(sd1_host):
    network = make_network(sd1_host, "lora")
    for module in network.lora_modules.values():
        torch.nn.init.normal_(module.lora_up, std=1.0)
    scaled, mean_norm = network.apply_max_norm(0.5)
    assert scaled == len(network.lora_modules)
    assert mean_norm == pytest.approx(0.5, rel=1e-4)
    with torch.no_grad():
        norms = [float((m.unscaled_delta() * m.scale).norm()) for m in network.lora_modules.values()]
    assert max(norms) <= 0.5 + 1e-5
    assert network.apply_max_norm(10.0)[0] == 0


def test_metadata_names_the_network(sd1_host):
    network = make_network(sd1_host, "loha")
    meta = network.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")
    assert '"algo": "loha"' in meta["ss_network_args"]


def test_autocast_bf16_trains_float32_parameters(sd1_host):
    network = make_network(sd1_host, "lora")
    probe = Probe(sd1_host)
    with sd1_host.training_mode(), network.attached():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cond = sd1_host.encode_prompts(probe.texts, with_grad=True)
            out = sd1_host.apply_unet(probe.x, probe.t, cond)
        assert out.dtype == torch.bfloat16
        F.mse_loss(out.float(), probe.target).backward()
    grads = [p.grad for n, p in network.named_parameters() if n.endswith("lora_up")]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert {p.dtype for p in network.parameters()} == {torch.float32}
