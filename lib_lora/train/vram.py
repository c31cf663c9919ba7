"""A GPU-memory estimate for a training config on the loaded model, before anything is allocated.

Exact parts: the loaded model (already resident), the LoRA weights (counted from the modules the config
creates on this model), their gradients and the optimizer's state (per optimizer family). Estimated parts: the
activations kept for the backward pass, from the latent area and batch, calibrated on reported full-size figures
(SD1.5 at 512 px and SDXL at 1024 px both keep about 0.43 M values per latent pixel per image without gradient
checkpointing; checkpointing keeps about a third), and the VAE's peak while it encodes images to latents (before
training, so not added to it). Treat the total as ±30%: attention implementation, allocator fragmentation and the
WebUI's own buffers move it.

`check_fits` is the preflight a run makes before it reads or caches anything: it refuses a run whose estimate
is more than the device has free (CUDA: free memory; CPU: available RAM), saying what to lower.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import TrainingError

if TYPE_CHECKING:
    from ..blocks.presets import PresetBook
    from ..hosts.base import Host
    from .config import TrainConfig

ACTIVATION_VALUES_PER_LATENT_PIXEL = 430_000
"""Activations kept per latent pixel per image by a full-size SD UNet (SD1.5 and SDXL alike), no checkpointing."""
REFERENCE_UNET_PARAMETERS = 860_000_000  # SD1.5; smaller UNets (tests, distilled models) scale down linearly
CHECKPOINTING_FACTOR = 0.33
TEXT_ENCODER_ACTIVATION_SHARE = 0.1  # a trained text encoder adds about a tenth to the UNet's activations
VAE_VALUES_PER_PIXEL = 650
"""Values the SD VAE encoder holds at its peak per image pixel, without gradients (measured 650-690 on the CPU in
fp32 at 256 and 512 px)."""
REFERENCE_VAE_PARAMETERS = 83_650_000  # the SD1/SD2/SDXL VAE; smaller ones scale down linearly

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
    encoding: int = 0
    """The VAE's peak while it encodes a batch of images to latents (before training; not part of `total`)."""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def additional(self) -> int:
        return self.total - self.parts.get(self.resident_part, 0)

    @property
    def peak(self) -> int:
        """The most memory the run adds to the loaded model at any time: encoding images, or training."""
        return max(self.additional, self.encoding)

    def describe(self) -> str:
        """One line per part and the totals, in GiB."""
        lines = [f"{name}: {_gib(value)}" for name, value in self.parts.items()]
        lines.append(f"training adds ≈ {_gib(self.additional)}; total ≈ {_gib(self.total)} (estimate, ±30%)")
        if self.encoding:
            lines.append(f"encoding images to latents (before training) adds ≈ {_gib(self.encoding)} at its peak")
        return "\n".join(lines)


def _gib(value: int) -> str:
    return f"{value / 1024**3:.2f} GiB"


def _size(value: int) -> str:
    """GiB from 1 GiB up, MiB below (a refusal on a small model should not read "0.00 GiB")."""
    return _gib(value) if value >= 1024**3 else f"{value / 1024**2:.1f} MiB"


def estimate_vram(config: TrainConfig, host: Host, *, presets: PresetBook | None = None) -> VramEstimate:
    """Estimate the GPU memory `config` needs on `host` (nothing is allocated on the GPU); `presets` are those a
    `train_blocks` preset name is looked up in (the built-in ones when None), as for the run itself."""
    from ..networks.keys import build_target_index
    from .network.targets import plan_modules

    plans, _ = plan_modules(config.network, build_target_index(host), presets=presets)
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
    vae_parameters = sum(p.numel() for p in host.vae.parameters())
    vae_scale = min(1.0, vae_parameters / REFERENCE_VAE_PARAMETERS)
    vae_bytes = next((p.element_size() for p in host.vae.parameters()), 4)
    images = config.data.vae_batch_size if config.data.cache_latents else config.data.train_batch_size
    encoding = int(VAE_VALUES_PER_PIXEL * vae_scale * width * height * images * vae_bytes)
    return VramEstimate(parts=parts, lora_parameters=lora_values, encoding=encoding)


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes a run can still allocate on `device`, what they are) or None where that cannot be told (MPS, ...).

    CUDA: free memory plus what torch's allocator holds unused; CPU: the RAM the system calls available.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + max(0, cached), f"free on {device}"
    if device.type == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available), "of RAM available"
        except ImportError:
            return _meminfo_available()
    return None


def _meminfo_available() -> tuple[int, str] | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "of RAM available"
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(config: TrainConfig, host: Host, *, presets: PresetBook | None = None,
               available: tuple[int, str] | None = None) -> VramEstimate:
    """The estimate of `config` on `host`; TrainingError when its peak is more than the device has free.

    `available` is (bytes, words) as `available_memory` gives them (tests pass their own); when it cannot be
    told, nothing is refused. The message gives the estimate, what is available and what to lower.
    """
    estimate = estimate_vram(config, host, presets=presets)
    if available is None:
        available = available_memory(torch.device(host.device))
    if available is None or estimate.peak <= available[0]:
        return estimate
    free, words = available
    raise TrainingError(
        f"this run needs about {_size(estimate.peak)} more memory (estimate, ±30%: {_largest_parts(estimate)}) "
        f"and only {_size(free)} {words}; {_advice(config, estimate, host)}"
    )


def _largest_parts(estimate: VramEstimate) -> str:
    """The parts that make the peak, largest first: "activations 30.12 GiB, optimizer state 0.10 GiB"."""
    if estimate.encoding > estimate.additional:
        return f"encoding images to latents {_size(estimate.encoding)} at its peak"
    parts = sorted(((value, name) for name, value in estimate.parts.items() if name != estimate.resident_part),
                   reverse=True)
    return ", ".join(f"{name} {_size(value)}" for value, name in parts[:3] if value)


def _advice(config: TrainConfig, estimate: VramEstimate, host: Host) -> str:
    """What to lower, for the part that makes the peak."""
    data, run = config.data, config.run
    resolution = f"resolution (now {data.width},{data.height})"
    if estimate.encoding > estimate.additional:
        batch = f"vae_batch_size (now {data.vae_batch_size})" if data.cache_latents \
            else f"train_batch_size (now {data.train_batch_size})"
        return f"lower {resolution} or {batch}"
    activations = estimate.parts.get("activations", 0)
    network = sum(value for name, value in estimate.parts.items() if name not in ("activations",
                                                                                  estimate.resident_part))
    if network > activations:
        conv_dim = config.network.args.conv_dim
        advice = f"lower network_dim (now {config.network.network_dim})"
        advice += f" or conv_dim (now {conv_dim})" if conv_dim else ""
        if torch.device(host.device).type == "cuda":
            advice += ", or use an 8-bit optimizer such as AdamW8bit"
        return advice
    steps = [f"lower {resolution} or train_batch_size (now {data.train_batch_size})"]
    if not run.gradient_checkpointing:
        steps.append("turn on gradient_checkpointing (it keeps about a third of the activations)")
    if run.mixed_precision == "no" and host.dtype == torch.float32 and torch.device(host.device).type == "cuda":
        steps.append("use mixed_precision = bf16 or fp16")
    return ", or ".join(steps)


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
