"""The Host over AUTOMATIC1111 1.10's `shared.sd_model`: ldm `LatentDiffusion` (SD1/SD2), sgm `DiffusionEngine` (SDXL).

Everything goes through the host's own code paths (`get_learned_conditioning`, `encode_first_stage`,
`apply_model`, `processing.process_images`), so clip skip, emphasis and SDXL size conditioning match generation.
The WebUI's `modules.*` are imported lazily, only in `from_webui()` and `generate()`; nothing here imports diffusers.
Latents, conditionings and UNet outputs are returned float32 (inputs run in the host's dtype under its autocast),
so caches and losses do not depend on the host's precision.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from ..arch import ARCHS, Arch
from ..errors import HostError, UnsupportedArchError
from .a1111_training import medvram_paused, model_switches_refused
from .base import Conditioning, GenerationRequest, HostInfo, Layout, PredictionType, StepCallback, host_info
from .snapshot import freeze_for_training, preserved_state
from .webui_processing import generate_txt2img, sized_prompts

if TYPE_CHECKING:
    from PIL import Image

_PARAMETERIZATION: dict[str, PredictionType] = {"eps": "epsilon", "v": "v_prediction"}


def _detect_arch(sd_model: Any) -> Arch:
    if hasattr(sd_model, "forge_objects"):
        raise HostError(
            "this is a Forge model (it has `forge_objects`); A1111Host handles A1111 1.10's sd_model only"
        )
    if getattr(sd_model, "is_sd3", False) is True:
        raise UnsupportedArchError("the loaded model is SD3; LoRA Studio supports SD1, SD2 and SDXL")
    for flag, name in (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd1")):
        if getattr(sd_model, flag, False) is True:
            return ARCHS[name]
    raise UnsupportedArchError(
        f"the loaded model ({type(sd_model).__name__}) is not SD1, SD2 or SDXL; LoRA Studio supports only those"
    )


def _underlying_text_encoder(wrapper: Any) -> torch.nn.Module:
    """The text model inside an A1111 CLIP wrapper: `.wrapped.transformer` (HF CLIP) or `.wrapped.model` (open_clip)."""
    wrapped = getattr(wrapper, "wrapped", None)
    for attr in ("transformer", "model"):
        module = getattr(wrapped, attr, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise HostError(
        f"cannot find the text model inside {type(wrapper).__name__} (no .wrapped.transformer/.model)"
    )


def _builtin_networks() -> ModuleType | None:
    """The built-in Lora's `networks` module when the WebUI has loaded it (never imported here), else None."""
    module = sys.modules.get("networks")
    if (
        module is not None
        and callable(getattr(module, "load_networks", None))
        and hasattr(module, "loaded_networks")
    ):
        return module
    return None


def checkpoint_name(sd_model: Any) -> str:
    """The name the WebUI shows for the loaded checkpoint (`sd_checkpoint_info`), else "unknown"."""
    checkpoint = getattr(sd_model, "sd_checkpoint_info", None)
    names = (getattr(checkpoint, attr, None) for attr in ("name_for_extra", "model_name", "title"))
    return str(next((name for name in names if name), "unknown"))


class A1111Host:
    """A1111 1.10's loaded model as a Host. `devices` and `cmd_opts` are the WebUI's (optional outside it).

    Settings such as clip skip are not read here: the host's own `get_learned_conditioning` reads `shared.opts`.
    """

    kind = "a1111"
    handles_lora_tags = True
    """generate() reads `<lora:…>` tags itself (the built-in Lora + our always-on script)."""

    def __init__(
        self,
        sd_model: Any,
        *,
        devices: Any | None = None,
        cmd_opts: Any | None = None,
        opts: Any | None = None,
    ) -> None:
        if sd_model is None:
            raise HostError("no model is loaded in the WebUI; load a checkpoint first")
        self._arch = _detect_arch(sd_model)
        self._model = sd_model
        self._devices = devices
        self._cmd_opts = cmd_opts
        self._opts = opts

    @classmethod
    def from_webui(cls) -> A1111Host:
        """The model loaded in this WebUI (reading `shared.sd_model` may load it); call only when the user acts."""
        try:
            from modules import devices, shared  # type: ignore[import-not-found]
        except ImportError as error:
            raise HostError(f"the A1111 WebUI's `modules` package is not importable: {error}") from error
        return cls(shared.sd_model, devices=devices, cmd_opts=shared.cmd_opts, opts=shared.opts)

    # --- what the model is -------------------------------------------------------------------------------------

    @property
    def sd_model(self) -> Any:
        return self._model

    @property
    def arch(self) -> Arch:
        return self._arch

    @property
    def layout(self) -> Layout:
        return "ldm"

    @property
    def device(self) -> torch.device:
        device = getattr(self._devices, "device", None)
        return torch.device(device) if device is not None else next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        for attr in ("dtype_unet", "dtype"):
            dtype = getattr(self._devices, attr, None)
            if isinstance(dtype, torch.dtype):
                return dtype
        return next(self.unet.parameters()).dtype

    @property
    def prediction_type(self) -> PredictionType:
        parameterization = getattr(self._model, "parameterization", "eps")
        try:
            return _PARAMETERIZATION[parameterization]
        except KeyError:
            raise UnsupportedArchError(
                f"unsupported parameterization {parameterization!r} (expected eps or v)"
            ) from None

    @property
    def latent_scale(self) -> float:
        return float(self._model.scale_factor)

    @property
    def unet(self) -> torch.nn.Module:
        return self._model.model.diffusion_model

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [_underlying_text_encoder(wrapper) for wrapper in self._text_embedders()]

    @property
    def vae(self) -> torch.nn.Module:
        return self._model.first_stage_model

    def _text_embedders(self) -> list[Any]:
        """SD1/SD2: [cond_stage_model]; SDXL: the conditioner's text embedders (CLIP-L, bigG), in order."""
        if self._arch.name != "sdxl":
            return [self._model.cond_stage_model]
        return [e for e in self._model.conditioner.embedders if getattr(e, "wrapped", None) is not None]

    def alphas_cumprod(self) -> torch.Tensor:
        schedule = getattr(self._model, "alphas_cumprod_original", None)
        if schedule is None:
            schedule = self._model.alphas_cumprod
        return schedule.detach().to(device="cpu", dtype=torch.float32).clone()

    @property
    def model_name(self) -> str:
        return checkpoint_name(self._model)

    @property
    def clip_skip(self) -> None:
        """The WebUI's own Clip skip setting applies (its `get_learned_conditioning` reads it)."""
        return None

    def info(self) -> HostInfo:
        return host_info(self, self.model_name)

    # --- encoding and denoising with the host's own code -----------------------------------------------------------

    def _autocast(self) -> AbstractContextManager[Any]:
        autocast = getattr(self._devices, "autocast", None)
        return autocast() if callable(autocast) else nullcontext()

    def _prompt_batch(self, texts: Sequence[str], size: tuple[int, int] | None) -> list[str]:
        height, width = size or (self._arch.default_resolution, self._arch.default_resolution)
        return sized_prompts(texts, width=width, height=height)

    @contextmanager
    def _text_grad(self, with_grad: bool) -> Iterator[None]:
        """Grad on or off for the text path; with grad, sgm embedders are marked `is_trainable` (else: no_grad)."""
        if not with_grad:
            with torch.no_grad():
                yield
            return
        embedders = self._text_embedders() if self._arch.name == "sdxl" else []
        saved = [(e, getattr(e, "is_trainable", False)) for e in embedders]
        try:
            for embedder, _ in saved:
                embedder.is_trainable = True
            with torch.enable_grad():
                yield
        finally:
            for embedder, flag in saved:
                embedder.is_trainable = flag

    def encode_prompts(
        self, texts: Sequence[str], *, with_grad: bool = False, size: tuple[int, int] | None = None
    ) -> Conditioning:
        batch = self._prompt_batch(texts, size)
        with self._text_grad(with_grad), self._autocast():
            cond = self._model.get_learned_conditioning(batch)
        if isinstance(cond, dict):
            return Conditioning(context=cond["crossattn"].float(), extra={"y": cond["vector"].float()})
        return Conditioning(context=cond.float())

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae_dtype = getattr(self._devices, "dtype_vae", None)
        if not isinstance(vae_dtype, torch.dtype):
            vae_dtype = next(self.vae.parameters()).dtype
        pixels = pixels.to(device=self.device, dtype=vae_dtype)
        with torch.no_grad():
            latents = self._model.get_first_stage_encoding(self._model.encode_first_stage(pixels))
        return latents.float()

    def apply_unet(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        cond = cond.to(self.device)
        if self._arch.name == "sdxl":
            model_cond: Any = {"crossattn": cond.context, "vector": cond.extra["y"]}
        else:
            model_cond = cond.context
        with self._autocast():
            out = self._model.apply_model(
                noisy_latents.to(self.device), timesteps.to(self.device), model_cond
            )
        return out.float()

    # --- generation and training -----------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, *, on_step: StepCallback | None = None) -> Image.Image:
        """One txt2img image through the WebUI's own processing: its Lora and our block-weight script read the
        prompt's `<lora:…>` tags (`on_step` is not supported here: the script gates steps itself)."""
        if on_step is not None:
            raise HostError("A1111Host.generate does not take on_step; the block-weight script gates steps")
        return generate_txt2img(self._model, request, "the A1111 WebUI")

    def _state_roots(self) -> list[torch.nn.Module]:
        """The whole sd_model (its own flags too), and the parts by name in case one is not registered under it."""
        model = self._model
        roots = [model] if isinstance(model, torch.nn.Module) else []
        roots += [model.model, model.cond_stage_model, model.first_stage_model]
        return roots + [self.unet, *self.text_encoders, self.vae]

    @contextmanager
    def training_mode(self) -> Iterator[None]:
        """Clear the built-in Lora's loaded networks and freeze UNet, text encoders, VAE; restore every flag on exit.

        With --medvram / --medvram-sdxl the model stays on the device for the run, and switching the checkpoint, VAE
        or SD-UNet in the settings is refused until exit (`a1111_training`).
        """
        if getattr(self._cmd_opts, "lowvram", False):
            raise HostError(
                "training is not possible with --lowvram (model parts move between CPU and GPU per block); "
                "restart the WebUI with --medvram, or without either, to train"
            )
        roots = self._state_roots()
        with preserved_state(roots), medvram_paused(self._model, self.device), \
                model_switches_refused(self._opts, "training"):
            networks = _builtin_networks()
            if networks is not None:
                networks.load_networks([])
            freeze_for_training(roots)
            yield

