"""A1111 1.10's built-in Lora (extensions-builtin/Lora `networks.load_network`), as a table, for SD1 and SDXL.

Read from its code, written in our words:
- Module names (`assign_network_names_to_compvis_modules`): every module path with "." -> "_"; the UNet under
  `diffusion_model_`, the SD1 encoder under `transformer_`, SDXL's under `0_transformer_` (CLIP-L) and `1_model_`
  (open_clip bigG, whose q/k/v are one fused `attn`).
- A key is split at its first "."; its module name is converted (`convert_diffusers_name_to_compvis`: `_RULES`),
  then looked up; a `_q/k/v_proj` name falls back to its fused attention; then `lora_unet` -> `diffusion_model`
  and `lora_te1_text_model` -> `0_transformer_text_model` / `transformer_text_model` are tried as they are.
  A key found nowhere is left out silently (a debug log line).
- The modules found take the first network type whose required tensors are all there (`_TYPES`, the order of
  `module_types`); one that none takes, or a LoRA on a layer neither linear nor conv, fails the whole file.
  Tensors a type does not read are ignored. A fused attention changes only when q, k, v and out_proj all have one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .layouts import FamilyLayout, family_layout
from .report import NOT_LOADED, UNKNOWN_MODULE, UNKNOWN_SUFFIX, UNSUPPORTED_TYPE, KeyFailure, LoaderReport, account

NAME = "a1111"
TITLE = "A1111 1.10"
_PREFIXES = {("sd1", "unet"): "diffusion_model_", ("sd1", "te1"): "transformer_",
             ("sdxl", "unet"): "diffusion_model_", ("sdxl", "te1"): "0_transformer_", ("sdxl", "te2"): "1_model_"}
_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
           "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _block(side: str, level: int, kind: str, item: int, rest: str) -> str:
    suffix = _RESNET.get(rest, rest) if kind == "resnets" else rest
    slot = 1 if kind == "attentions" else 0
    number = {"input": 1 + level * 3 + item, "output": level * 3 + item}[side]
    return f"diffusion_model_{side}_blocks_{number}_{slot}_{suffix}"


def _open_clip(layer: str, rest: str) -> str:
    rest = rest.replace("mlp_fc1", "mlp_c_fc") if "mlp_fc1" in rest else (
        rest.replace("mlp_fc2", "mlp_c_proj") if "mlp_fc2" in rest else rest.replace("self_attn", "attn"))
    return f"1_model_transformer_resblocks_{layer}_{rest}"


_RULES: tuple[tuple[re.Pattern[str], Callable[..., str]], ...] = tuple((re.compile(p), f) for p, f in (
    (r"lora_unet_conv_in(.*)", lambda rest: f"diffusion_model_input_blocks_0_0{rest}"),
    (r"lora_unet_conv_out(.*)", lambda rest: f"diffusion_model_out_2{rest}"),
    (r"lora_unet_time_embedding_linear_(\d+)(.*)",
     lambda n, rest: f"diffusion_model_time_embed_{int(n) * 2 - 2}{rest}"),
    (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda i, kind, j, rest: _block("input", int(i), kind, int(j), rest)),
    (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
     lambda kind, j, rest: f"diffusion_model_middle_block_{1 if kind == 'attentions' else int(j) * 2}_"
                           f"{_RESNET.get(rest, rest) if kind == 'resnets' else rest}"),
    (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda i, kind, j, rest: _block("output", int(i), kind, int(j), rest)),
    (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv",
     lambda i: f"diffusion_model_input_blocks_{3 + int(i) * 3}_0_op"),
    # the slot is SD1's: 1 on the first up level (no attention there), else 2
    (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
     lambda i: f"diffusion_model_output_blocks_{2 + int(i) * 3}_{2 if int(i) > 0 else 1}_conv"),
    (r"lora_te_text_model_encoder_layers_(\d+)_(.+)",
     lambda n, rest: f"transformer_text_model_encoder_layers_{n}_{rest}"),
    (r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", _open_clip),
))
"""`convert_diffusers_name_to_compvis` for SD1/SDXL (its SD2 branch left out): the first pattern matching the start
of a name converts it; others are kept as they are."""
_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")
_FALLBACKS = (("lora_unet", ("diffusion_model",)), ("lora_te1_text_model", ("0_transformer_text_model",
                                                                            "transformer_text_model")))


@dataclass(frozen=True)
class NetworkType:
    """One of A1111's network types: taken when `needs` (any one set) are all present; reads `reads`."""

    name: str
    needs: tuple[frozenset[str], ...]
    reads: frozenset[str]


_COMMON = frozenset({"alpha", "scale", "bias", "dora_scale"})
_TYPES = tuple(NetworkType(name, tuple(map(frozenset, needs)), frozenset(reads) | _COMMON) for name, needs, reads in (
    ("lora", (("lora_up.weight", "lora_down.weight"), ("lora_A.weight", "lora_B.weight")),
     ("lora_up.weight", "lora_down.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight")),
    ("hada", (("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),),
     ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")),
    ("ia3", (("weight",),), ("weight", "on_input")),
    ("lokr", (("lokr_w1", "lokr_w2"), ("lokr_w1_a", "lokr_w1_b", "lokr_w2"), ("lokr_w1", "lokr_w2_a", "lokr_w2_b"),
              ("lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")),
     ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")),
    ("full", (("diff",),), ("diff", "diff_b")),
    ("norm", (("w_norm", "b_norm"),), ("w_norm", "b_norm")),
    ("glora", (("a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight"),),
     ("a1.weight", "a2.weight", "b1.weight", "b2.weight")),
    ("oft", (("oft_blocks",), ("oft_diag",)), ("oft_blocks", "oft_diag", "rescale")),
))
"""`module_types` in order, with the tensors each requires (`create_module`) and reads (its `__init__`)."""


def layer_names(layout: FamilyLayout) -> dict[str, str]:
    """{A1111 module name: layer kind} of a family (`network_layer_mapping`'s keys for its weighted layers)."""
    return {_PREFIXES[layout.arch, layer.root] + layer.path.replace(".", "_"): layer.kind for layer in layout.layers}


def resolve(module: str, names: dict[str, str]) -> str | None:
    """The A1111 module name a file's module name lands on (the name it is kept under), or None."""
    key = next((f(*m.groups()) for pattern, f in _RULES if (m := pattern.match(module))), module)
    found = key in names or bool((m := _X_PROJ.match(key)) and m.group(1) in names)
    for head, replacements in _FALLBACKS:
        if not found and head in module:
            for replacement in replacements:
                key = module.replace(head, replacement)
                if key in names:
                    return key
            return None
    return key if found else None


def check(keys: Iterable[str], arch: str) -> LoaderReport:
    """What A1111 1.10 would apply of a LoRA with these tensor keys on a model of `arch` (sd1 or sdxl)."""
    keys = list(dict.fromkeys(keys))
    names = layer_names(family_layout(arch, openclip_te2=True))
    failures: dict[str, KeyFailure] = {}
    modules: dict[str, dict[str, str]] = {}  # A1111 name -> {part: key}
    for key in keys:
        module, _, part = key.partition(".")
        if module == "bundle_emb":
            continue  # loaded as a textual-inversion embedding
        name = resolve(module, names)
        if name is None:
            failures[key] = KeyFailure(key, UNKNOWN_MODULE)
        else:
            modules.setdefault(name, {})[part] = key
    for name, parts in modules.items():
        kind = names.get(name) or names[_X_PROJ.match(name).group(1)]  # type: ignore[union-attr]
        network = next((t for t in _TYPES if any(need <= parts.keys() for need in t.needs)), None)
        if network is None or (network.name == "lora" and kind == "other"):
            why = (f"no network type takes {name}'s tensors ({', '.join(sorted(parts))})" if network is None
                   else f"a LoRA on {name}, a layer neither linear nor conv")
            return account(NAME, TITLE, arch, keys, {k: KeyFailure(k, NOT_LOADED, why) for k in keys})
        for part, key in parts.items():
            if part not in network.reads:
                failures[key] = KeyFailure(key, UNKNOWN_SUFFIX, f"{network.name} does not read {part!r}")
    _fused_attention(modules, names, failures)
    return account(NAME, TITLE, arch, keys, failures)


def _fused_attention(modules: dict[str, dict[str, str]], names: dict[str, str],
                     failures: dict[str, KeyFailure]) -> None:
    """q/k/v/out of a fused attention that does not have all four: none of them changes anything."""
    for base in {m.group(1) for name in modules if (m := _X_PROJ.match(name)) and names.get(m.group(1)) == "mha"}:
        group = [f"{base}_{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        if not all(name in modules for name in group):
            for name in group:
                for key in modules.get(name, {}).values():
                    failures.setdefault(key, KeyFailure(key, UNSUPPORTED_TYPE,
                                                        "a fused attention changes only with q, k, v and out_proj"))
