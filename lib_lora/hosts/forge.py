"""The Host over lllyasviel's Forge 2 (`modules_forge.forge_version.version` "2.0.1v1.10.1"): ForgeNeoHost's code,
with Forge 2's way of merging LoRAs and of loading models.

Forge 2 holds the model as Neo does (`sd_model.forge_objects`, the same engine classes, `KModel`, `IntegratedCLIP`,
text processing under `torch.inference_mode()`), so encoding, denoising, generation and the guards are shared.
What differs, read from Forge 2's `backend/patcher/{base,lora}.py` and `backend/memory_management.py` (main, 2025):
- LoRAs: a patcher carries `lora_patches` {(file, strengths, online): patches}; the model's one `lora_loader` merges
  them into the weights (`refresh`, keeping the original Parameters in `backup`) when a patcher is loaded, and
  `refresh(lora_patches={})` puts every original back. Loading a LoRA-free patcher does not unmerge by itself, so
  `load_unpatched` asks the loader first.
- Loading: `load_models_gpu` has no "load fully" switch; when the GPU is short it keeps part of the model in CPU
  memory ("CPU swap", `LoadedModel.model_accelerated`), which training cannot use: refused with the setting to change.
Forge 2 could not be run here: this host is tested against stand-ins written from that code only.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import HostError
from .forge_neo import ForgeNeoHost


class ForgeHost(ForgeNeoHost):
    """Forge 2's loaded model as a Host (SD1 and SDXL)."""

    kind = "forge"
    host_name = "Forge"

    def load_unpatched(self, patchers: list[Any]) -> None:
        """Unmerge every LoRA (`lora_loader.refresh(lora_patches={})`), then load `patchers` with Forge's memory
        manager; HostError when Forge keeps part of a model in CPU memory or a LoRA stays merged."""
        memory_management = sys.modules.get("backend.memory_management")
        if memory_management is None:
            raise HostError("Forge's `backend.memory_management` is not loaded; training needs the WebUI's backend")
        for patcher in patchers:
            patcher.lora_loader.refresh(lora_patches={}, offload_device=patcher.offload_device)
        memory_management.load_models_gpu(patchers)
        held = {id(patcher) for patcher in patchers}
        for loaded in memory_management.current_loaded_models:
            if id(loaded.model) in held and getattr(loaded, "model_accelerated", False):
                raise HostError("Forge keeps part of the model in CPU memory (not enough GPU memory for its weights "
                                "at the “GPU Weights” setting); raise “GPU Weights” at the top of the page (or free "
                                "GPU memory), then start the run again")
        for patcher in patchers:
            if patcher.lora_loader.backup or getattr(patcher.lora_loader, "online_backup", None):
                raise HostError("Forge left a LoRA merged into the weights; generate once without LoRAs, then start "
                                "the run again")

    @staticmethod
    def carries_other_patches(patcher: Any, held: Any) -> bool:
        """Whether loading `patcher` would merge LoRAs into the held model (Forge 2: it has `lora_patches`)."""
        return bool(getattr(patcher, "lora_patches", None))

