"""Random kohya-format LoRA state dicts for a model's targets, in every format we read (tests, demo, bench).

Targets follow kohya's defaults: "lora" and the LyCORIS types train the attention blocks of the UNet (every
module under a transformer, plus proj_in/proj_out) and the text encoders' attention and MLP linears; "locon"
adds the ResBlock and sampler convolutions (not conv_in or the output conv). Factors are random with small
outputs so a LoRA visibly changes a model without blowing it up.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..unet_blocks import is_weighted_block
from .keys import Target, TargetIndex

KINDS = ("lora", "locon", "loha", "lokr", "full", "dora")


def kohya_default_targets(index: TargetIndex, *, kind: str = "lora", roots: Iterable[str] = ("unet", "te1", "te2"),
                          ) -> list[Target]:
    """The targets kohya's trainer puts a module of `kind` on (weights of 2 or 4 dimensions only)."""
    roots = set(roots)
    chosen = []
    for target in index.targets():
        if target.root not in roots or len(target.shape) not in (2, 4):
            continue
        if target.root != "unet":
            if "_self_attn_" in target.key or "_mlp_" in target.key:
                chosen.append(target)
        elif _in_attention_block(target.key) or (kind == "locon" and _in_conv_block(target)):
            chosen.append(target)
    return chosen


def _in_attention_block(key: str) -> bool:
    return "transformer_blocks" in key or key.endswith(("proj_in", "proj_out"))


def _in_conv_block(target: Target) -> bool:
    """ResBlock and down/upsampler convolutions (kohya's LoCon), not conv_in (IN00) or the output conv."""
    return len(target.shape) == 4 and is_weighted_block(target.block) and target.block != "IN00"


def random_lora_state_dict(
    index: TargetIndex,
    *,
    kind: str = "lora",
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    roots: Iterable[str] = ("unet", "te1", "te2"),
    spelling: str = "canonical",
    strength: float = 0.5,
) -> dict[str, torch.Tensor]:
    """A state dict of `kind` modules on kohya's default targets; `spelling` "diffusers"/"ldm" re-spells UNet keys.

    `strength` is roughly the size of each delta relative to its weight's typical value.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}")
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for target in kohya_default_targets(index, kind=kind, roots=roots):
        key = _spelled(index, target, spelling)
        tensors = _module_tensors(kind, tuple(target.shape), rank, generator, strength)
        if kind != "full":
            tensors["alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
        if kind == "dora":
            tensors["dora_scale"] = _dora_scale(target.weight.detach().float(), generator)
        state.update({f"{key}.{suffix}": tensor for suffix, tensor in tensors.items()})
    return state


def _spelled(index: TargetIndex, target: Target, spelling: str) -> str:
    if spelling == "canonical" or target.root != "unet":
        return target.key
    ldm_like = [s for s in index.spellings(target) if s.startswith(("lora_unet_input", "lora_unet_middle",
                                                                   "lora_unet_output", "lora_unet_time_embed",
                                                                   "lora_unet_label_emb", "lora_unet_out"))]
    others = [s for s in index.spellings(target) if s not in ldm_like]
    pool = ldm_like if spelling == "ldm" else others
    if not pool:
        raise ValueError(f"no {spelling} spelling for {target.key}")
    return pool[0]


def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


def _module_tensors(kind: str, shape: tuple[int, ...], rank: int, generator: torch.Generator,
                    strength: float) -> dict[str, torch.Tensor]:
    out_dim, in_dim = shape[0], shape[1]
    kernel = shape[2:]
    fan_in = in_dim * (kernel[0] * kernel[1] if kernel else 1)
    if kind == "full":
        return {"diff": _normal(shape, strength / fan_in**0.5, generator)}
    if kind in ("lora", "locon", "dora"):
        down_shape = (rank, in_dim, *kernel) if kernel else (rank, in_dim)
        up_shape = (out_dim, rank, 1, 1) if kernel else (out_dim, rank)
        return {
            "lora_down.weight": _normal(down_shape, 1 / fan_in**0.5, generator),
            "lora_up.weight": _normal(up_shape, strength / rank**0.5, generator),
        }
    if kind == "loha":
        std = (strength / rank) ** 0.5
        return {
            "hada_w1_a": _normal((out_dim, rank), std, generator),
            "hada_w1_b": _normal((rank, fan_in), std / fan_in**0.25, generator),
            "hada_w2_a": _normal((out_dim, rank), 1.0, generator),
            "hada_w2_b": _normal((rank, fan_in), 1 / fan_in**0.25, generator),
        }
    # lokr: ΔW = kron(w1, w2_a @ w2_b) with w1 [f_out, f_in] full and w2 decomposed
    f_out, f_in = _small_factor(out_dim), _small_factor(fan_in)
    return {
        "lokr_w1": _normal((f_out, f_in), 1.0, generator),
        "lokr_w2_a": _normal((out_dim // f_out, rank), strength / rank**0.5, generator),
        "lokr_w2_b": _normal((rank, fan_in // f_in), 1 / fan_in**0.5, generator),
    }


def _small_factor(n: int) -> int:
    """The smallest factor of n above 1 (n itself when prime): LoKr's first Kronecker factor."""
    return next((f for f in range(2, 9) if n % f == 0), 1)


def _dora_scale(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-output-row magnitudes near the weight's own row norms ([out, 1, …], LyCORIS's wd_on_out layout)."""
    norms = weight.reshape(weight.shape[0], -1).norm(dim=1)
    jitter = 1 + 0.1 * torch.randn(norms.shape, generator=generator)
    return (norms * jitter).reshape(weight.shape[0], *([1] * (weight.dim() - 1)))
