"""The Host protocol: what the trainer, the block-weight code and the UI need from "the model that is loaded"."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch

if TYPE_CHECKING:
    from PIL import Image

    from ..arch import Arch

PredictionType = Literal["epsilon", "v_prediction"]
StepCallback = Callable[[int], None]
"""Called with the 0-based sampling step before that step's denoiser call (after the prompts were encoded)."""
Layout = Literal["diffusers", "ldm"]


@dataclass
class Conditioning:
    """Text conditioning for one batch, as the host's own denoiser takes it.

    `context` is the cross-attention input [B, 77·k, C]. `extra` holds what else that host's UNet needs, keyed as
    the host's `apply_unet` expects: diffusers SDXL {"text_embeds": [B, P], "time_ids": [B, 6]}, LDM SDXL
    {"y": [B, adm]}; empty for SD1/SD2.
    """

    context: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.context.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """A copy moved to `device` (and floating tensors cast to `dtype` when given)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)

        return Conditioning(move(self.context), {k: move(v) for k, v in self.extra.items()})

    def select(self, index: slice | Sequence[int] | torch.Tensor) -> Conditioning:
        """The rows `index` of every tensor (for cached conditionings)."""
        return Conditioning(self.context[index], {k: v[index] for k, v in self.extra.items()})

    def detach(self) -> Conditioning:
        return Conditioning(self.context.detach(), {k: v.detach() for k, v in self.extra.items()})

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch; all items must have the same `extra` keys."""
        if not items:
            raise ValueError("Conditioning.cat needs at least one item")
        keys = items[0].extra.keys()
        return Conditioning(
            torch.cat([c.context for c in items]), {k: torch.cat([c.extra[k] for c in items]) for k in keys}
        )


@dataclass(frozen=True)
class GenerationRequest:
    """One sample image, as the Train tab and the demo ask for it."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"`steps` must be at least 1, got {self.steps}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 8 or value % 8:
                raise ValueError(f"`{name}` must be a positive multiple of 8, got {value}")


@dataclass(frozen=True)
class HostInfo:
    """What the UI shows about the loaded model and where it lives."""

    kind: str
    model_name: str
    arch: str
    layout: Layout
    device: str
    dtype: str
    prediction_type: PredictionType
    unet_parameters: int

    def fields(self) -> list[tuple[str, str]]:
        """(label, value) pairs in display order."""
        return [
            ("model", self.model_name),
            ("family", self.arch),
            ("host", f"{self.kind} ({self.layout} layout)"),
            ("device", self.device),
            ("dtype", self.dtype),
            ("prediction", self.prediction_type),
            ("UNet", f"{self.unet_parameters / 1e6:.2f} M parameters"),
        ]

    def as_text(self) -> str:
        return ", ".join(f"{label} {value}" for label, value in self.fields())

    def as_markdown(self) -> str:
        return " · ".join(f"**{label}:** `{value}`" for label, value in self.fields())


@runtime_checkable
class Host(Protocol):
    """The model that is loaded, whoever loaded it. Implementations: DiffusersHost, A1111Host, ForgeNeoHost."""

    kind: str
    handles_lora_tags: bool
    """Whether `generate` reads the prompt's `<lora:…>` tags itself (a WebUI: its Lora and our script do)."""

    @property
    def model_name(self) -> str:
        """The loaded checkpoint's name, as the host shows it."""
        ...
    @property
    def clip_skip(self) -> int | None:
        """The CLIP layer captions are encoded with (A1111's meaning: 1 = last); None where the WebUI's own setting
        applies, which LoRA Studio never changes. Hosts that return a number also let it be set."""
        ...

    @property
    def arch(self) -> Arch: ...
    @property
    def layout(self) -> Layout: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def prediction_type(self) -> PredictionType: ...
    @property
    def latent_scale(self) -> float: ...
    @property
    def unet(self) -> torch.nn.Module: ...
    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        """The text encoder modules (one for SD1/SD2, two for SDXL), in kohya order (te1, te2)."""
        ...
    @property
    def vae(self) -> torch.nn.Module: ...

    def alphas_cumprod(self) -> torch.Tensor:
        """The training noise schedule ā_t, float32 on the CPU, 1000 entries (the unmodified one)."""
        ...

    def info(self) -> HostInfo:
        """Describe the loaded model for the UI; never loads anything."""
        ...

    def encode_prompts(
        self, texts: Sequence[str], *, with_grad: bool = False, size: tuple[int, int] | None = None
    ) -> Conditioning:
        """Encode captions with the host's own text pipeline (clip skip, emphasis, SDXL size conditioning).

        `size` is (height, width) in pixels for SDXL's size conditioning; the arch's default when None.
        """
        ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, 4, H/8, W/8] for pixels [B, 3, H, W] in [-1, 1], with the host's own VAE code."""
        ...

    def apply_unet(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's raw output (ε or v, per `prediction_type`) for discrete timesteps in 0..999."""
        ...

    def generate(self, request: GenerationRequest, *, on_step: StepCallback | None = None) -> Image.Image:
        """One image through the host's own sampling pipeline; `on_step` where the host supports it (diffusers)."""
        ...

    def training_mode(self) -> AbstractContextManager[None]:
        """Freeze the base model for training; on exit (even on exceptions) restore all that it or the body changed."""
        ...


def host_info(host: Host, model_name: str) -> HostInfo:
    """The HostInfo of any Host: its kind, family, layout, device, dtype, prediction and UNet size."""
    return HostInfo(
        kind=host.kind,
        model_name=model_name,
        arch=host.arch.name,
        layout=host.layout,
        device=str(host.device),
        dtype=str(host.dtype).removeprefix("torch."),
        prediction_type=host.prediction_type,
        unet_parameters=sum(p.numel() for p in host.unet.parameters()),
    )
