"""The metadata of files the network tools make from others: a merged, resized, extracted or block-weighted LoRA
(`derived_file_metadata`) and a checkpoint with LoRAs baked in (`baked_checkpoint_metadata`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Literal

from .lora import LoraMetadata, with_network_shape

OPERATION_KEY = "lora_studio_operation"
"""Metadata key naming what a tool did to make the file (also prepended to ss_training_comment, as sd-scripts)."""
MERGE_KEY = "lora_studio_merge"
"""Metadata key of a merged or block-weighted file: JSON {"method", …, "sources": [{"name", "sshs_model_hash",
"weight"}]}, what it was made from."""
BAKED_KEY = "lora_studio_baked"
"""Checkpoint metadata: JSON list of the LoRAs baked in ({"name", "ratio", "sshs_model_hash"}), oldest first."""
FAMILY_KEYS = ("ss_base_model_version", "ss_v2")
"""The keys that say a file's model family (what a merge keeps of its first source)."""
_HASH_PREFIX = "sshs_"


def family_keys(metadata: Mapping[str, str]) -> dict[str, str]:
    """The FAMILY_KEYS of `metadata` that it has."""
    return {key: value for key, value in metadata.items() if key in FAMILY_KEYS}


def derived_file_metadata(
    source: Mapping[str, str],
    *,
    arch: str | None,
    dim: int | Literal["Dynamic"],
    alpha: float | Literal["Dynamic"],
    base_dim: int,
    base_alpha: float,
    note: str,
    plain_lora: bool = False,
    output_name: str = "",
    sd_model_name: str | None = None,
    merge: Mapping[str, object] | None = None,
    merged_from: Sequence[str] | None = None,
) -> dict[str, str]:
    """A tool's file: LoraMetadata's keys (at `base_dim`/`base_alpha`, when `arch` is known), then `source`'s
    (stale sshs_* hashes left out: the writer computes new ones) and `sd_model_name`, then the new dim and alpha,
    `note` in OPERATION_KEY and before ss_training_comment, `merge` as MERGE_KEY, `merged_from` as
    modelspec.merged_from.

    `plain_lora`: the modules became kohya LoRA, so ss_network_module is networks.lora and ss_network_args (which
    described the old type) is dropped.
    """
    base: dict[str, str] = {}
    if arch is not None:
        base = LoraMetadata(arch=arch, network_dim=base_dim, network_alpha=base_alpha,
                            output_name=output_name).to_metadata()
    kept = {key: value for key, value in source.items() if not key.startswith(_HASH_PREFIX)}
    if sd_model_name is not None:
        kept["ss_sd_model_name"] = sd_model_name
    out = with_network_shape({**base, **kept}, dim, alpha)
    if plain_lora:
        out["ss_network_module"] = "networks.lora"
        out.pop("ss_network_args", None)
    comment = source.get("ss_training_comment", "")
    out["ss_training_comment"] = f"{note}; {comment}" if comment and comment != "None" else note
    out[OPERATION_KEY] = note
    if merged_from is not None:
        out["modelspec.merged_from"] = ", ".join(merged_from)
    if merge is not None:
        out[MERGE_KEY] = json.dumps(merge)
    return out


def baked_checkpoint_metadata(existing: Mapping[str, str], history: Sequence[Mapping[str, object]],
                              note: str) -> dict[str, str]:
    """A checkpoint's metadata with LoRAs baked in: its own, BAKED_KEY holding `history`, `note` in OPERATION_KEY."""
    return {**existing, BAKED_KEY: json.dumps(list(history)), OPERATION_KEY: note}


def baked_history(metadata: Mapping[str, str]) -> list[dict[str, object]]:
    """The BAKED_KEY list of a checkpoint's metadata (empty when it has none or it is not a JSON list)."""
    try:
        history = json.loads(metadata.get(BAKED_KEY, "[]"))
    except ValueError:
        return []
    return history if isinstance(history, list) else []
