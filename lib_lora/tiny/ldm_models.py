"""Tiny LDM-layout UNets and VAE with the real SD1/SD2/SDXL block structure, plus the SD noise schedule.

What is real ldm code (the `ldm` package of `stable-diffusion-sdkit`, the SD2-era CompVis code A1111 runs):
every module class — `UNetModel`, `TimestepEmbedSequential`, `ResBlock`, `Downsample`, `Upsample`,
`SpatialTransformer`, `BasicTransformerBlock`, `CrossAttention`, the VAE's `Encoder`/`Decoder` and
`DiagonalGaussianDistribution`. SD1/SD2 UNets are plain `UNetModel`s with tiny widths.

What is assembled here, because that ldm version cannot express SDXL (sgm, which can, is not on PyPI):
- `TinySDXLUNet` is a `UNetModel` built with `transformer_depth=1` and attention at levels 1 and 2, after which
  every level-2 `SpatialTransformer` (input 7, 8, middle, output 0-2) gets a second real `BasicTransformerBlock`.
  Real SDXL has depth 2 at level 1 and depth 10 at level 2; the tiny one has depth 1 and 2, so names such as
  `input_blocks.7.1.transformer_blocks.1` exist and `input_blocks.4.1.transformer_blocks.1` does not.
- It has sgm's `label_emb` = Sequential(Sequential(Linear(adm, 4·ch), SiLU, Linear(4·ch, 4·ch))) and a
  `forward(x, timesteps, context, y)` that adds `label_emb(y)` to the time embedding, as sgm's UNet does. The
  context is handed to each `SpatialTransformer` as a per-layer list (this ldm version indexes it per layer).
- Layers ldm zero-initialises (`out.2`, `proj_out`) are re-initialised at random, so outputs and gradients of a
  tiny model are not trivially zero.
- `TinyAutoencoderKL` has ldm `AutoencoderKL`'s attribute names and `encode`/`decode`, without its Lightning base.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

_SDXL_ADM_IN_CHANNELS = 80  # pooled text embedding (32) + 6 size values × 8-wide Fourier embeddings
_SDXL_CONTEXT_DIM = 64  # CLIP-L (32) ++ bigG stand-in (32)


SD15_LDM_UNET_CONFIG: dict[str, object] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_heads": 8,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 768,
    "use_checkpoint": True,
    "legacy": False,
}
"""unet_config.params of v1-inference.yaml (A1111's SD1.5 config)."""


@contextlib.contextmanager
def quiet_ldm_construction() -> Iterator[None]:
    """Build ldm modules without their construction-time prints (ldm reports each attention it sets up)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _reinit_zeroed_(module: nn.Module) -> None:
    """Give layers that ldm zero-initialised (`zero_module`) a default random init instead."""
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(sub, (nn.Linear, nn.Conv2d)) and weight is not None and not weight.detach().any():
            sub.reset_parameters()


def _sd1_kwargs() -> dict:
    """SD1.5's real config with tiny widths: same levels, blocks and attention placement."""
    return {**SD15_LDM_UNET_CONFIG, "model_channels": 32, "num_heads": 2, "context_dim": 32}


def _sd2_kwargs() -> dict:
    kwargs = _sd1_kwargs()
    del kwargs["num_heads"]
    kwargs.update(num_head_channels=16, use_linear_in_transformer=True)
    return kwargs


def _level_transformers(unet: nn.Module, level: int, transformer_cls: type[nn.Module]) -> list[nn.Module]:
    """The SpatialTransformers of one level of an ldm `unet`: its input blocks, its output blocks (the middle:
    last level)."""
    per_level, levels = unet.num_res_blocks[level], len(unet.channel_mult)
    first_input = 1 + level * (per_level + 1)
    first_output = (levels - 1 - level) * (per_level + 1)
    blocks = [unet.input_blocks[i] for i in range(first_input, first_input + per_level)]
    blocks += [unet.output_blocks[i] for i in range(first_output, first_output + per_level + 1)]
    if level == levels - 1:
        blocks.append(unet.middle_block)
    return [m for block in blocks for m in block if isinstance(m, transformer_cls)]


def _deepen_(transformer: nn.Module, depth: int, block_cls: type[nn.Module]) -> None:
    """Append `block_cls` blocks shaped like the first one until `transformer` holds `depth` of them."""
    first = transformer.transformer_blocks[0]
    while len(transformer.transformer_blocks) < depth:
        block = block_cls(
            first.attn1.to_q.in_features,
            first.attn1.heads,
            first.attn1.to_q.out_features // first.attn1.heads,
            context_dim=first.attn2.to_k.in_features,
            checkpoint=first.checkpoint,
        )
        transformer.transformer_blocks.append(block)


@functools.lru_cache(maxsize=1)
def _tiny_sdxl_unet_class() -> type[nn.Module]:
    """The SDXL UNet class, made once (it subclasses ldm's UNetModel, imported lazily)."""
    from ldm.modules.attention import BasicTransformerBlock, SpatialTransformer
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.diffusionmodules.util import timestep_embedding

    class TinySDXLUNet(UNetModel):
        """sgm's SDXL UNet layout from real ldm blocks: per-level transformer depth, `label_emb`, `y` input."""

        def __init__(self, *, adm_in_channels: int, level_depths: tuple[int, ...], **kwargs: object) -> None:
            super().__init__(transformer_depth=1, **kwargs)
            self.num_classes = "sequential"
            self.adm_in_channels = adm_in_channels
            ted = self.model_channels * 4
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
            )
            for level, depth in enumerate(level_depths):
                for transformer in _level_transformers(self, level, SpatialTransformer):
                    _deepen_(transformer, depth, BasicTransformerBlock)
            self.max_transformer_depth = max(level_depths)

        def forward(  # type: ignore[override]
            self,
            x: torch.Tensor,
            timesteps: torch.Tensor,
            context: torch.Tensor,
            y: torch.Tensor,
            **_: object,
        ) -> torch.Tensor:
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
            emb = emb + self.label_emb(y)
            contexts = [context] * self.max_transformer_depth
            skips = []
            h = x
            for module in self.input_blocks:
                h = module(h, emb, contexts)
                skips.append(h)
            h = self.middle_block(h, emb, contexts)
            for module in self.output_blocks:
                h = module(torch.cat([h, skips.pop()], dim=1), emb, contexts)
            return self.out(h)

    return TinySDXLUNet


def _sdxl_kwargs() -> dict:
    return {
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "attention_resolutions": [2, 4],  # levels 1 and 2 (ds 2, 4); level 0 has ResBlocks only, as in SDXL
        "num_res_blocks": 2,
        "channel_mult": [1, 2, 4],
        "num_head_channels": 16,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": True,
        "context_dim": _SDXL_CONTEXT_DIM,
        "use_checkpoint": True,
        "legacy": False,
        "adm_in_channels": _SDXL_ADM_IN_CHANNELS,
        "level_depths": (0, 1, 2),
    }


def build_tiny_ldm_unet(arch: str = "sd1", seed: int = 0) -> nn.Module:
    """A tiny LDM-layout UNet ("sd1", "sd2" or "sdxl") with the real block indices, seeded random weights, eval mode."""
    from ..errors import UnsupportedArchError

    if arch not in ("sd1", "sd2", "sdxl"):
        raise UnsupportedArchError(f"no tiny LDM UNet for {arch!r}; expected 'sd1', 'sd2' or 'sdxl'")
    with quiet_ldm_construction():
        from ldm.modules.diffusionmodules.openaimodel import UNetModel

        torch.manual_seed(seed)
        if arch == "sdxl":
            unet = _tiny_sdxl_unet_class()(**_sdxl_kwargs())
        else:
            unet = UNetModel(**(_sd1_kwargs() if arch == "sd1" else _sd2_kwargs()))
    _reinit_zeroed_(unet)
    return unet.eval()


class TinyAutoencoderKL(nn.Module):
    """ldm `AutoencoderKL`'s modules and encode/decode, tiny: ch 32, four levels (downscale 8), 4 latent channels."""

    def __init__(self, embed_dim: int = 4) -> None:
        super().__init__()
        with quiet_ldm_construction():
            from ldm.modules.diffusionmodules.model import Decoder, Encoder

            config = {
                "ch": 32,
                "out_ch": 3,
                "ch_mult": (1, 1, 1, 1),
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
                "in_channels": 3,
                "resolution": 64,
                "z_channels": 4,
                "double_z": True,
            }
            self.encoder = Encoder(**config)
            self.decoder = Decoder(**config)
        self.quant_conv = nn.Conv2d(2 * config["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, config["z_channels"], 1)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor):
        """The posterior (`DiagonalGaussianDistribution`) for pixels [B, 3, H, W] in [-1, 1]."""
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, 8h, 8w] for unscaled latents [B, 4, h, w]."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior


def build_tiny_ldm_vae(seed: int = 0) -> TinyAutoencoderKL:
    """A tiny ldm-layout VAE (encoder, decoder, quant_conv, post_quant_conv) with seeded random weights, eval mode."""
    torch.manual_seed(seed)
    return TinyAutoencoderKL().eval()


def sd_alphas_cumprod(n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """ā_t of SD's scaled-linear schedule, computed in float64 as ldm/sgm do, returned float32 (n entries)."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    return torch.from_numpy(np.cumprod(1.0 - betas)).to(torch.float32)
