"""Which model family (sd1, sd2, sdxl) a LoRA file is for: its metadata's word, else what its module names imply.

Below the loaders and the tools, which both ask it (the loader check picks the family to check against, the
tools record it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .formats.base import NetworkModule
from .metadata import arch_from_metadata

_TRANSFORMER_INDEX = re.compile(r"_transformer_blocks_(\d+)_")
_TE_LAYER = re.compile(r"lora_te_text_model_encoder_layers_(\d+)_")
_SD12_ONLY = re.compile(r"lora_unet_(?:input_blocks_[12]_1_|(?:input|output)_blocks_(?:9|1[01])_|down_blocks_3_"
                        r"|up_blocks_3_|down_blocks_0_attentions_|up_blocks_3_attentions_)")
_SDXL_ONLY = re.compile(r"lora_te[12]_|lora_unet_(?:label_emb|add_embedding)")
_LDM_SPELLED = re.compile(r"lora_unet_(?:input_blocks|middle_block|output_blocks)_")


def infer_arch_from_keys(modules: Mapping[str, NetworkModule]) -> str | None:
    """sd1/sd2/sdxl from module names alone; None when no key is a UNet or text-encoder key.

    SDXL: a `lora_te1_`/`lora_te2_` key, `label_emb`/`add_embedding`, or a transformer_blocks index >= 1 (SD1/SD2
    transformers have one block). SD1/SD2: an attention at input block 1/2 (down level 0) or a block index
    SDXL lacks (input/output 9–11, down/up level 3). Else the spelling decides as kohya writes it: LDM names
    -> SDXL, diffusers names -> SD1/SD2. SD2 over SD1: a `lora_te_` layer index >= 12, or a linear proj_in.
    """
    keys = [key for key in modules if key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"))]
    if not keys:
        return None
    sdxl = any(_SDXL_ONLY.match(k) or any(int(i) >= 1 for i in _TRANSFORMER_INDEX.findall(k)) for k in keys)
    if sdxl:
        return "sdxl"
    if not any(_SD12_ONLY.match(k) for k in keys) and any(_LDM_SPELLED.match(k) for k in keys):
        return "sdxl"
    deep_te = any(int(m.group(1)) >= 12 for k in keys if (m := _TE_LAYER.match(k)))
    linear_proj = any(k.endswith(("_proj_in", "_proj_out")) and _is_linear(modules[k]) for k in keys)
    return "sd2" if deep_te or linear_proj else "sd1"


def _is_linear(module: NetworkModule) -> bool:
    """Whether a LoRA/full module's factors are 2-D (a linear layer); LoHa/LoKr store convs flattened, so False."""
    factor = module.tensors.get("lora_down.weight", module.tensors.get("lora_A.weight", module.tensors.get("diff")))
    return factor is not None and factor.dim() == 2


def arch_of(modules: Mapping[str, NetworkModule], metadata: Mapping[str, object]) -> str | None:
    """The family the metadata names, else the one the keys suggest (`infer_arch_from_keys`)."""
    return arch_from_metadata(metadata) or infer_arch_from_keys(modules)
