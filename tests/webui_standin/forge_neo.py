"""Stand-ins for what Forge Neo (neo-2.26) loads as `shared.sd_model`: `StableDiffusion` / `StableDiffusionXL`.

Written from Neo's backend/diffusion_engine/{base,sd15,sdxl}.py, backend/patcher/{unet,clip,vae}.py,
backend/modules/k_model.py and text_processing/classic_engine.py; tiny real modules inside:
- `forge_objects` / `forge_objects_original` / `forge_objects_after_applying_lora` (`ForgeObjects`: unet, clip, vae,
  clipvision) and `current_lora_hash`, as Neo's engine holds them.
- `unet` is a patcher (forge_memory.ModelPatcher) on a `KModel`: `diffusion_model` (the tiny ldm UNet, with
  `storage_dtype` / `computation_dtype`; its transformer blocks add their residuals in place, as Neo's do) and
  `predictor` (`alphas_cumprod` buffer, `prediction_type`).
- `clip.cond_stage_model` is a ModuleDict {clip_l[, clip_g]} of `IntegratedCLIP`s (an HF `CLIPTextModel` at
  `.transformer`; clip_g gets a `text_projection` Linear, as Neo adds one), with a patcher.
- `vae.first_stage_model` is the tiny ldm VAE with `latent_format` (scale factor) and `process_in`; `vae.encode`
  takes [B, H, W, 3] pixels in [0, 1], loads the VAE's patcher and samples the posterior, as Neo's does.
- Text processing as Neo's ClassicTextProcessingEngine: SD1 takes hidden_states[-max(clip_skip, 1)] and the final
  layer norm; SDXL CLIP-L / bigG the penultimate layer without it (minimal clip skip 2), bigG's pooled output
  through text_projection; SDXL's vector = pooled ++ 6 size values as 8-wide sinusoidal embeddings (80 wide).
- `get_learned_conditioning` / `encode_first_stage` are `@torch.inference_mode()` and load the CLIP / VAE patcher,
  as Neo's. The whole model is built and loaded in inference mode, as Neo's `forge_model_reload` does, so its
  weights are inference tensors; the UNet is frozen (`KModel` does it), the other parts are not.
- `apply_loras(engine, [(patches, strength)])` is what the built-in Lora's `load_networks` does (patched clones
  of the original patchers, the hash); `prepare_generation(engine)` what processing does before sampling.
Left out: emphasis, textual inversion, prompts over 75 tokens, sdxl_zero_neg, the refiner, samplers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lib_lora.tiny.clip import build_tiny_text_encoder, build_tiny_tokenizer
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet, build_tiny_ldm_vae, sd_alphas_cumprod

from .forge_memory import ModelPatcher

CPU = torch.device("cpu")


def memory_management() -> Any:
    """The installed `backend.memory_management` (forge_memory for Neo, forge2 for Forge 2)."""
    return sys.modules["backend.memory_management"]


class LatentFormat:
    def __init__(self, scale_factor: float) -> None:
        self.scale_factor = scale_factor

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.scale_factor


class SD15:
    """huggingface_guess's model config class for SD1.5 (the host names the family by this class)."""

    latent_format = LatentFormat(0.18215)


class SDXL:
    latent_format = LatentFormat(0.13025)


class Flux:
    latent_format = LatentFormat(0.3611)


class Predictor(nn.Module):
    """k_prediction.Prediction: the training schedule as a buffer, and the prediction type."""

    def __init__(self, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())


class KModel(nn.Module):
    def __init__(self, diffusion_model: nn.Module, storage_dtype: Any = torch.float32) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model
        self.predictor = Predictor()
        self.storage_dtype = diffusion_model.storage_dtype = storage_dtype
        self.computation_dtype = diffusion_model.computation_dtype = torch.float32
        self.diffusion_model.eval()
        self.diffusion_model.requires_grad_(False)


class IntegratedCLIP(nn.Module):
    def __init__(self, transformer: nn.Module, text_projection: bool = False) -> None:
        super().__init__()
        self.transformer = transformer
        self.logit_scale = nn.Parameter(torch.tensor(4.6055))
        if text_projection:
            width = transformer.config.hidden_size
            transformer.text_projection = nn.Linear(width, width, bias=False)


class CLIP:
    def __init__(self, encoders: dict[str, nn.Module], tokenizers: dict[str, Any]) -> None:
        self.cond_stage_model = nn.ModuleDict(encoders)
        self.tokenizer = tokenizers
        self.patcher = ModelPatcher(self.cond_stage_model, CPU, CPU)

    def clone(self) -> CLIP:
        n = CLIP.__new__(CLIP)
        n.__dict__.update(self.__dict__)
        n.patcher = self.patcher.clone()
        return n


class VAE:
    def __init__(self, model: nn.Module) -> None:
        self.first_stage_model = model
        self.patcher = ModelPatcher(model, CPU, CPU)

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        memory_management().load_models_gpu([self.patcher])
        pixels = pixel_samples.movedim(-1, 1) * 2.0 - 1.0
        return self.first_stage_model.encode(pixels).sample().float()


@dataclass
class ForgeObjects:
    unet: Any
    clip: Any
    vae: Any
    clipvision: Any = None

    def shallow_copy(self) -> ForgeObjects:
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


@dataclass
class CheckpointInfo:
    filename: str
    name: str
    name_for_extra: str


def _encode(encoder: IntegratedCLIP, tokenizer: Any, texts: Sequence[str], layer: int, final_norm: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tokenizer(list(texts), padding="max_length", max_length=77, truncation=True,
                       return_tensors="pt").input_ids
    model = encoder.transformer
    outputs = model(tokens, output_hidden_states=True)
    z = outputs.hidden_states[layer]
    if final_norm:
        z = model.text_model.final_layer_norm(z)
    pooled = outputs.pooler_output
    if hasattr(model, "text_projection"):
        pooled = model.text_projection(pooled)
    return z, pooled


def _size_embedding(values: Sequence[float], dim: int = 8) -> torch.Tensor:
    from ldm.modules.diffusionmodules.util import timestep_embedding

    return timestep_embedding(torch.tensor([float(v) for v in values]), dim).reshape(1, -1)


class _Engine:
    """What `ForgeDiffusionEngine` holds; subclasses named as Neo's engine classes."""

    model_config: Any
    is_sd1 = is_sdxl = is_inpaint = False

    def __init__(self, unet: nn.Module, clip: CLIP, vae_model: nn.Module, opts: Any, name: str) -> None:
        vae_model.latent_format = self.model_config.latent_format
        self.forge_objects = ForgeObjects(ModelPatcher(KModel(unet), CPU, CPU), clip, VAE(vae_model))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.current_lora_hash = str([])
        self.opts = opts
        self.clip_skip = 1
        self.sd_checkpoint_info = CheckpointInfo(f"/webui/models/Stable-diffusion/{name}.safetensors",
                                                 f"{name}.safetensors", name)

    def set_clip_skip(self, clip_skip: int) -> None:
        self.clip_skip = clip_skip

    @torch.inference_mode()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        sample = self.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
        return self.forge_objects.vae.first_stage_model.latent_format.process_in(sample).to(x)


class StableDiffusion(_Engine):
    model_config = SD15()
    is_sd1 = True

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: Sequence[str]) -> torch.Tensor:
        clip = self.forge_objects.clip
        memory_management().load_models_gpu([clip.patcher])
        z, _ = _encode(clip.cond_stage_model.clip_l, clip.tokenizer["clip_l"], prompt, -max(self.clip_skip, 1), True)
        return z


class StableDiffusionXL(_Engine):
    model_config = SDXL()
    is_sdxl = True

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: Sequence[str]) -> dict[str, torch.Tensor]:
        clip = self.forge_objects.clip
        memory_management().load_models_gpu([clip.patcher])
        layer = -max(self.clip_skip, 2)
        cond_l, _ = _encode(clip.cond_stage_model.clip_l, clip.tokenizer["clip_l"], prompt, layer, False)
        cond_g, pooled = _encode(clip.cond_stage_model.clip_g, clip.tokenizer["clip_g"], prompt, layer, False)
        width = getattr(prompt, "width", 1024) or 1024
        height = getattr(prompt, "height", 1024) or 1024
        sizes = [height, width, self.opts.sdxl_crop_top, self.opts.sdxl_crop_left, height, width]
        flat = _size_embedding(sizes).repeat(pooled.shape[0], 1).to(pooled)
        return {"crossattn": torch.cat([cond_l, cond_g], dim=2), "vector": torch.cat([pooled, flat], dim=1)}


def _as_inference_tensors(*modules: nn.Module) -> None:
    """Re-make every parameter and buffer in inference mode (Neo builds and loads its models inside it)."""
    with torch.inference_mode():
        for root in modules:
            for module in root.modules():
                for name, param in list(module._parameters.items()):
                    if param is not None:
                        module._parameters[name] = nn.Parameter(param.detach().clone(),
                                                                requires_grad=param.requires_grad)
                for name, buffer in list(module._buffers.items()):
                    if buffer is not None:
                        module._buffers[name] = buffer.clone()


def _neo_transformer_block_class() -> type[nn.Module]:
    from ldm.modules.attention import BasicTransformerBlock as LdmBlock

    class BasicTransformerBlock(LdmBlock):
        """Neo's `BasicTransformerBlock._forward` (backend/nn/unet.py): the residuals are added in place."""

        def _forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
            n = self.norm1(x)
            n = self.attn1(n, context=context if getattr(self, "disable_self_attn", False) else None)
            x += n
            n = self.attn2(self.norm2(x), context=context)
            x += n
            x_skip = x
            x = self.ff(self.norm3(x))
            x += x_skip
            return x

    return BasicTransformerBlock


def _with_neo_blocks(unet: nn.Module) -> nn.Module:
    cls = _neo_transformer_block_class()
    for module in unet.modules():
        if type(module).__name__ == "BasicTransformerBlock":
            module.__class__ = cls
    return unet


def build_engine(arch: str, opts: Any, *, seed: int = 0, inference: bool = True) -> _Engine:
    """A fresh stand-in engine ("sd1", "sdxl"); its weights are inference tensors unless `inference` is False."""
    unet = _with_neo_blocks(build_tiny_ldm_unet(arch, seed))
    vae = build_tiny_ldm_vae(seed)
    clip_l = IntegratedCLIP(build_tiny_text_encoder(seed))
    if arch == "sd1":
        clip = CLIP({"clip_l": clip_l}, {"clip_l": build_tiny_tokenizer()})
        engine: _Engine = StableDiffusion(unet, clip, vae, opts, "tiny-sd1")
    else:
        torch.manual_seed(seed + 1)
        clip_g = IntegratedCLIP(build_tiny_text_encoder(seed + 1), text_projection=True)
        clip = CLIP({"clip_l": clip_l, "clip_g": clip_g},
                    {"clip_l": build_tiny_tokenizer(), "clip_g": build_tiny_tokenizer(pad_token="!")})
        engine = StableDiffusionXL(unet, clip, vae, opts, "tiny-sdxl")
    for module in (unet, clip.cond_stage_model, vae):
        module.eval()
    if inference:
        _as_inference_tensors(engine.forge_objects.unet.model, clip.cond_stage_model, vae)
    return engine


def apply_loras(engine: _Engine, loras: Sequence[tuple[dict[str, torch.Tensor], float]]) -> None:
    """The built-in Lora's `load_networks`: patched clones of the original patchers, skipped when the hash holds.

    Each LoRA is {param key under the UNet patcher's model ("diffusion_model.…") or the CLIP's ("clip_l.…"):
    delta}; both patchers get the keys that are theirs."""
    wanted = str([[id(patches), strength] for patches, strength in loras])
    if engine.current_lora_hash == wanted:
        return
    engine.current_lora_hash = wanted
    unet = engine.forge_objects_original.unet
    clip = engine.forge_objects_original.clip
    for patches, strength in loras:
        unet = unet.clone()
        unet.add_patches(patches, strength)
        clip = clip.clone()
        clip.patcher.add_patches(patches, strength)
    engine.forge_objects.unet, engine.forge_objects.clip = unet, clip
    engine.forge_objects_after_applying_lora = engine.forge_objects.shallow_copy()


def random_patches(host: Any, *, seed: int = 5, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Deltas for every attention projection of the UNet and every q/v projection of the text encoders, keyed as
    Neo's patchers key them ("diffusion_model.…" under the KModel, "clip_l.transformer.…" under the CLIP)."""
    generator = torch.Generator().manual_seed(seed)
    patches: dict[str, torch.Tensor] = {}
    for name, module in host.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_v")):
            shape = module.weight.shape
            patches[f"diffusion_model.{name}.weight"] = torch.randn(shape, generator=generator) * scale
    encoders = host.forge_objects.clip.cond_stage_model
    for key, encoder in encoders.items():
        for name, module in encoder.transformer.named_modules():
            if name.endswith(("self_attn.q_proj", "self_attn.v_proj")):
                shape = module.weight.shape
                patches[f"{key}.transformer.{name}.weight"] = torch.randn(shape, generator=generator) * scale
    return patches


def prepare_generation(engine: _Engine) -> None:
    """What processing does before sampling: the objects after LoRAs, UNet and CLIP loaded (LoRAs merged)."""
    engine.forge_objects = engine.forge_objects_after_applying_lora.shallow_copy()
    memory_management().load_models_gpu([engine.forge_objects.unet, engine.forge_objects.clip.patcher])


def to_fp8(unet: nn.Module, dtype: torch.dtype = torch.float8_e4m3fn) -> int:
    """Store the UNet's Linear / Conv2d weights in fp8 with Neo's manual cast (each layer casts its weight to the
    input's dtype when it runs, `ForgeOperations` with `parameters_manual_cast`); returns how many layers."""
    count = 0
    with torch.inference_mode():
        for module in unet.modules():
            cls = {nn.Linear: ManualCastLinear, nn.Conv2d: ManualCastConv2d}.get(type(module))
            if cls is None:
                continue
            module.__class__ = cls
            module.parameters_manual_cast = True
            module.weight_function, module.bias_function = [], []
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
            count += 1
    unet.storage_dtype = dtype
    return count


class ManualCastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.weight.to(x.dtype), bias)


class ManualCastConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)
