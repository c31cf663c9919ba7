"""Network tools, pure functions over modules, state dicts and files: describe, resize, merge, bake, extract.

info.py        `network_info`: format, family, modules per block, unmatched keys, metadata (no model needed)
resize.py      `resize_network`: SVD to a fixed or dynamic rank (sd-scripts' rules), any format -> LoRA
merge.py       `merge_networks`/`merge_modules`: several networks into one LoRA: concat (exact), svd, dare, ties
merge_methods.py  MergeOptions and the rules combining one module's ΔWs (weighted sum, DARE, TIES)
blockweight.py `block_weight_lora_file`: a LoRA with its block weights baked in (exact at 1.0)
checkpoint.py  original-format checkpoints: key mapping through keys.py, `bake_into_checkpoint`
extract.py     `extract_lora`: a LoRA from the difference of two checkpoints
deltas.py      rank rules, SVD factors, output checks, NetworkToolError; a tool's file metadata (from ../metadata/)

Core errors are typed (NetworkToolError, LoraFormatError) and never printed here; the command line
(`python -m lib_lora lora …`, lib_lora/cli/lora.py) reports them. No diffusers import: this runs inside A1111.
"""

from __future__ import annotations

from ..metadata import MERGE_KEY, OPERATION_KEY
from .blockweight import BlockWeightReport, block_weight_lora_file, block_weighted_state
from .checkpoint import (
    BakedLora,
    BakeReport,
    Checkpoint,
    bake_into_checkpoint,
    checkpoint_arch,
    checkpoint_index,
    load_checkpoint,
)
from .deltas import LowRank, NetworkToolError, RankRule, check_output_path, low_rank
from .extract import ExtractedModule, ExtractReport, extract_lora, extract_lora_file
from .info import ModuleInfo, NetworkInfo, infer_arch_from_keys, network_info, unmatched_keys
from .merge import MergeResult, MergeSummary, merge_lora_files, merge_modules, merge_networks
from .merge_methods import MERGE_METHODS, MergeOptions
from .resize import ModuleResize, ResizeReport, flatten, resize_lora_file, resize_network

__all__ = [
    "MERGE_KEY",
    "MERGE_METHODS",
    "OPERATION_KEY",
    "BakeReport",
    "BakedLora",
    "BlockWeightReport",
    "Checkpoint",
    "ExtractReport",
    "ExtractedModule",
    "LowRank",
    "MergeOptions",
    "MergeResult",
    "MergeSummary",
    "ModuleInfo",
    "ModuleResize",
    "NetworkInfo",
    "NetworkToolError",
    "RankRule",
    "ResizeReport",
    "bake_into_checkpoint",
    "block_weight_lora_file",
    "block_weighted_state",
    "check_output_path",
    "checkpoint_arch",
    "checkpoint_index",
    "extract_lora",
    "extract_lora_file",
    "flatten",
    "infer_arch_from_keys",
    "load_checkpoint",
    "low_rank",
    "merge_lora_files",
    "merge_modules",
    "merge_networks",
    "network_info",
    "resize_lora_file",
    "resize_network",
    "unmatched_keys",
]
