"""A GPU-memory estimate for a training config on the loaded model, before anything is allocated.

Exact parts: the loaded model (already resident), the LoRA weights (counted from the modules the config
creates on this model), their gradients and the optimizer's state (per optimizer family). Estimated part: the
activations kept for the backward pass, from the latent area and batch, calibrated on reported full-size figures
(SD1.5 at 512 px and SDXL at 1024 px both keep about 0.43 M values per latent pixel per image without gradient
checkpointing; checkpointing keeps about a third). Treat the total as ±30%: attention implementation, allocator
fragmentation and the WebUI's own buffers move it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..hosts.base import Host
    from .config import TrainConfig

ACTIVATION_VALUES_PER_LATENT_PIXEL = 430_000
"""Activations kept per latent pixel per image by a full-size SD UNet (SD1.5 and SDXL alike), no checkpointing."""
REFERENCE_UNET_PARAMETERS = 860_000_000  # SD1.5; smaller UNets (tests, distilled models) scale down linearly
CHECKPOINTING_FACTOR = 0.33
TEXT_ENCODER_ACTIVATION_SHARE = 0.1  # a trained text encoder adds about a tenth to the UNet's activations

# optimizer family -> bytes of state per trainable value (AdamW: two fp32 moments)
OPTIMIZER_STATE_BYTES: dict[str, float] = {
    "adamw": 8, "adamw8bit": 2, "pagedadamw8bit": 2, "lion": 4, "lion8bit": 1, "pagedlion8bit": 1,
    "sgdnesterov": 4, "sgdnesterov8bit": 1, "prodigy": 16, "dadaptadam": 12, "dadaptation": 12,
    "dadaptlion": 8, "dadaptsgd": 4, "dadaptadagrad": 8, "adafactor": 2,
}
DEFAULT_OPTIMIZER_STATE_BYTES = 8


@dataclass(frozen=True)
class VramEstimate:
    """Bytes by part; `total` includes the already-loaded model, `additional` is what training adds to it."""

    parts: dict[str, int]
    lora_parameters: int
    resident_part: str = "model (already loaded)"

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def additional(self) -> int:
        return self.total - self.parts.get(self.resident_part, 0)

    def describe(self) -> str:
        """One line per part and the totals, in GiB."""
        lines = [f"{name}: {_gib(value)}" for name, value in self.parts.items()]
        lines.append(f"training adds ≈ {_gib(self.additional)}; total ≈ {_gib(self.total)} (estimate, ±30%)")
        return "\n".join(lines)


def _gib(value: int) -> str:
    return f"{value / 1024**3:.2f} GiB"


def estimate_vram(config: TrainConfig, host: Host) -> VramEstimate:
    """Estimate the GPU memory `config` needs on `host` (nothing is allocated on the GPU)."""
    from ..networks.keys import build_target_index
    from .network_targets import plan_modules

    plans, _ = plan_modules(config.network, build_target_index(host))
    algo = config.network.algo
    lora_values = sum(_module_values(plan.target.shape, plan.dim, algo) for plan in plans)
    trains_te = any(plan.target.root != "unet" for plan in plans)
    run = config.run
    network_bytes = 2 if (run.full_fp16 or run.full_bf16) else 4
    half = run.mixed_precision in ("fp16", "bf16") or host.dtype in (torch.float16, torch.bfloat16)
    activation_bytes = 2 if half else 4
    width, height = config.data.resolution
    latent_pixels = (width // 8) * (height // 8)
    unet_parameters = sum(p.numel() for p in host.unet.parameters())
    scale = min(1.0, unet_parameters / REFERENCE_UNET_PARAMETERS)
    activations = ACTIVATION_VALUES_PER_LATENT_PIXEL * scale * latent_pixels * config.data.train_batch_size
    if run.gradient_checkpointing:
        activations *= CHECKPOINTING_FACTOR
    if trains_te and not run.cache_text_encoder_outputs:
        activations *= 1 + TEXT_ENCODER_ACTIVATION_SHARE
    state_bytes = OPTIMIZER_STATE_BYTES.get(config.optimizer.optimizer_type.lower().split(".")[-1],
                                            DEFAULT_OPTIMIZER_STATE_BYTES)
    parts = {
        "model (already loaded)": _module_bytes([host.unet, *host.text_encoders, host.vae]),
        "LoRA weights": lora_values * network_bytes,
        "gradients": lora_values * network_bytes,
        "optimizer state": int(lora_values * state_bytes),
        "activations": int(activations * activation_bytes),
    }
    return VramEstimate(parts=parts, lora_parameters=lora_values)


def _module_values(shape: torch.Size, dim: int, algo: str) -> int:
    """Trainable values of one module on a weight of `shape` (LoHa has two LoRA-sized pairs)."""
    out_features, in_features = shape[0], 1
    for size in shape[1:]:
        in_features *= size
    values = dim * (in_features + out_features)
    return 2 * values if algo == "loha" else values


def _module_bytes(modules: list[torch.nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total
