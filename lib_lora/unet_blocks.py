"""Block ids of UNet modules and kohya keys: BASE, IN00..IN11, M00, OUT00..OUT11 (the LDM block index).

A block id is the index of the LDM block a module lives in (`input_blocks.N` -> INnn, `middle_block` -> M00,
`output_blocks.N` -> OUTnn), as LBW numbers them (shared/research/lbw.md §2.4). Every text-encoder module is
BASE. Three UNet parts lie outside every block: `time_embed` (diffusers `time_embedding`), `label_emb`
(SDXL; diffusers `add_embedding`) and `out` (diffusers `conv_norm_out`/`conv_out`). They get their own names
as ids, and the rule (DESIGN.md, after LBW) is that block weights never scale them: their weight is always 1.

Anything else gets None: not an error, because a file may carry keys no model has. Unmatched keys are
reported by the key matching in `lib_lora.networks.keys`, not here.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .arch import SD1, Arch

BASE = "BASE"
TIME_EMBED = "time_embed"
LABEL_EMB = "label_emb"
OUT = "out"
UNBLOCKED_PARTS: tuple[str, ...] = (TIME_EMBED, LABEL_EMB, OUT)
"""UNet parts no block covers; block weights leave them at 1 (LBW: no substring matches, ratio 1)."""

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _in(n: int) -> str:
    return f"IN{n:02d}"


def _out(n: int) -> str:
    return f"OUT{n:02d}"


def _const(value: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: value


_LDM_PATH_RULES: tuple[_Rule, ...] = (
    (re.compile(r"input_blocks\.(\d+)(?:\.|$)"), lambda m: _in(int(m.group(1)))),
    (re.compile(r"middle_block(?:\.|$)"), _const("M00")),
    (re.compile(r"output_blocks\.(\d+)(?:\.|$)"), lambda m: _out(int(m.group(1)))),
    (re.compile(r"time_embed(?:\.|$)"), _const(TIME_EMBED)),
    (re.compile(r"label_emb(?:\.|$)"), _const(LABEL_EMB)),
    (re.compile(r"out(?:\.|$)"), _const(OUT)),
)
"""LDM module path (within the UNet) -> block id. `(?:\\.|$)` after the index keeps 1 apart from 10 and 11."""

_KEY_RULES: tuple[_Rule, ...] = (
    (re.compile(r"lora_te[12]?_"), _const(BASE)),
    # LDM spelling (kohya SDXL, SD1 files in LDM naming)
    (re.compile(r"lora_unet_input_blocks_(\d+)(?:_|$)"), lambda m: _in(int(m.group(1)))),
    (re.compile(r"lora_unet_middle_block(?:_|$)"), _const("M00")),
    (re.compile(r"lora_unet_output_blocks_(\d+)(?:_|$)"), lambda m: _out(int(m.group(1)))),
    (re.compile(r"lora_unet_time_embed(?:_|$)"), _const(TIME_EMBED)),
    (re.compile(r"lora_unet_label_emb(?:_|$)"), _const(LABEL_EMB)),
    (re.compile(r"lora_unet_out(?:_|$)"), _const(OUT)),
    # diffusers spelling (kohya SD1/SD2); layers_per_block 2: 3 input blocks per down level, 3 output per up
    (re.compile(r"lora_unet_conv_in$"), _const("IN00")),
    (re.compile(r"lora_unet_down_blocks_(\d+)_(?:resnets|attentions)_([01])(?:_|$)"),
     lambda m: _in(3 * int(m.group(1)) + int(m.group(2)) + 1)),
    (re.compile(r"lora_unet_down_blocks_(\d+)_downsamplers_0(?:_|$)"), lambda m: _in(3 * int(m.group(1)) + 3)),
    (re.compile(r"lora_unet_mid_block_(?:resnets_[01]|attentions_0)(?:_|$)"), _const("M00")),
    (re.compile(r"lora_unet_up_blocks_(\d+)_(?:resnets|attentions)_([012])(?:_|$)"),
     lambda m: _out(3 * int(m.group(1)) + int(m.group(2)))),
    (re.compile(r"lora_unet_up_blocks_(\d+)_upsamplers_0(?:_|$)"), lambda m: _out(3 * int(m.group(1)) + 2)),
    (re.compile(r"lora_unet_time_embedding_linear_[12]$"), _const(TIME_EMBED)),
    (re.compile(r"lora_unet_add_embedding_linear_[12]$"), _const(LABEL_EMB)),
    (re.compile(r"lora_unet_conv_(?:norm_)?out$"), _const(OUT)),
)
"""kohya module name -> block id, for both UNet spellings and the text encoders (first match wins)."""


def _first_match(rules: tuple[_Rule, ...], text: str) -> str | None:
    for pattern, block in rules:
        match = pattern.match(text)
        if match:
            return block(match)
    return None


def _valid(block: str | None, arch: Arch) -> str | None:
    """`block` when `arch` has it (or it is BASE / an unblocked part), else None."""
    if block is None or block == BASE or block in UNBLOCKED_PARTS or block in arch.unet_block_ids:
        return block
    return None


def block_of_ldm_path(path: str, arch: Arch = SD1) -> str | None:
    """The block id of a module (or parameter) at LDM path `path` within the UNet; None when no rule covers it.

    `time_embed…`, `label_emb…` and `out…` give those names (weight 1 under block weights). An index the arch
    does not have (e.g. `input_blocks.9` on SDXL) gives None; the default arch SD1 has the most blocks.
    """
    return _valid(_first_match(_LDM_PATH_RULES, path), arch)


def block_of_key(key: str, arch: Arch = SD1) -> str | None:
    """The block id of a kohya key (module name, or a tensor key: the part before its first '.'), from the key alone.

    Reads both UNet spellings (`lora_unet_down_blocks_0_attentions_0_…` and `lora_unet_input_blocks_1_1_…`);
    `lora_te_`/`lora_te1_`/`lora_te2_` keys are BASE. None for keys of no known part, and for block indices
    `arch` does not have (the default SD1 has IN00..IN11, M00, OUT00..OUT11).
    """
    return _valid(_first_match(_KEY_RULES, key.split(".", 1)[0]), arch)


def is_weighted_block(block: str | None) -> bool:
    """Whether per-block weights apply to `block`: BASE and the IN/M/OUT blocks; not unblocked parts or None."""
    return block is not None and block not in UNBLOCKED_PARTS
