"""Training Forge Neo's text encoders keeps no full-precision copy of their weights: Neo stores them in fp16 (its
default on every device) and casts each layer to the computation's dtype as it runs; without the backward-pass
recast, autograd would keep every layer's cast copy until the backward pass (on SDXL, a second 3 GB text encoder).
Checked on the Forge Neo stand-in by watching what autograd saves during one TE + UNet training step."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from webui_standin.forge_neo import to_fp8

from lib_lora.hosts.forge_neo import ForgeNeoHost

pytestmark = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.forge_fixtures",)  # neo, neo_arch, neo_engine, neo_host, neo_opts


def _te_linears(host: ForgeNeoHost) -> list[torch.nn.Linear]:
    return [m for te in host.text_encoders for m in te.modules() if isinstance(m, torch.nn.Linear)]


def _stored(host: ForgeNeoHost, extra: list[torch.Tensor]) -> set[int]:
    """The storages of every weight the host holds (and of `extra`): saving those for backward copies nothing."""
    tensors = [t for root in host.state_roots() for t in root.state_dict(keep_vars=True).values()]
    return {t.untyped_storage().data_ptr() for t in [*tensors, *extra]}


def _copies_saved_in_one_step(host: ForgeNeoHost) -> list[tuple[int, ...]]:
    """Run one TE + UNet training step (trainable deltas on each TE's first layer and on a UNet attention);
    returns the shapes of the TE-weight-shaped tensors autograd saved that are not the stored weights."""
    linears = _te_linears(host)
    unet = next(m for n, m in host.unet.named_modules() if n.endswith("attn2.to_k"))
    firsts = [next(m for m in te.modules() if isinstance(m, torch.nn.Linear)) for te in host.text_encoders]
    targets = [*firsts, unet]
    deltas = [torch.nn.Parameter(torch.zeros(m.weight.shape)) for m in targets]
    hooks = [m.register_forward_hook(lambda mod, args, out, d=d: out + torch.nn.functional.linear(args[0], d))
             for m, d in zip(targets, deltas)]
    stored = _stored(host, deltas)
    shapes = {tuple(m.weight.shape) for m in linears}
    copies: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> Any:
        if (tensor.is_floating_point() and tuple(tensor.shape) in shapes
                and tensor.untyped_storage().data_ptr() not in stored):
            copies.append(tuple(tensor.shape))
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            cond = host.encode_prompts(["1girl, solo"], with_grad=True, size=(64, 64))
            noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
            host.apply_unet(noisy, torch.tensor([400]), cond).pow(2).mean().backward()
    finally:
        for hook in hooks:
            hook.remove()
    assert all(d.grad is not None and d.grad.abs().sum() > 0 for d in deltas)
    return copies


@pytest.mark.parametrize("neo_arch", ["sd1", "sdxl"], indirect=True)
def test_half_precision_text_encoders_train_without_a_full_precision_copy(neo_host: ForgeNeoHost) -> None:
    layers = sum(to_fp8(te, torch.float16) for te in neo_host.text_encoders)  # Neo's default TE storage
    assert layers == len(_te_linears(neo_host)) > 0
    weights = {k: v.detach().clone() for te in neo_host.text_encoders for k, v in te.state_dict().items()}
    with neo_host.training_mode():
        assert _copies_saved_in_one_step(neo_host) == []
    after = {k: v.detach().clone() for te in neo_host.text_encoders for k, v in te.state_dict().items()}
    assert weights.keys() == after.keys() and all(torch.equal(weights[k], after[k]) for k in weights)
    assert not any("forward" in m.__dict__ for m in _te_linears(neo_host))


@pytest.mark.parametrize("neo_arch", ["sd1"], indirect=True)
def test_the_check_sees_the_cast_copies_neo_plain_forward_would_keep(neo_host: ForgeNeoHost) -> None:
    """The check above can fail: through Neo's plain cast, each fp16 layer's fp32 copy is saved for backward."""
    to_fp8(neo_host.text_encoders[0], torch.float16)
    with neo_host.training_mode():
        for module in _te_linears(neo_host):
            module.__dict__.pop("forward", None)
        assert len(_copies_saved_in_one_step(neo_host)) > len(_te_linears(neo_host)) // 2
