"""A tiny open_clip text transformer: the module classes and names of A1111's SD2 encoder and SDXL te2.

open_clip itself is not installable here (it needs torchvision), so this stands in for it. It is built
from torch's own classes, as open_clip's is: `transformer.resblocks.N` = {`ln_1` LayerNorm, `attn`
nn.MultiheadAttention (fused `in_proj_weight`, `out_proj`), `ln_2`, `mlp.c_fc`, `mlp.c_proj` Linear}, plus
`token_embedding`, `positional_embedding`, `ln_final`, `text_projection` and the causal `attn_mask` buffer on
the model. The attention is sequence-first (batch_first=False) and the forward permutes NLD -> LND around the
transformer, as open_clip 2.20 (A1111 1.10's pin) does.

`openclip_from_hf` builds one holding the same weights as a tiny HF CLIPTextModel(WithProjection), q/k/v
concatenated into in_proj, so a test can show an HF-named key and an in_proj row slice reach the same numbers.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x): CLIP ViT-L's activation (HF `quick_gelu`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class ResidualAttentionBlock(nn.Module):
    """open_clip's block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); sequence-first [L, B, D]."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: str = "gelu") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ls_1 = nn.Identity()
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, mlp_width)),
                    ("gelu", _ACTIVATIONS[activation]()),
                    ("c_proj", nn.Linear(mlp_width, width)),
                ]
            )
        )
        self.ls_2 = nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """open_clip's `Transformer`: `resblocks`, run in order on [L, B, D]."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, activation: str = "gelu") -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, activation) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class TinyOpenCLIPTextModel(nn.Module):
    """The text half of an open_clip `CLIP` (what A1111 keeps at `.wrapped.model`), tiny widths."""

    def __init__(
        self,
        *,
        vocab_size: int,
        width: int = 32,
        heads: int = 4,
        layers: int = 3,
        mlp_width: int = 64,
        context_length: int = 77,
        embed_dim: int = 32,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.transformer = Transformer(width, layers, heads, mlp_width, activation)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states [B, L, D] after ln_final, pooled [B, E]: the EOS (highest id) token, projected)."""
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        x = self.transformer(x.permute(1, 0, 2), attn_mask=self.attn_mask[:length, :length]).permute(1, 0, 2)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection
        return x, pooled


@torch.no_grad()
def openclip_from_hf(hf_model: nn.Module) -> TinyOpenCLIPTextModel:
    """A TinyOpenCLIPTextModel with the weights of an HF CLIPTextModel(WithProjection); eval mode.

    q/k/v weights and biases are concatenated into `in_proj_weight`/`in_proj_bias`; fc1/fc2 become c_fc/c_proj;
    without an HF projection `text_projection` is the identity (pooled = HF's pooler_output).
    """
    config = hf_model.config
    text = hf_model.text_model
    projection = getattr(hf_model, "text_projection", None)
    model = TinyOpenCLIPTextModel(
        vocab_size=config.vocab_size,
        width=config.hidden_size,
        heads=config.num_attention_heads,
        layers=config.num_hidden_layers,
        mlp_width=config.intermediate_size,
        context_length=config.max_position_embeddings,
        embed_dim=projection.out_features if projection is not None else config.hidden_size,
        activation=config.hidden_act,
    )
    model.token_embedding.weight.copy_(text.embeddings.token_embedding.weight)
    model.positional_embedding.copy_(text.embeddings.position_embedding.weight)
    for block, layer in zip(model.transformer.resblocks, text.encoder.layers):
        attention = layer.self_attn
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        block.attn.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        block.attn.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        _copy_weight_and_bias_(block.attn.out_proj, attention.out_proj)
        _copy_weight_and_bias_(block.ln_1, layer.layer_norm1)
        _copy_weight_and_bias_(block.ln_2, layer.layer_norm2)
        _copy_weight_and_bias_(block.mlp.c_fc, layer.mlp.fc1)
        _copy_weight_and_bias_(block.mlp.c_proj, layer.mlp.fc2)
    _copy_weight_and_bias_(model.ln_final, text.final_layer_norm)
    if projection is not None:
        model.text_projection.copy_(projection.weight.T)
    else:
        model.text_projection.copy_(torch.eye(config.hidden_size))
    return model.eval()


def _copy_weight_and_bias_(dst: nn.Module, src: nn.Module) -> None:
    """Copy `weight` and `bias` (Linear, LayerNorm) from src into dst, in place."""
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


def build_tiny_openclip_text_model(seed: int = 0, *, with_projection: bool = True) -> TinyOpenCLIPTextModel:
    """A seeded random tiny open_clip text model: the tiny HF encoder of that seed, converted (see module doc)."""
    from .clip import build_tiny_text_encoder

    return openclip_from_hf(build_tiny_text_encoder(seed, with_projection=with_projection))
