"""ComfyUI's LoRA loading (comfy/lora.py `model_lora_keys_unet`, `model_lora_keys_clip`, `load_lora`, and the
adapters of comfy/weight_adapter/), as a table, for SD1 and SDXL. Forge Neo vendors the same code (forge_neo.py).

Read from its code, written in our words:
- The key map sends LoRA module names to model weights. UNet: `lora_unet_` + the LDM path with "_", the LDM path
  under `diffusion_model.`, and for the layers its diffusers table covers (`_DIFFUSERS_MAPPED`) `lora_unet_` /
  `lycoris_` + the diffusers path with "_", and the dotted diffusers path (bare or under `unet.`) with attention
  projections spelled `processor.to_q` and `to_out`. Text encoders (CLIP-L as `clip_l`, bigG as `clip_g`, both in
  HF layout): `text_encoders.` + the weight path, and for the attention and MLP linears of layers 0–31
  `lora_te_`/`lora_te1_`/`text_encoder.` (CLIP-L) and `lora_te2_`/`text_encoder_2.` (bigG).
- `load_lora` walks the map: for each module name it takes `.alpha` and `.dora_scale` when present, then the
  tensors of each adapter that recognises its suffixes (`_ADAPTER_SUFFIXES`), then `.w_norm`/`.b_norm`, `.diff`,
  `.diff_b`, `.set_weight`. Every key left over is "lora key not loaded".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .layouts import FamilyLayout, family_layout
from .report import UNKNOWN_MODULE, UNKNOWN_SUFFIX, UNSUPPORTED_TYPE, KeyFailure, LoaderReport, account

NAME = "comfyui"
TITLE = "ComfyUI"
_CLIP_NAMES = {("sd1", "te1"): "clip_l", ("sdxl", "te1"): "clip_l", ("sdxl", "te2"): "clip_g"}
_DIFFUSERS_MAPPED = re.compile(
    r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(?:resnets\.\d+\.(?:conv[12]|norm[12]|time_emb_proj|conv_shortcut)"
    r"|attentions\.\d+\.(?:proj_in|proj_out|norm|transformer_blocks\.\d+\.(?:norm[123]|attn[12]\.to_(?:q|k|v|out\.0)"
    r"|ff\.net\.0\.proj|ff\.net\.2)))|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv"
    r"|conv_in|conv_out|conv_norm_out|time_embedding\.linear_[12]|add_embedding\.linear_[12]")
"""The diffusers UNet layers `unet_to_diffusers` (comfy/utils.py) maps to LDM ones."""
_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.(?P<n>\d+)\."
                         r"(?P<part>mlp\.fc[12]|self_attn\.(?:[qkv]|out)_proj)")
_CLIP_LAYERS = 32

_ALWAYS = ("alpha", "dora_scale")
_ADAPTER_SUFFIXES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (adapter, suffixes one of which makes it load, the suffixes it then takes when present)
    ("boft/oft", (".oft_blocks",), (".oft_blocks", ".rescale")),
    ("glora", (".a1.weight",), (".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight")),
    ("loha", (".hada_w1_a",), (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2")),
    ("lokr", (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w2_a"),
     (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")),
    *(("lora", (up,), (up, down, *extra, ".reshape_weight")) for up, down, *extra in (
        (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight"), ("_lora.up.weight", "_lora.down.weight"),
        (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"), (".lora_B", ".lora_A"),
        (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
        (".lora_B.default.weight", ".lora_A.default.weight"))),
    ("oftv2", (".oft_R.weight",), (".oft_R.weight", ".oft_R.scaled_oft")),
    ("norm", (".w_norm",), (".w_norm", ".b_norm")),
    ("diff", (".diff",), (".diff",)),
    ("diff", (".diff_b",), (".diff_b",)),
    ("set", (".set_weight",), (".set_weight",)),
)
"""What `load_lora` takes per module name. The LoRA variants are tried in this order and only the first present
loads (the others of `_ADAPTER_SUFFIXES` all load when present)."""


def key_map(layout: FamilyLayout, *, neo: bool = False) -> dict[str, str]:
    """{LoRA module name: model weight key} as ComfyUI builds it for this family (Neo's: no `lora_prior_`/
    `text_projection` names, which Neo's vendored copy lacks)."""
    mapping: dict[str, str] = {}
    for layer in layout.roots("unet"):
        weight = f"diffusion_model.{layer.path}.weight"
        flat = layer.path.replace(".", "_")
        mapping.update({f"lora_unet_{flat}": weight, f"diffusion_model.{layer.path}": weight})
        if not neo:
            mapping[f"lora_prior_unet_{flat}"] = weight
        path = layer.diffusers_path
        if path and _DIFFUSERS_MAPPED.fullmatch(path):
            mapping.update({f"lora_unet_{path.replace('.', '_')}": weight, f"lycoris_{path.replace('.', '_')}": weight})
            dotted = path.replace(".to_", ".processor.to_").removesuffix(".0" if path.endswith(".to_out.0") else "")
            mapping.update({dotted: weight, f"unet.{dotted}": weight})
    for root in ("te1", "te2"):
        clip = _CLIP_NAMES.get((layout.arch, root))
        for layer in layout.roots(root):
            weight = f"{clip}.transformer.{layer.hf_path}.weight"
            mapping[f"text_encoders.{clip}.transformer.{layer.hf_path}"] = weight
            match = _CLIP_LAYER.fullmatch(layer.hf_path or "")
            if match and int(match["n"]) < _CLIP_LAYERS:
                flat = f"text_model_encoder_layers_{match['n']}_{match['part'].replace('.', '_')}"
                names = ((f"lora_te_{flat}", f"lora_te1_{flat}", f"text_encoder.{layer.hf_path}") if clip == "clip_l"
                         else (f"lora_te2_{flat}", f"text_encoder_2.{layer.hf_path}"))  # bigG beside CLIP-L
                mapping.update(dict.fromkeys(names, weight))
            if layer.hf_path == "text_projection" and not neo:
                mapping[{"clip_l": "lora_te1_text_projection", "clip_g": "lora_te2_text_projection"}[clip]] = weight
    return mapping


def failures(keys: Iterable[str], mapping: Mapping[str, str]) -> dict[str, KeyFailure]:
    """{key: why} for each key `load_lora` leaves over (its module name unknown, or its suffix not read)."""
    present = set(keys)
    loaded: set[str] = set()
    adapted: set[str] = set()  # module names some adapter took tensors of
    for name in mapping:
        loaded.update(key for suffix in _ALWAYS if (key := f"{name}.{suffix}") in present)
        lora_done = False
        for adapter, triggers, takes in _ADAPTER_SUFFIXES:
            if (adapter == "lora" and lora_done) or not any(name + t in present for t in triggers):
                continue
            lora_done = lora_done or adapter == "lora"
            loaded.update(key for suffix in takes if (key := name + suffix) in present)
            adapted.add(name)
    result: dict[str, KeyFailure] = {}
    for key in present - loaded:
        module = _module(key, mapping)
        reason = UNKNOWN_MODULE if module is None else UNKNOWN_SUFFIX if module in adapted else UNSUPPORTED_TYPE
        result[key] = KeyFailure(key, reason)
    return result


def _module(key: str, mapping: Mapping[str, str]) -> str | None:
    """The longest module name of the map that `key` is a tensor of (name + "." or "_lora." + suffix)."""
    cuts = [i for i, char in enumerate(key) if char == "."] + [m.start() for m in re.finditer(r"_lora\.", key)]
    return next((key[:i] for i in sorted(cuts, reverse=True) if key[:i] in mapping), None)


def check(keys: Iterable[str], arch: str) -> LoaderReport:
    """What ComfyUI would apply of a LoRA with these tensor keys on a model of `arch` (sd1 or sdxl)."""
    keys = list(dict.fromkeys(keys))
    return account(NAME, TITLE, arch, keys, failures(keys, key_map(family_layout(arch))))
