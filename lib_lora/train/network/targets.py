"""Which host weights get a trainable module, with what rank and alpha: selection rules as data.

A weight belongs to one part of the model, read from its kohya names: "attention" (everything in a UNet
transformer, with proj_in/proj_out), "resblock" (ResBlocks and down/upsamplers), "conv_io" (conv_in, conv_out),
"time_embed", or "te" (text-encoder attention and MLP linears). kohya's networks.lora trains attention + te,
and resblock when conv_dim is set; lycoris.kohya uses its module presets ("full" by default, which also trains
conv_in/conv_out and the time embedding). Linear and 1×1 weights get network_dim/alpha, k×k convolutions
conv_dim/conv_alpha; per-block dims, block learning-rate factors of 0 and `train_blocks` then drop modules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...arch import Arch
from ...blocks.presets import PresetBook
from ...networks.keys import Target, TargetIndex
from ...unet_blocks import BASE
from ..fused_attention import refuse_untrainable
from .blocks import block_lr_weights, per_block_values, sdscripts_block_index, sdscripts_blocks, trained_blocks
from .config import NetworkConfig

RULES: dict[str, tuple[frozenset[str], bool]] = {
    # name: (parts, whether k×k convolutions are trained)
    "networks.lora": (frozenset({"attention", "te"}), False),
    "networks.lora+conv": (frozenset({"attention", "resblock", "te"}), True),
    "full": (frozenset({"attention", "resblock", "conv_io", "time_embed", "te"}), True),
    "full-lin": (frozenset({"attention", "resblock", "time_embed", "te"}), False),
    "attn-mlp": (frozenset({"attention", "te"}), False),
    "unet-only": (frozenset({"attention", "resblock", "conv_io", "time_embed"}), True),
    "unet-transformer-only": (frozenset({"attention"}), False),
    "unet-convblock-only": (frozenset({"resblock", "conv_io"}), True),
}
"""Selection rule name -> (model parts, k×k convolutions trained). LyCORIS preset names are rule names."""


@dataclass(frozen=True)
class ModulePlan:
    """One module to create: its target, rank and alpha, and its place in sd-scripts' per-block lists."""

    target: Target
    dim: int
    alpha: float
    block_index: int | None


def part_of(target: Target, spellings: Iterable[str]) -> str | None:
    """The model part a target belongs to (see module docstring), from all its kohya spellings; None if none."""
    names = tuple(spellings)
    if target.root != "unet":
        return "te" if any("_self_attn_" in n or "_mlp_" in n for n in names) else None
    for name in names:
        if "transformer_blocks" in name or name.endswith(("_proj_in", "_proj_out")):
            return "attention"
        if any(f"_{kind}_" in name for kind in ("resnets", "downsamplers", "upsamplers")):
            return "resblock"
        if name in ("lora_unet_conv_in", "lora_unet_conv_out"):
            return "conv_io"
        if name.startswith("lora_unet_time_embedding_linear_"):
            return "time_embed"
    return None


def rule_name(config: NetworkConfig) -> str:
    """The RULES entry `config` selects with."""
    if config.network_module == "networks.lora":
        return "networks.lora+conv" if config.args.conv_dim else "networks.lora"
    return config.args.preset


def _is_kxk(target: Target) -> bool:
    shape = tuple(target.shape)
    return len(shape) == 4 and any(k > 1 for k in shape[2:])


def _ldm_key(index: TargetIndex, target: Target) -> str:
    return next((s for s in index.spellings(target) if s.startswith(("lora_unet_input", "lora_unet_middle",
                                                                     "lora_unet_output"))), target.key)


def _conv_default(config: NetworkConfig) -> tuple[int | None, float]:
    """(conv_dim, conv_alpha) before per-block lists: sd-scripts' (None unless set, alpha 1) or LyCORIS's defaults."""
    args = config.args
    if config.network_module == "networks.lora":
        return args.conv_dim, args.conv_alpha if args.conv_alpha is not None else 1.0
    dim = args.conv_dim or config.network_dim
    return dim, args.conv_alpha if args.conv_alpha is not None else config.network_alpha


def plan_modules(config: NetworkConfig, index: TargetIndex, *, presets: PresetBook | None = None,
                 ) -> tuple[list[ModulePlan], tuple[float, ...] | None]:
    """The modules `config` creates on the host of `index`, and the per-position LR factors (None if unset).

    Follows sd-scripts: per-block dims are used when block_dims or a *_lr_weight is set (then k×k convolutions
    only with conv_block_dims or conv_dim); positions whose LR factor is 0 get no module. Raises ConfigError
    for lists of the wrong length, unknown train_blocks, and fused attention asked for what it cannot train.
    """
    arch, args = index.arch, config.args
    parts, kxk = RULES[rule_name(config)]
    if config.network_train_unet_only:
        parts = parts - {"te"}
    if config.network_train_text_encoder_only:
        parts = parts & {"te"}
    lr_weights = block_lr_weights(args, arch)
    per_block = args.block_dims is not None or lr_weights is not None
    dims, alphas, conv_dims, conv_alphas = _block_tables(config, arch, per_block)
    conv_dim, conv_alpha = _conv_default(config)
    allowed = trained_blocks(args.train_blocks, arch, presets)
    plans: list[ModulePlan] = []
    for target in index.targets():
        if len(target.shape) not in (2, 4) or part_of(target, index.spellings(target)) not in parts:
            continue
        if allowed is not None and (target.block not in allowed if target.root == "unet" else BASE not in allowed):
            continue
        position = sdscripts_block_index(target.block, _ldm_key(index, target), arch) if target.root == "unet" \
            else None
        is_conv = _is_kxk(target)
        if is_conv and not kxk:
            continue
        if per_block and position is not None:
            table_dims, table_alphas = (conv_dims, conv_alphas) if is_conv else (dims, alphas)
            if table_dims is None:
                continue
            dim, alpha = int(table_dims[position]), float(table_alphas[position])
            if lr_weights is not None and lr_weights[position] == 0:
                continue
        else:
            dim, alpha = (conv_dim, conv_alpha) if is_conv else (config.network_dim, config.network_alpha)
        if not dim:
            continue
        plans.append(ModulePlan(target, dim, alpha, position))
    refuse_unhookable(plans, index, config)
    return plans, lr_weights


def _block_tables(config: NetworkConfig, arch: Arch, per_block: bool):
    """sd-scripts' per-position (dims, alphas, conv_dims, conv_alphas); all None when per-block dims are off."""
    if not per_block:
        return None, None, None, None
    args = config.args
    n = len(sdscripts_blocks(arch))
    dims = per_block_values(args.block_dims, arch, "block_dims") or (config.network_dim,) * n
    alphas = per_block_values(args.block_alphas, arch, "block_alphas") or (config.network_alpha,) * n
    conv_dims = per_block_values(args.conv_block_dims, arch, "conv_block_dims")
    conv_alphas = per_block_values(args.conv_block_alphas, arch, "conv_block_alphas")
    default_dim, default_alpha = _conv_default(config)
    if conv_dims is None and default_dim:
        conv_dims = (default_dim,) * n
    if conv_dims is not None and conv_alphas is None:
        conv_alphas = (default_alpha,) * n
    return dims, alphas, conv_dims, conv_alphas


def refuse_unhookable(plans: list[ModulePlan], index: TargetIndex, config: NetworkConfig) -> None:
    """ConfigError for text-encoder weights inside nn.MultiheadAttention (open_clip: A1111's SD2 and SDXL te2)
    asked for what their training cannot do (`fused_attention.refuse_untrainable`); the rest train there."""
    refuse_untrainable((p.target for p in plans), index, config.network_dropout)
