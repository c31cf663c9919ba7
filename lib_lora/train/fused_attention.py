"""Training LoRA modules on fused attention: torch's nn.MultiheadAttention, which open_clip text encoders use (the
text encoder of A1111's SD2 and the second one of its SDXL).

Such an attention reads its q/k/v weights as row ranges of one `in_proj_weight` and its output projection's weight
straight from `out_proj`, inside `F.multi_head_attention_forward`: no Linear runs, so a forward hook on a q/k/v
"layer" never fires. For the run each such attention instance gets one forward hook (removed on exit; nothing of
the class touched, no module replaced, no weight written) that computes the attention again with
W + ΔW: the q/k/v rows of in_proj plus their modules' deltas, out_proj plus its delta, and returns that output.
The attention's own forward still runs first, on purpose: A1111's built-in Lora hooks in there (its class-level
forward restores the weights of LoRAs a generation left merged), so the weights read afterwards are the base.
Gradients reach the LoRA weights through the sums. What a weight sum cannot carry is refused when the network is
planned (`refuse_untrainable`): neuron dropout (it acts on each token's activations) and attentions whose q/k/v
weights are separate (`kdim`/`vdim` set; open_clip never builds those). Rank dropout acts on whole output rows of
ΔW there (LyCORIS's weight-side rule), module dropout as everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..networks.keys import Target, TargetIndex
from .errors import ConfigError
from .network.module import TrainableModule

_QKV = ("q", "k", "v")
_CALL = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
         "is_causal")
"""nn.MultiheadAttention.forward's parameters, in order (torch 2.x)."""
_CALL_DEFAULTS: dict[str, Any] = {"key_padding_mask": None, "need_weights": True, "attn_mask": None,
                                  "average_attn_weights": True, "is_causal": False}
_COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class FusedGroup:
    """The trainable modules on one attention: one per q/k/v row range (None where untrained) and on out_proj."""

    attention: nn.MultiheadAttention
    rows: list[TrainableModule | None] = field(default_factory=lambda: [None, None, None])
    out: TrainableModule | None = None


def fused_owners(index: TargetIndex) -> dict[int, nn.MultiheadAttention]:
    """{id(module): its attention} for every nn.MultiheadAttention of `index` and its out_proj."""
    owners: dict[int, nn.MultiheadAttention] = {}
    for target in index.targets():
        if isinstance(target.module, nn.MultiheadAttention):
            owners[id(target.module)] = owners[id(target.module.out_proj)] = target.module
    return owners


def is_fused(target: Target, owners: Mapping[int, nn.MultiheadAttention]) -> bool:
    """Whether `target` is read by a fused attention (no hook on it would fire)."""
    return target.rows is not None or id(target.module) in owners


def refuse_untrainable(targets: Iterable[Target], index: TargetIndex, network_dropout: float | None) -> None:
    """ConfigError when fused-attention `targets` are asked for what a weight sum cannot do (module docstring)."""
    owners = fused_owners(index)
    fused = [t for t in targets if is_fused(t, owners)]
    if not fused:
        return
    separate = next((t for t in fused if not owners[id(t.module)]._qkv_same_embed_dim), None)
    if separate is not None:
        raise ConfigError("network_train_unet_only", False,
                          f"{separate.key} is an attention with separate q/k/v widths, which cannot be trained "
                          "here; set network_train_unet_only = true")
    if network_dropout:
        raise ConfigError("network_dropout", network_dropout,
                          f"this text encoder's attention is fused (open_clip, e.g. {fused[0].key}): its q/k/v "
                          "are trained as weight sums, which neuron dropout (on each token's activations) cannot "
                          "act on; leave network_dropout unset, or set network_train_unet_only = true")


def split_fused(modules: Iterable[TrainableModule], index: TargetIndex,
                ) -> tuple[list[FusedGroup], list[TrainableModule]]:
    """(one group per fused attention that has modules, the modules a plain forward hook serves)."""
    owners = fused_owners(index)
    groups: dict[int, FusedGroup] = {}
    plain: list[TrainableModule] = []
    for module in modules:
        target = module.target
        if not is_fused(target, owners):
            plain.append(module)
            continue
        attention = owners[id(target.module)]
        group = groups.setdefault(id(attention), FusedGroup(attention))
        if target.rows is None:
            group.out = module
        else:
            group.rows[target.rows.start // attention.embed_dim] = module
    return list(groups.values()), plain


def fused_hook(group: FusedGroup, multiplier: Callable[[], float]):
    """A forward hook (with kwargs) for `group.attention` returning the attention computed with W + ΔW."""
    def recompute(attention: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
        scale = multiplier()
        if scale == 0.0 and all(m is None or m.dora_scale is None for m in (*group.rows, group.out)):
            return None
        call = dict(zip(_CALL, args))
        call.update(kwargs)
        for name, default in _CALL_DEFAULTS.items():
            call.setdefault(name, default)
        in_weight = _with_delta(attention.in_proj_weight, _qkv_delta(group, scale))
        out_weight = attention.out_proj.weight
        if group.out is not None and (delta := _delta(group.out, scale)) is not None:
            out_weight = _with_delta(out_weight, delta)
        return _attention(attention, call, in_weight, out_weight)

    return recompute


def _delta(module: TrainableModule, multiplier: float) -> Tensor | None:
    """ΔW·multiplier of one module in float32 (DoRA: W'−W); None when module dropout skips it this step."""
    if module.training and module.module_dropout and torch.rand(1).item() < module.module_dropout:
        return None
    if module.dora_scale is not None:
        return module.dora_delta(multiplier)
    return module.delta_weight() * multiplier


def _qkv_delta(group: FusedGroup, multiplier: float) -> Tensor | None:
    """The deltas of the q/k/v rows stacked as in_proj's (zeros for rows without a module); None if all none."""
    width = group.attention.embed_dim
    deltas = [None if m is None else _delta(m, multiplier) for m in group.rows]
    if all(d is None for d in deltas):
        return None
    like = next(d for d in deltas if d is not None)
    return torch.cat([d if d is not None else like.new_zeros(width, like.shape[1]) for d in deltas])


def _with_delta(weight: Tensor, delta: Tensor | None) -> Tensor:
    """W + ΔW in W's dtype (float32 when W is stored in a non-compute dtype such as fp8; autocast casts it)."""
    if delta is None:
        return weight
    dtype = weight.dtype if weight.dtype in _COMPUTE_DTYPES else torch.float32
    return (weight.to(torch.float32) + delta.to(weight.device)).to(dtype)


def _attention(attention: nn.MultiheadAttention, call: dict[str, Any], in_weight: Tensor,
               out_weight: Tensor) -> tuple[Tensor, Tensor | None]:
    """What nn.MultiheadAttention.forward returns for `call`, with in_proj/out_proj weights replaced (slow path)."""
    query, key, value = call["query"], call["key"], call["value"]
    batched = query.dim() == 3
    if attention.batch_first and batched:
        query, key, value = (x.transpose(1, 0) for x in (query, key, value))
    out, weights = F.multi_head_attention_forward(
        query, key, value, attention.embed_dim, attention.num_heads, in_weight, attention.in_proj_bias,
        attention.bias_k, attention.bias_v, attention.add_zero_attn, attention.dropout, out_weight,
        attention.out_proj.bias, training=attention.training, key_padding_mask=call["key_padding_mask"],
        need_weights=call["need_weights"], attn_mask=call["attn_mask"],
        average_attn_weights=call["average_attn_weights"], is_causal=call["is_causal"])
    if attention.batch_first and batched:
        out = out.transpose(1, 0)
    return out, weights
