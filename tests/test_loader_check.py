"""The loader check's tables (A1111 1.10, Forge Neo, ComfyUI) on SD1/SDXL names, and each reason a key can fail.

The tables' module names are compared with names derived independently from our own layouts: the real ldm
`UNetModel` at SD1.5's real config and diffusers' full-size UNets (LDM names through `keys`), HF CLIP at the real
layer counts. Foreign files (diffusers/PEFT names, a Flux key set) report exactly which keys fail in which loader.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_lora.networks.keys import diffusers_to_ldm_unet_path, resolve_ldm_unet_path
from lib_lora.networks.loaders import a1111, comfyui, forge_neo
from lib_lora.networks.loaders.layouts import family_layout
from lib_lora.networks.loaders.report import (
    NOT_LOADED,
    UNKNOWN_MODULE,
    UNKNOWN_SUFFIX,
    UNSUPPORTED_TYPE,
    KeyFailure,
    LoaderReport,
)

TABLES = (a1111, forge_neo, comfyui)
LORA = ("lora_down.weight", "lora_up.weight", "alpha")


def weighted(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules()
            if name and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.ndim >= 1}


def trainable_names(arch: str) -> list[str]:
    """The kohya name we write for every linear/conv layer of the family's real model that kohya trains: all of
    the UNet's, the text encoders' attention and MLP ones (not the projection: no module in open_clip)."""
    return [layer.names[0] for layer in family_layout(arch).layers if layer.kind in ("linear", "conv")
            and (layer.root == "unet" or "_self_attn_" in layer.names[0] or "_mlp_" in layer.names[0])]


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.NAME)
@pytest.mark.parametrize("suffixes", [LORA, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"),
                                      ("lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"),
                                      (*LORA, "dora_scale")], ids=["lora", "loha", "lokr", "dora"])
def test_every_layer_we_can_write_is_applied_by_every_table(arch, table, suffixes):
    keys = [f"{name}.{suffix}" for name in trainable_names(arch) for suffix in suffixes]
    report = table.check(keys, arch)
    assert report.complete, report.to_text()
    assert report.applied == report.total == len(keys) > 1000


def test_the_layouts_names_match_the_real_ldm_sd15_unet_and_hf_clip():
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_lora.tiny.full_size import CLIP_L_CONFIG
    from lib_lora.tiny.ldm_models import SD15_LDM_UNET_CONFIG, quiet_ldm_construction

    with torch.device("meta"), quiet_ldm_construction():
        unet = UNetModel(**SD15_LDM_UNET_CONFIG)
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))
    names = a1111.layer_names(family_layout("sd1", openclip_te2=True))
    assert {n for n in names if n.startswith("diffusion_model_")} == {
        "diffusion_model_" + path.replace(".", "_") for path in weighted(unet)}
    assert {n for n in names if n.startswith("transformer_")} == {
        "transformer_" + path.replace(".", "_") for path in weighted(clip)}


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_comfy_maps_every_diffusers_unet_layer_to_its_ldm_weight(arch):
    pytest.importorskip("diffusers")
    from lib_lora.tiny.full_size import build_full_unet

    unet = build_full_unet(arch, device="meta")
    modules = {name for name, _ in unet.named_modules()}
    mapping = comfyui.key_map(family_layout(arch, source="ldm"))
    for path in weighted(unet):
        ldm = resolve_ldm_unet_path(diffusers_to_ldm_unet_path(path), modules.__contains__)
        assert mapping[f"lora_unet_{path.replace('.', '_')}"] == f"diffusion_model.{ldm}.weight", path
        assert mapping[f"lora_unet_{ldm.replace('.', '_')}"] == f"diffusion_model.{ldm}.weight", path


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_the_ldm_and_diffusers_sources_give_the_same_layers(arch):
    pytest.importorskip("diffusers")

    def described(source):
        layers = family_layout(arch, source=source).layers
        return {(x.root, x.path, x.kind, x.diffusers_path, x.hf_path) for x in layers}

    assert described("ldm") == described("diffusers")


def test_a1111_follows_its_own_conversions_and_fallbacks():
    names = a1111.layer_names(family_layout("sdxl", openclip_te2=True))
    assert a1111.resolve("lora_unet_output_blocks_2_2_conv", names) == "diffusion_model_output_blocks_2_2_conv"
    assert a1111.resolve("lora_te1_text_model_encoder_layers_0_mlp_fc1", names) == \
        "0_transformer_text_model_encoder_layers_0_mlp_fc1"
    assert a1111.resolve("lora_te2_text_model_encoder_layers_3_self_attn_q_proj", names) == \
        "1_model_transformer_resblocks_3_attn_q_proj"
    assert a1111.resolve("lora_te2_text_model_encoder_layers_3_mlp_fc2", names) == \
        "1_model_transformer_resblocks_3_mlp_c_proj"
    # its SD1-only upsampler rule puts SDXL's first upsampler in the wrong slot, and add_embedding has no rule
    assert a1111.resolve("lora_unet_up_blocks_0_upsamplers_0_conv", names) is None
    assert a1111.resolve("lora_unet_add_embedding_linear_1", names) is None
    sd1 = a1111.layer_names(family_layout("sd1", openclip_te2=True))
    assert a1111.resolve("lora_unet_up_blocks_0_upsamplers_0_conv", sd1) == "diffusion_model_output_blocks_2_1_conv"
    assert a1111.resolve("lora_unet_mid_block_resnets_1_time_emb_proj", sd1) == \
        "diffusion_model_middle_block_2_emb_layers_1"


# --- each reason ---------------------------------------------------------------------------------------------

ATTN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def reasons(report: LoaderReport) -> dict[str, str]:
    return {failure.key: failure.reason for failure in report.failures}


def test_an_unknown_suffix_is_reported_and_the_rest_applied():
    keys = [f"{ATTN}.{s}" for s in LORA] + [f"{ATTN}.lora_extra.weight"]
    for table in TABLES:
        report = table.check(keys, "sd1")
        assert reasons(report) == {f"{ATTN}.lora_extra.weight": UNKNOWN_SUFFIX}, table.NAME
        assert report.applied == 3


def test_a_module_no_network_type_takes():
    keys = [f"{ATTN}.{s}" for s in LORA] + ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"]
    # A1111: a module with an up factor and no down one fits no type, and that fails the whole file
    report = a1111.check(keys, "sd1")
    assert set(reasons(report).values()) == {NOT_LOADED} and report.applied == 0
    assert "proj_in" in report.failures[0].detail
    # ComfyUI: the module is found but no adapter reads an up factor alone (IA3 keys: none at all)
    ia3 = [f"lora_unet_down_blocks_0_attentions_0_proj_in.{s}" for s in ("weight", "on_input")]
    assert set(reasons(comfyui.check([f"{ATTN}.{s}" for s in LORA] + ia3, "sd1")).values()) == {UNSUPPORTED_TYPE}


def test_a1111_changes_a_fused_attention_only_with_q_k_v_and_out():
    base = "lora_te2_text_model_encoder_layers_0_self_attn"
    whole = [f"{base}_{p}.{s}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for s in LORA]
    assert a1111.check(whole, "sdxl").complete
    partial = [key for key in whole if "_out_proj." not in key]
    report = a1111.check(partial, "sdxl")
    assert set(reasons(report).values()) == {UNSUPPORTED_TYPE} and report.applied == 0
    assert comfyui.check(partial, "sdxl").complete  # ComfyUI and Neo keep q/k/v apart (HF layout)


def test_neo_skips_a_lora_with_more_than_half_its_keys_unmatched():
    good = [f"{ATTN}.{s}" for s in LORA]
    half = good + [f"lora_unet_nowhere_{i}.alpha" for i in range(3)]
    assert forge_neo.check(half, "sd1").applied == 3  # exactly half unmatched: loaded
    over = half + ["lora_unet_nowhere_9.alpha"]
    report = forge_neo.check(over, "sd1")
    assert report.applied == 0 and reasons(report) == {**dict.fromkeys(good, NOT_LOADED),
                                                       **dict.fromkeys(over[3:], UNKNOWN_MODULE)}
    assert comfyui.check(over, "sd1").applied == 3


def test_reports_account_for_every_key_once():
    with pytest.raises(ValueError, match="applied"):
        LoaderReport("x", "X", "sd1", total=3, applied=3, failures=(KeyFailure("a", UNKNOWN_MODULE),))
    with pytest.raises(ValueError, match="reason"):
        KeyFailure("a", "because")
    report = comfyui.check([f"{ATTN}.{s}" for s in LORA] + ["lora_unet_nowhere.alpha"], "sd1")
    assert report.to_json() == {"loader": "comfyui", "title": "ComfyUI", "arch": "sd1", "total": 4, "applied": 3,
                                "failures": [{"key": "lora_unet_nowhere.alpha", "reason": UNKNOWN_MODULE}],
                                "notes": []}
    assert report.summary() == "ComfyUI (SD1): 3 of 4 keys applied — 1 unknown module"
