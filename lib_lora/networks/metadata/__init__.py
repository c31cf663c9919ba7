"""LoRA file metadata, the one place that writes it: every ss_*, modelspec.* and lora_studio_* key of a file we
write is rendered here from typed records, and read back here.

lora.py      `LoraMetadata` (sd-scripts' ss_* + modelspec.* keys) and `NetworkRecord` (ss_network_*)
run.py       what a training run adds: `TrainingRecord`, `DatasetRecord`, `ModeRecord`, `run_file_metadata`
derived.py   files the network tools make: `derived_file_metadata`, `baked_checkpoint_metadata`, our tool keys
reading.py   `parse_metadata`, `arch_from_metadata`
checks.py    the field checks (ValueError naming the field and the value)
"""

from .derived import (
    BAKED_KEY,
    FAMILY_KEYS,
    MERGE_KEY,
    OPERATION_KEY,
    baked_checkpoint_metadata,
    baked_history,
    derived_file_metadata,
    family_keys,
)
from .lora import (
    DYNAMIC,
    MIXED_PRECISIONS,
    MODELSPEC_IMPL_DIFFUSERS,
    MODELSPEC_IMPL_SGM,
    MODELSPEC_VERSION,
    PREDICTION_TYPES,
    LoraMetadata,
    NetworkRecord,
    with_network_shape,
)
from .reading import arch_from_metadata, parse_metadata
from .run import TRAINING_MODES, DatasetRecord, ModeRecord, TrainingRecord, run_file_metadata

__all__ = [
    "BAKED_KEY",
    "DYNAMIC",
    "FAMILY_KEYS",
    "MERGE_KEY",
    "MIXED_PRECISIONS",
    "MODELSPEC_IMPL_DIFFUSERS",
    "MODELSPEC_IMPL_SGM",
    "MODELSPEC_VERSION",
    "OPERATION_KEY",
    "PREDICTION_TYPES",
    "TRAINING_MODES",
    "DatasetRecord",
    "LoraMetadata",
    "ModeRecord",
    "NetworkRecord",
    "TrainingRecord",
    "arch_from_metadata",
    "baked_checkpoint_metadata",
    "baked_history",
    "derived_file_metadata",
    "family_keys",
    "parse_metadata",
    "run_file_metadata",
    "with_network_shape",
]
