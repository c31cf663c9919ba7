"""The Host over Forge Neo's loaded model: a `ForgeDiffusionEngine` (`StableDiffusion`, `StableDiffusionXL`).

Neo keeps the model parts in `sd_model.forge_objects`: `unet` (a `UnetPatcher` whose `.model` is a `KModel` holding
`diffusion_model` and the noise `predictor`), `clip` (`cond_stage_model.clip_l` / `.clip_g`, each an `IntegratedCLIP`
around an HF `CLIPTextModel` at `.transformer`) and `vae` (`first_stage_model`). LoRAs are patches on clones of
those patchers, merged into the weights when Neo loads a patcher (`backend.memory_management.load_models_gpu`).

Everything goes through Neo's own code: prompts through the engine's `get_learned_conditioning` (its text processing:
clip skip as generation sets it, emphasis, SDXL size conditioning), images through `encode_first_stage`, the UNet
as `KModel.apply_model` calls it (computation dtype in, float out), generation through `modules.processing`.
Neo runs all of these under `torch.inference_mode()`; here they run without it (the undecorated functions), and
what Neo made in inference mode is copied before it is returned, so results can take part in autograd.
The WebUI's modules are imported lazily (only in `from_webui()` and `generate()`).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from ..arch import ARCHS, Arch
from ..errors import HostError, UnsupportedArchError
from .base import Conditioning, GenerationRequest, HostInfo, Layout, PredictionType, StepCallback, host_info
from .webui_processing import generate_txt2img, sized_prompts

if TYPE_CHECKING:
    from PIL import Image

NEO_VERSION = "neo"
"""`modules_forge.forge_version.version` on Forge Neo."""

ENGINE_ARCHS = {"StableDiffusion": "sd1", "StableDiffusionXL": "sdxl"}
"""Neo's engine classes (backend/diffusion_engine) LoRA Studio trains on, and their family."""

_PREDICTIONS: tuple[PredictionType, ...] = ("epsilon", "v_prediction")


def forge_version() -> str | None:
    """`modules_forge.forge_version.version` when the WebUI is a Forge (imported lazily), else None."""
    module = sys.modules.get("modules_forge.forge_version")
    if module is None:
        try:
            from modules_forge import forge_version as module  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    version = getattr(module, "version", None)
    return str(version) if version is not None else None


def engine_family(engine: Any) -> str:
    """The model family Forge recognised (its model-config class, e.g. SD15, SDXL, Flux), for messages."""
    config = getattr(engine, "model_config", None)
    return type(config).__name__ if config is not None else type(engine).__name__


def detect_arch(engine: Any, supported: dict[str, str] = ENGINE_ARCHS, host_name: str = "Forge Neo") -> Arch:
    """The family of a loaded Forge engine: SD1 / SDXL (eps or v), else UnsupportedArchError naming the family."""
    family = engine_family(engine)
    arch = supported.get(type(engine).__name__)
    if arch is None:
        names = " and ".join(sorted({ARCHS[a].title for a in supported.values()}))
        raise UnsupportedArchError(f"the loaded model is {family} ({type(engine).__name__}); LoRA Studio supports "
                                   f"{names} on {host_name}")
    if getattr(engine, "is_inpaint", False):
        raise UnsupportedArchError(f"the loaded model is an inpainting {family} model (more UNet input channels); "
                                   "LoRA Studio trains on plain text-to-image checkpoints")
    prediction = getattr(engine.forge_objects.unet.model.predictor, "prediction_type", None)
    if prediction not in _PREDICTIONS:
        raise UnsupportedArchError(f"the loaded {family} model predicts {prediction!r} (a flow model); LoRA Studio "
                                   "supports epsilon and v prediction")
    return ARCHS[arch]


def undecorated(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function under a `@torch.inference_mode()` (or other `functools.wraps`) decorator."""
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    return function


def owned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as float32, copied when Neo made it in inference mode (autograd refuses inference tensors)."""
    out = tensor.float()
    return out.clone() if out.is_inference() else out


_LOAD_LOCK = threading.Lock()


def loaded_engine(sd_models: ModuleType) -> Any:
    """The engine for the checkpoint chosen in the WebUI, loaded by Forge's `forge_model_reload` when it is not.

    Forge loads lazily, at the next generation, under the WebUI's queue lock. A load here takes that lock too
    (`modules.call_queue.queue_lock`), so UI events arriving together, or a generation, never load the checkpoint
    twice at once (each load holds a full copy of the weights); when the chosen checkpoint is loaded already, nothing
    waits."""
    data = sd_models.model_data
    if getattr(data, "forge_hash", None) == str(data.forge_loading_parameters) \
            and getattr(data.sd_model, "forge_objects", None) is not None:
        return data.sd_model
    lock = getattr(sys.modules.get("modules.call_queue"), "queue_lock", None) or _LOAD_LOCK
    with lock:
        sd_model, _ = sd_models.forge_model_reload()
    return sd_model


class ForgeNeoHost:
    """Forge Neo's loaded model as a Host. `opts` is the WebUI's `shared.opts` (optional outside it).

    Clip skip is the WebUI's setting, applied before each encoding as Neo's processing applies it.
    """

    kind = "forge-neo"
    handles_lora_tags = True
    """generate() reads `<lora:…>` tags itself (Neo's built-in Lora + our always-on script)."""
    host_name = "Forge Neo"

    def __init__(self, sd_model: Any, *, opts: Any | None = None) -> None:
        if sd_model is None or getattr(sd_model, "forge_objects", None) is None:
            raise HostError(f"no model is loaded in {self.host_name}; choose a checkpoint first")
        self._arch = self._detect(sd_model)
        self._model = sd_model
        self._opts = opts

    def _detect(self, sd_model: Any) -> Arch:
        return detect_arch(sd_model, ENGINE_ARCHS, self.host_name)

    @classmethod
    def from_webui(cls) -> ForgeNeoHost:
        """The model chosen in the WebUI, loaded as Neo loads it before a generation; call only when the user acts."""
        try:
            from modules import sd_models, shared  # type: ignore[import-not-found]
        except ImportError as error:
            raise HostError(f"the WebUI's `modules` package is not importable: {error}") from error
        try:
            sd_model = loaded_engine(sd_models)
        except ValueError as error:  # Neo: "Failed to find available model..."
            raise HostError(f"no checkpoint is chosen in {cls.host_name} ({error}); choose one first") from error
        return cls(sd_model, opts=shared.opts)

    # --- what the model is -------------------------------------------------------------------------------------

    @property
    def sd_model(self) -> Any:
        return self._model

    @property
    def forge_objects(self) -> Any:
        """The engine's current `ForgeObjects` (Neo replaces this object at every generation: never cache it)."""
        return self._model.forge_objects

    @property
    def arch(self) -> Arch:
        return self._arch

    @property
    def layout(self) -> Layout:
        return "ldm"

    @property
    def kmodel(self) -> Any:
        """The `KModel` (diffusion model + predictor) all of the UNet's patchers share."""
        return self.forge_objects.unet.model

    @property
    def device(self) -> torch.device:
        """Where Neo runs the UNet (its patcher's load device; the weights may be offloaded between generations)."""
        return torch.device(self.forge_objects.unet.load_device)

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's computation dtype (an fp8-stored UNet computes in this dtype, one layer at a time)."""
        dtype = getattr(self.kmodel, "computation_dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.unet.parameters()).dtype

    @property
    def prediction_type(self) -> PredictionType:
        prediction = self.kmodel.predictor.prediction_type
        if prediction not in _PREDICTIONS:
            raise UnsupportedArchError(f"unsupported prediction type {prediction!r} (expected epsilon or v)")
        return prediction

    @property
    def latent_scale(self) -> float:
        """The scale factor of the latent format Forge recognised for the model (`model_config.latent_format`)."""
        return float(self._model.model_config.latent_format.scale_factor)

    @property
    def unet(self) -> torch.nn.Module:
        return self.kmodel.diffusion_model

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        """The HF CLIP text models: CLIP-L (SD1), CLIP-L and bigG (SDXL), in kohya order."""
        encoders = self.forge_objects.clip.cond_stage_model
        names = ("clip_l", "clip_g") if self._arch.name == "sdxl" else ("clip_l",)
        return [getattr(encoders, name).transformer for name in names]

    @property
    def vae(self) -> torch.nn.Module:
        return self.forge_objects.vae.first_stage_model

    def alphas_cumprod(self) -> torch.Tensor:
        return self.kmodel.predictor.alphas_cumprod.detach().to(device="cpu", dtype=torch.float32).clone()

    @property
    def model_name(self) -> str:
        checkpoint = getattr(self._model, "sd_checkpoint_info", None)
        names = (getattr(checkpoint, attr, None) for attr in ("name_for_extra", "model_name", "name", "title"))
        return str(next((name for name in names if name), "unknown"))

    @property
    def clip_skip(self) -> None:
        """The WebUI's own Clip skip setting applies (set on the engine before each encoding, as Neo does)."""
        return None

    def info(self) -> HostInfo:
        return host_info(self, self.model_name)

    # --- encoding and denoising with Neo's own code ----------------------------------------------------------------

    def _set_clip_skip(self) -> None:
        """What Neo's processing does before it encodes prompts: the engine's clip skip from the setting."""
        clip_skip = getattr(self._opts, "CLIP_stop_at_last_layers", None)
        if clip_skip is not None:
            self._model.set_clip_skip(int(clip_skip))

    def encode_prompts(
        self, texts: Sequence[str], *, with_grad: bool = False, size: tuple[int, int] | None = None
    ) -> Conditioning:
        height, width = size or (self._arch.default_resolution, self._arch.default_resolution)
        batch = sized_prompts(texts, width=width, height=height)
        self._set_clip_skip()
        encode = undecorated(type(self._model).get_learned_conditioning)
        with torch.enable_grad() if with_grad else torch.no_grad():
            cond = encode(self._model, batch)
        if isinstance(cond, dict):
            return Conditioning(context=owned(cond["crossattn"]), extra={"y": owned(cond["vector"])})
        return Conditioning(context=owned(cond))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        encode = undecorated(type(self._model).encode_first_stage)
        with torch.no_grad():
            latents = encode(self._model, pixels.to(device=self.device, dtype=torch.float32))
        return owned(latents)

    def apply_unet(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """The UNet's raw output, called as `KModel.apply_model` calls it (inputs in the computation dtype, the
        timesteps as floats); the predictor's sigma scaling is left out: the input is already x_t."""
        dtype, device = self.dtype, self.device
        extra = {"y": cond.extra["y"].to(device, dtype)} if self._arch.name == "sdxl" else {}
        out = self.unet(noisy_latents.to(device, dtype), timesteps.to(device).float(),
                        context=cond.context.to(device, dtype), **extra)
        return out.float()

    # --- generation and training -----------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, *, on_step: StepCallback | None = None) -> Image.Image:
        """One txt2img image through Neo's own processing: its Lora and our block-weight script read the prompt's
        `<lora:…>` tags (`on_step` is not supported here: the script gates steps itself)."""
        if on_step is not None:
            raise HostError(f"{type(self).__name__}.generate does not take on_step; the block-weight script gates "
                            "steps")
        return generate_txt2img(self._model, request, self.host_name)

    def load_unpatched(self, patchers: list[Any]) -> None:
        """Load `patchers` (LoRA-free) wholly onto their device with Neo's memory manager; Neo restores its backups
        of the weights a LoRA was merged into (HostError when it left part of a model offloaded)."""
        from .forge_neo_training import load_fully

        load_fully(patchers)

    @staticmethod
    def carries_other_patches(patcher: Any, held: Any) -> bool:
        """Whether loading `patcher` (a patcher of the held model) would change the held weights: Neo renews
        `patches_uuid` whenever patches are added."""
        return patcher.patches_uuid != held.patches_uuid

    def training_mode(self) -> AbstractContextManager[None]:
        """Hold the model for a run (see `forge_neo_training.held_for_training`); restored exactly on exit."""
        from .forge_neo_training import held_for_training

        return held_for_training(self)

    def state_roots(self) -> list[torch.nn.Module]:
        """The module trees training freezes and restores: UNet (with its KModel), text encoders, VAE."""
        return [self.kmodel, self.forge_objects.clip.cond_stage_model, *self.text_encoders, self.vae]

