"""DiffusersHost: the Host protocol over a diffusers SD1/SD2/SDXL pipeline (standalone app, tests, demo)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from ..arch import SD1, SD2, SDXL, Arch
from ..errors import ModelLoadError
from .base import Conditioning, GenerationRequest, HostInfo, Layout, PredictionType, StepCallback, host_info
from .recast import FP8
from .snapshot import freeze_for_training, preserved_state

if TYPE_CHECKING:
    from PIL import Image

TINY_SPECS = {"tiny": "sd1", "tiny-sdxl": "sdxl"}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class DiffusersHost:
    """A loaded diffusers pipeline seen through the Host protocol.

    `clip_skip` follows A1111's meaning (1 = the last CLIP layer, 2 = the one before), so captions encode the
    same way in both hosts.
    """

    kind = "diffusers"
    handles_lora_tags = False
    """generate() takes a clean prompt: the block-weight session merges the LoRAs itself."""

    def __init__(self, pipeline: Any, *, model_name: str = "pipeline", clip_skip: int = 1) -> None:
        if clip_skip < 1:
            raise ValueError(f"`clip_skip` must be at least 1, got {clip_skip}")
        self.pipeline = pipeline
        self.model_name = model_name
        self.clip_skip = clip_skip
        self._arch = _detect_arch(pipeline)

    # --- what the model is -------------------------------------------------------------------------------
    @property
    def arch(self) -> Arch:
        return self._arch

    @property
    def layout(self) -> Layout:
        return "diffusers"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the UNet computes in: its parameters', float8 storage (fp8_base) aside."""
        return next((p.dtype for p in self.unet.parameters() if p.dtype not in FP8), torch.float32)

    @property
    def prediction_type(self) -> PredictionType:
        value = self.pipeline.scheduler.config.get("prediction_type", "epsilon")
        return "v_prediction" if value == "v_prediction" else "epsilon"

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        encoders = [self.pipeline.text_encoder, getattr(self.pipeline, "text_encoder_2", None)]
        return [e for e in encoders if e is not None]

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipeline.vae

    def alphas_cumprod(self) -> torch.Tensor:
        return self.pipeline.scheduler.alphas_cumprod.detach().to("cpu", torch.float32).clone()

    def info(self) -> HostInfo:
        return host_info(self, self.model_name)

    # --- encoding and denoising ----------------------------------------------------------------------------
    def encode_prompts(
        self, texts: Sequence[str], *, with_grad: bool = False, size: tuple[int, int] | None = None
    ) -> Conditioning:
        texts = list(texts)
        skip = self.clip_skip - 1 or None  # diffusers counts the layers skipped, A1111 the layer used
        with torch.set_grad_enabled(with_grad):
            if self.arch is not SDXL:
                context, _ = self.pipeline.encode_prompt(texts, self.device, 1, False, clip_skip=skip)
                return Conditioning(context)
            context, _, pooled, _ = self.pipeline.encode_prompt(
                prompt=texts, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, clip_skip=skip,
            )
        height, width = size or (self.arch.default_resolution,) * 2
        # SDXL size conditioning: original size, crop top-left, target size (no crop when training on buckets).
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=context.dtype, device=self.device)
        return Conditioning(context, {"text_embeds": pooled, "time_ids": time_ids.repeat(len(texts), 1)})

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled latents in float32; the posterior is sampled, as the VAE is used in training."""
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        latents = posterior.sample()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.latent_scale).float()

    def apply_unet(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        added = dict(cond.extra) if cond.extra else None
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=cond.context, added_cond_kwargs=added).sample

    def generate(self, request: GenerationRequest, *, on_step: StepCallback | None = None) -> Image.Image:
        """One image; `on_step(i)` runs before denoising step i (0-based), after the prompts were encoded."""
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        extra: dict[str, Any] = {}
        if on_step is not None:
            # diffusers calls back after each step: step i's end is where step i+1's weights are set. The text
            # encoders already ran when the first callback could fire, so step 0 is set by wrapping the UNet call.
            def step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                if step + 1 < request.steps:
                    on_step(step + 1)
                return kwargs

            extra["callback_on_step_end"] = step_end
        with _before_first_unet_call(self.unet, on_step):
            result = self.pipeline(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                num_inference_steps=request.steps,
                guidance_scale=request.cfg_scale,
                width=request.width,
                height=request.height,
                generator=generator,
                clip_skip=self.clip_skip - 1 or None,
                **extra,
            )
        return result.images[0]

    @contextmanager
    def training_mode(self) -> Iterator[None]:
        """Base weights frozen, eval mode, built-in checkpointing off; everything restored on exit."""
        roots = [self.unet, *self.text_encoders, self.vae]
        with preserved_state(roots):
            freeze_for_training(roots)
            yield


@contextmanager
def _before_first_unet_call(unet: torch.nn.Module, on_step: StepCallback | None) -> Iterator[None]:
    """Call `on_step(0)` once, just before the UNet's first forward in this block; the hook is always removed."""
    if on_step is None:
        yield
        return
    fired = False

    def first_call(module: torch.nn.Module, args: Any) -> None:
        nonlocal fired
        if not fired:
            fired = True
            on_step(0)

    handle = unet.register_forward_pre_hook(first_call, prepend=True)  # before anyone else looks at the weights
    try:
        yield
    finally:
        handle.remove()


def _detect_arch(pipeline: Any) -> Arch:
    if getattr(pipeline, "text_encoder_2", None) is not None:
        return SDXL
    # SD2 uses OpenCLIP-H (1024 wide) where SD1 uses CLIP-L (768); tiny models keep SD1's single-encoder shape.
    hidden = pipeline.text_encoder.config.hidden_size
    return SD2 if hidden == 1024 else SD1


def load_diffusers_host(spec: str = "tiny", *, device: str | None = None, dtype: str | None = None) -> DiffusersHost:
    """A host for `spec`: "tiny", "tiny-sdxl", a diffusers folder, or a single-file .safetensors checkpoint.

    A single file needs a local diffusers-layout config folder beside it (`<name>/` or `<name>.config/`
    holding model_index.json): nothing is fetched from the hub.
    """
    pipeline, name = _load_pipeline(spec)
    if dtype is not None:
        if dtype not in _DTYPES:
            raise ModelLoadError(f"unknown --dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
        pipeline.to(dtype=_DTYPES[dtype])
    if device is not None:
        try:
            pipeline.to(torch.device(device))
        except (RuntimeError, AssertionError) as error:
            raise ModelLoadError(f"cannot move the model to device {device!r}: {error}") from error
    return DiffusersHost(pipeline, model_name=name)


def _load_pipeline(spec: str) -> tuple[Any, str]:
    if spec in TINY_SPECS:
        from ..tiny.diffusers_models import TINY_PIPELINES

        return TINY_PIPELINES[TINY_SPECS[spec]](), spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model {spec!r} not found: expected 'tiny', 'tiny-sdxl', a diffusers folder or a "
                             ".safetensors file")
    if path.is_dir():
        return _load_folder(path), path.name
    if path.suffix != ".safetensors":
        raise ModelLoadError(f"{path}: only .safetensors single-file checkpoints are loaded (no pickles)")
    return _load_single_file(path), path.stem


def _pipeline_class(model_index: Path):
    import diffusers

    try:
        class_name = json.loads(model_index.read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{model_index}: not a readable diffusers model_index.json ({error})") from error
    if class_name not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ModelLoadError(f"{model_index}: pipeline {class_name!r} is not an SD1/SD2/SDXL text-to-image pipeline")
    return getattr(diffusers, class_name)


def _load_folder(path: Path) -> Any:
    model_index = path / "model_index.json"
    if not model_index.is_file():
        raise ModelLoadError(f"{path}: not a diffusers folder (no model_index.json)")
    cls = _pipeline_class(model_index)
    # SD1/SD2 folders may name a safety checker we neither ship nor want; SDXL pipelines have none.
    no_checker = {"safety_checker": None, "requires_safety_checker": False}
    extra = no_checker if cls.__name__ == "StableDiffusionPipeline" else {}
    try:
        pipeline = cls.from_pretrained(path, local_files_only=True, **extra)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"{path}: could not load the diffusers pipeline: {error}") from error
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _load_single_file(path: Path) -> Any:
    candidates = (path.with_suffix(""), path.with_suffix(".config"))
    config = next((c for c in candidates if (c / "model_index.json").is_file()), None)
    if config is None:
        raise ModelLoadError(
            f"{path}: a single-file checkpoint needs a local diffusers config folder beside it "
            f"({path.with_suffix('')}/ or {path.with_suffix('.config')}/ with model_index.json)"
        )
    cls = _pipeline_class(config / "model_index.json")
    try:
        pipeline = cls.from_single_file(str(path), config=str(config), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"{path}: could not load the checkpoint with config {config}: {error}") from error
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
