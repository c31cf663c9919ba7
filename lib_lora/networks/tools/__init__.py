"""Network tools, pure functions over modules, state dicts and files: describe, resize, merge, bake, extract.

info.py        `network_info`: format, family, modules per block, unmatched keys, metadata (no model needed)
resize.py      `resize_network`: SVD to a fixed or dynamic rank (sd-scripts' rules), any format -> LoRA
merge.py       `merge_networks`: several networks into one LoRA, exact (concat) or by SVD
checkpoint.py  original-format checkpoints: key mapping through keys.py, `bake_into_checkpoint`
extract.py     `extract_lora`: a LoRA from the difference of two checkpoints
common.py      rank rules, SVD factors, output checks, derived metadata, NetworkToolError

Core errors are typed (NetworkToolError, LoraFormatError) and never printed here; the command line
(`python -m lib_lora lora …`, lib_lora/cli_lora.py) reports them. No diffusers import: this runs inside A1111.
"""

from __future__ import annotations

from .checkpoint import (
    BakedLora,
    BakeReport,
    Checkpoint,
    bake_into_checkpoint,
    checkpoint_arch,
    checkpoint_index,
    load_checkpoint,
)
from .common import OPERATION_KEY, LowRank, NetworkToolError, RankRule, check_output_path, low_rank
from .extract import ExtractedModule, ExtractReport, extract_lora, extract_lora_file
from .info import ModuleInfo, NetworkInfo, infer_arch_from_keys, network_info, unmatched_keys
from .merge import MergeSummary, merge_lora_files, merge_networks
from .resize import ModuleResize, ResizeReport, flatten, resize_lora_file, resize_network

__all__ = [
    "OPERATION_KEY",
    "BakeReport",
    "BakedLora",
    "Checkpoint",
    "ExtractReport",
    "ExtractedModule",
    "LowRank",
    "MergeSummary",
    "ModuleInfo",
    "ModuleResize",
    "NetworkInfo",
    "NetworkToolError",
    "RankRule",
    "ResizeReport",
    "bake_into_checkpoint",
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
    "merge_networks",
    "network_info",
    "resize_lora_file",
    "resize_network",
    "unmatched_keys",
]
