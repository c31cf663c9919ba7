"""Block-wise training settings as pure functions of the model family: which blocks, what rank, what LR factor.

sd-scripts' per-block lists (`block_dims`, `block_alphas`, `conv_block_*`, and the learning-rate factors built
from `down_lr_weight`/`mid_lr_weight`/`up_lr_weight`) have one value per position of its block list:
SD1/SD2 25 = IN00..IN11, M00, OUT00..OUT11; SDXL 23 = the embeddings, IN00..IN08, the three parts of the middle
block, OUT00..OUT08, the output layers. `train_blocks` (ours) is a Block Weight preset or a block list, read
into the set of blocks that get modules. Wrong lengths, unknown names and unknown blocks raise ConfigError:
unlike sd-scripts, nothing is padded with 1 or cut off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ...arch import SDXL, Arch
from ...blocks.presets import PresetBook
from ...errors import BlockWeightError
from ...unet_blocks import BASE, LABEL_EMB, OUT, TIME_EMBED
from ..errors import ConfigError
from .config import NetworkArgs

_SDXL_MIDDLE = re.compile(r"lora_unet_middle_block_(\d+)(?:_|$)")
_RANGE = re.compile(r"(BASE|IN\d\d|M00|OUT\d\d)(?:-(BASE|IN\d\d|M00|OUT\d\d))?")


def sdscripts_blocks(arch: Arch) -> tuple[str, ...]:
    """The label of each position of sd-scripts' per-block lists for `arch` (25 for SD1/SD2, 23 for SDXL)."""
    if arch is not SDXL:
        return arch.unet_block_ids
    ins = tuple(b for b in arch.unet_block_ids if b.startswith("IN"))
    outs = tuple(b for b in arch.unet_block_ids if b.startswith("OUT"))
    return (TIME_EMBED, *ins, "M00.0", "M00.1", "M00.2", *outs, OUT)


def sdscripts_block_index(block: str | None, ldm_key: str | None, arch: Arch) -> int | None:
    """The position of a UNet module in sd-scripts' per-block lists; None for text encoders and unplaced modules.

    `block` is the module's block id (unet_blocks); SDXL's middle block has three positions, told apart by the
    module's LDM-spelled kohya key (`lora_unet_middle_block_N_…`).
    """
    if block is None or block == BASE:
        return None
    if arch is not SDXL:
        blocks = arch.unet_block_ids
        return blocks.index(block) if block in blocks else None
    if block in (TIME_EMBED, LABEL_EMB):
        return 0
    if block == OUT:
        return 22
    if block == "M00":
        match = _SDXL_MIDDLE.match(ldm_key or "")
        return 10 + int(match.group(1)) if match and int(match.group(1)) < 3 else None
    number = int(block[-2:])
    return 1 + number if block.startswith("IN") else 13 + number


def per_block_values(values: Sequence[float] | None, arch: Arch, key: str) -> tuple[float, ...] | None:
    """`values` checked to have one entry per position of sd-scripts' list for `arch`."""
    if values is None:
        return None
    labels = sdscripts_blocks(arch)
    if len(values) != len(labels):
        raise ConfigError(f"network_args.{key}", ",".join(f"{v:g}" for v in values),
                          f"expected {len(labels)} values for {arch.title} ({labels[0]}, {labels[1]}, …, "
                          f"{labels[-1]}), got {len(values)}")
    return tuple(values)


def _lr_counts(arch: Arch) -> tuple[int, int, int]:
    """(down, mid, up) lengths of the learning-rate factor lists."""
    return (9, 3, 9) if arch is SDXL else (12, 1, 12)


def lr_weight_values(text: str, count: int, key: str) -> tuple[float, ...]:
    """A learning-rate factor list: comma-separated numbers (empty = 0) or a curve name with an optional +base.

    Curves over `count` blocks (i = 0 … count−1, x = i/(count−1)): sine = sin(πx/2), cosine = its reverse,
    linear = x, reverse_linear = 1 − x, zeros = 0; `+b` adds b to every value (sd-scripts' definitions).
    """
    where = f"network_args.{key}"
    name, _, base_text = text.partition("+")
    if name.replace("_", "").isalpha():
        base = float(base_text) if base_text else 0.0
        steps = [i / (count - 1) if count > 1 else 0.0 for i in range(count)]
        curves = {
            "sine": [math.sin(math.pi * x / 2) for x in steps],
            "cosine": [math.sin(math.pi * x / 2) for x in reversed(steps)],
            "linear": steps,
            "reverse_linear": list(reversed(steps)),
            "zeros": [0.0] * count,
        }
        if name not in curves:
            raise ConfigError(where, text, f"expected numbers or one of {', '.join(curves)}")
        return tuple(v + base for v in curves[name])
    values = tuple(float(part) if part.strip() else 0.0 for part in text.split(","))
    if len(values) != count:
        raise ConfigError(where, text, f"expected {count} values, got {len(values)}")
    return values


def block_lr_weights(args: NetworkArgs, arch: Arch) -> tuple[float, ...] | None:
    """The learning-rate factor of each position of sd-scripts' list, or None when no *_lr_weight is set.

    Unset parts are 1; factors at or below `block_lr_zero_threshold` become 0; SDXL's embedding and output
    positions are always 1.
    """
    if not args.has_block_lr:
        return None
    counts = _lr_counts(arch)
    parts = []
    for key, count in zip(("down_lr_weight", "mid_lr_weight", "up_lr_weight"), counts):
        text = getattr(args, key)
        values = (1.0,) * count if text is None else lr_weight_values(text, count, key)
        parts.extend(v if v > args.block_lr_zero_threshold else 0.0 for v in values)
    return (1.0, *parts, 1.0) if arch is SDXL else tuple(parts)


def trained_blocks(spec: str | None, arch: Arch, presets: PresetBook | None = None) -> frozenset[str] | None:
    """The blocks (BASE and UNet block ids) `train_blocks` lets have modules; None when it is not set.

    A block list ("IN04-IN07,OUT03-OUT06": single blocks and inclusive ranges in the order BASE, IN00…, M00,
    OUT00…) names UNet blocks and always keeps BASE (the text encoders follow network_train_unet_only). A
    Block Weight preset name or a literal vector keeps the blocks whose weight is not 0, BASE included.
    """
    if spec is None:
        return None
    order = (BASE, *arch.unet_block_ids)
    items = [item.strip() for item in spec.split(",")]
    if not all(_RANGE.fullmatch(item) for item in items):
        try:
            table = (presets or PresetBook.builtin()).resolve(spec, arch)
        except BlockWeightError as error:
            raise ConfigError("network_args.train_blocks", spec, str(error)) from None
        return frozenset(block for block, weight in table.items() if weight != 0)
    chosen = {BASE}
    for item in items:
        first, last = _RANGE.fullmatch(item).groups()
        unknown = [b for b in (first, last) if b is not None and b not in order]
        if unknown:
            raise ConfigError("network_args.train_blocks", spec, f"{arch.title} has no block {unknown[0]} (it has "
                                                                f"{order[1]}..{order[-1]})")
        start, stop = order.index(first), order.index(last or first)
        if stop < start:
            raise ConfigError("network_args.train_blocks", spec, f"range {item} runs backwards")
        chosen.update(order[start:stop + 1])
    return frozenset(chosen)
