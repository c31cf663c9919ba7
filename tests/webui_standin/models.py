"""Stand-ins for A1111 1.10.1's `shared.sd_model`: same attribute names and call contracts, tiny real modules inside.

SD1 (`LatentDiffusionStandIn`, ldm `LatentDiffusion` after A1111's hijack):
- `.model` is a `DiffusionWrapper`-like module; `.model.diffusion_model` is a real ldm `UNetModel`.
- `.cond_stage_model` is a `FrozenCLIPEmbedderWithCustomWords`-like wrapper (`.wrapped.transformer` an HF
  `CLIPTextModel`, `.wrapped.tokenizer`) honouring `opts.CLIP_stop_at_last_layers` as A1111 does.
- `.first_stage_model` is an ldm-layout AutoencoderKL.

SDXL (`DiffusionEngineStandIn`, sgm `DiffusionEngine` after `extend_sdxl`):
- `.conditioner.embedders` = [CLIP-L wrapper, bigG wrapper, 3 size embedders].
- `.cond_stage_model` is the conditioner, as in A1111.
- The conditioner runs embedders whose `is_trainable` is False under `torch.no_grad()`, as sgm's
  `GeneralConditioner` does.
- Real A1111 has an open_clip bigG at `.wrapped.model`. Here `.wrapped.model` is an HF
  `CLIPTextModelWithProjection`: the penultimate hidden state for cross-attention, the projected EOS vector as pooled.
- The size embedders are `ConcatTimestepEmbedderND`-like with outdim 8, so vector = 32 + 3 × 2 × 8 = 80.
- `encode_first_stage` samples and scales, as sgm's does; `get_first_stage_encoding` is the identity, as A1111
  patches it.

Left out:
- prompts longer than 75 tokens: truncated here, chunked by A1111;
- emphasis parsing and textual-inversion embeddings;
- `sdxl_clip_l_skip`;
- the refiner's aesthetic score;
- zeroed empty negative prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn

from lib_lora.tiny.clip import build_tiny_text_encoder, build_tiny_tokenizer
from lib_lora.tiny.ldm_models import build_tiny_ldm_unet, build_tiny_ldm_vae, sd_alphas_cumprod


@dataclass
class CheckpointInfoStandIn:
    """`sd_models.CheckpointInfo`: the fields the adapter reads."""

    filename: str
    title: str
    name_for_extra: str
    model_name: str
    shorthash: str


class FrozenCLIPEmbedderStandIn(nn.Module):
    """ldm `FrozenCLIPEmbedder` / sgm `FrozenCLIPEmbedder(2)`: holds the text model and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, attr: str = "transformer") -> None:
        super().__init__()
        setattr(self, attr, model)
        self.text_model_attr = attr
        self.tokenizer = tokenizer

    @property
    def text_model(self) -> nn.Module:
        return getattr(self, self.text_model_attr)


class CLIPWithCustomWordsStandIn(nn.Module):
    """A1111's `FrozenCLIPEmbedderWithCustomWords` family: texts in, [B, 77, C] out (SDXL bigG: with pooled).

    `mode`: "sd1" (last layer, or hidden_states[-clip_skip] + final_layer_norm), "sdxl_l" (penultimate layer),
    "sdxl_g" (penultimate layer and the projected EOS vector).
    """

    def __init__(self, wrapped: FrozenCLIPEmbedderStandIn, opts: SimpleNamespace, mode: str) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.opts = opts
        self.mode = mode
        self.is_trainable = False
        self.input_key = "txt"
        self.ucg_rate = 0.0
        self.legacy_ucg_val = None

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.wrapped.tokenizer(
            list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        return tokens.input_ids

    def forward(self, texts: Sequence[str]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        model = self.wrapped.text_model
        tokens = self.tokenize(texts).to(next(model.parameters()).device)
        outputs = model(input_ids=tokens, output_hidden_states=True)
        if self.mode == "sd1":
            skip = int(self.opts.CLIP_stop_at_last_layers)
            if skip > 1:
                return model.text_model.final_layer_norm(outputs.hidden_states[-skip])
            return outputs.last_hidden_state
        z = outputs.hidden_states[-2]
        if self.mode == "sdxl_g":
            return z, outputs.text_embeds
        return z


class ConcatTimestepEmbedderNDStandIn(nn.Module):
    """sgm `ConcatTimestepEmbedderND`: [B, d] numbers -> [B, d·outdim] sinusoidal embeddings (no parameters)."""

    def __init__(self, input_key: str, outdim: int = 8) -> None:
        super().__init__()
        self.input_key = input_key
        self.outdim = outdim
        self.is_trainable = False
        self.ucg_rate = 0.0
        self.legacy_ucg_val = None

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        from ldm.modules.diffusionmodules.util import timestep_embedding

        batch, dims = values.shape
        emb = timestep_embedding(values.reshape(-1), self.outdim)
        return emb.reshape(batch, dims * self.outdim)


class GeneralConditionerStandIn(nn.Module):
    """sgm `GeneralConditioner`: runs each embedder (non-trainable ones under no_grad) and concatenates by rank."""

    OUTPUT_DIM2KEYS: ClassVar[dict[int, str]] = {2: "vector", 3: "crossattn", 4: "concat"}
    KEY2CATDIM: ClassVar[dict[str, int]] = {"vector": 1, "crossattn": 2, "concat": 1}

    def __init__(self, embedders: Sequence[nn.Module]) -> None:
        super().__init__()
        self.embedders = nn.ModuleList(embedders)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        output: dict[str, torch.Tensor] = {}
        for embedder in self.embedders:
            with nullcontext() if embedder.is_trainable else torch.no_grad():
                emb_out = embedder(batch[embedder.input_key])
            for emb in [emb_out] if isinstance(emb_out, torch.Tensor) else emb_out:
                key = self.OUTPUT_DIM2KEYS[emb.dim()]
                output[key] = torch.cat((output[key], emb), self.KEY2CATDIM[key]) if key in output else emb
        return output


class DiffusionWrapperStandIn(nn.Module):
    """ldm `DiffusionWrapper` (conditioning_key "crossattn"): `c_crossattn` list -> UNet context."""

    def __init__(self, diffusion_model: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = "crossattn"

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, c_crossattn: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class OpenAIWrapperStandIn(nn.Module):
    """sgm `OpenAIWrapper`: a {"crossattn", "vector"} dict -> UNet context and y."""

    def __init__(self, diffusion_model: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"))


class _SdModelStandIn(nn.Module):
    """What both families share: flags, schedule (alphas_cumprod buffer + alphas_cumprod_original), checkpoint info."""

    def __init__(
        self, model: nn.Module, first_stage_model: nn.Module, opts: SimpleNamespace, name: str
    ) -> None:
        super().__init__()
        self.model = model
        self.first_stage_model = first_stage_model
        self.opts = opts
        schedule = sd_alphas_cumprod()
        self.register_buffer("alphas_cumprod", schedule.clone())
        self.alphas_cumprod_original = (
            schedule  # A1111: a plain attribute, kept fp32 when the model is halved
        )
        self.parameterization = "eps"
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_sd3 = self.is_sdxl_inpaint = False
        self.latent_channels = 4
        self.lowvram = False
        self.sd_model_hash = "0123abcd"
        self.sd_checkpoint_info = CheckpointInfoStandIn(
            filename=f"/webui/models/Stable-diffusion/{name}.safetensors",
            title=f"{name}.safetensors [{self.sd_model_hash}]",
            name_for_extra=name,
            model_name=name,
            shorthash=self.sd_model_hash,
        )


class LatentDiffusionStandIn(_SdModelStandIn):
    """SD1 `LatentDiffusion` as A1111 1.10.1 holds it."""

    def __init__(self, opts: SimpleNamespace, seed: int = 0) -> None:
        wrapped = FrozenCLIPEmbedderStandIn(build_tiny_text_encoder(seed), build_tiny_tokenizer())
        super().__init__(
            DiffusionWrapperStandIn(build_tiny_ldm_unet("sd1", seed)),
            build_tiny_ldm_vae(seed),
            opts,
            "tiny-sd1",
        )
        self.cond_stage_model = CLIPWithCustomWordsStandIn(wrapped, opts, "sd1")
        self.scale_factor = 0.18215
        self.is_sd1 = True

    def get_learned_conditioning(self, texts: Sequence[str]) -> torch.Tensor:
        return self.cond_stage_model(texts)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> Any:
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior: Any) -> torch.Tensor:
        z = encoder_posterior if isinstance(encoder_posterior, torch.Tensor) else encoder_posterior.sample()
        return self.scale_factor * z

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)


class DiffusionEngineStandIn(_SdModelStandIn):
    """SDXL sgm `DiffusionEngine` as A1111 1.10.1 extends it."""

    def __init__(self, opts: SimpleNamespace, seed: int = 0) -> None:
        clip_l = FrozenCLIPEmbedderStandIn(build_tiny_text_encoder(seed), build_tiny_tokenizer())
        clip_g = FrozenCLIPEmbedderStandIn(
            build_tiny_text_encoder(seed + 1, with_projection=True),
            build_tiny_tokenizer(pad_token="!"),
            attr="model",
        )
        embedders = [
            CLIPWithCustomWordsStandIn(clip_l, opts, "sdxl_l"),
            CLIPWithCustomWordsStandIn(clip_g, opts, "sdxl_g"),
            *(ConcatTimestepEmbedderNDStandIn(key) for key in _SIZE_KEYS),
        ]
        super().__init__(
            OpenAIWrapperStandIn(build_tiny_ldm_unet("sdxl", seed)),
            build_tiny_ldm_vae(seed),
            opts,
            "tiny-sdxl",
        )
        self.conditioner = GeneralConditionerStandIn(embedders)
        self.cond_stage_model = self.conditioner
        self.scale_factor = 0.13025
        self.is_sdxl = True

    def get_learned_conditioning(self, batch: Sequence[str]) -> dict[str, torch.Tensor]:
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        param = next(self.model.parameters())
        values = {
            "original_size_as_tuple": [height, width],
            "crop_coords_top_left": [self.opts.sdxl_crop_top, self.opts.sdxl_crop_left],
            "target_size_as_tuple": [height, width],
        }
        conds: dict[str, Any] = {"txt": batch}
        for key, pair in values.items():
            conds[key] = torch.tensor(pair, device=param.device, dtype=param.dtype).repeat(len(batch), 1)
        return self.conditioner(conds)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale_factor * self.first_stage_model.encode(x).sample()

    def get_first_stage_encoding(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(x, t, cond)


_SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")

STANDINS: dict[str, type[_SdModelStandIn]] = {"sd1": LatentDiffusionStandIn, "sdxl": DiffusionEngineStandIn}


def build_sd_model_standin(arch: str, opts: SimpleNamespace, seed: int = 0) -> _SdModelStandIn:
    """A fresh stand-in `shared.sd_model` for "sd1" or "sdxl", in eval mode."""
    return STANDINS[arch](opts, seed).eval()
