"""The block of every key of a real SD1.5 and SDXL kohya LoRA, on key lists generated from the full-size models.

The UNets and text encoders are built at full size on the meta device (no memory, no weights), so the keys are
exactly the ones sd-scripts writes. Each key's block is checked against a table written here from the LDM block
structure (independent of lib_lora.unet_blocks), in every spelling we accept, and the module counts against
what sd-scripts reports when it creates the network ("create LoRA for U-Net: 192 modules" and so on).
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("diffusers")

from lib_lora.arch import SD1, SDXL  # noqa: E402
from lib_lora.networks.keys import build_target_index_for  # noqa: E402
from lib_lora.networks.random_files import kohya_default_targets  # noqa: E402
from lib_lora.tiny.full_size import build_full_text_encoders, build_full_unet  # noqa: E402
from lib_lora.unet_blocks import BASE, UNBLOCKED_PARTS, block_of_key  # noqa: E402

LBW_17 = {"BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
          "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"}
LBW_12 = {"BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"}
# sd-scripts' counts for networks.lora (attention + TE, "LierLa"): SD1 UNet 192, TE 72; SDXL UNet 722, TE1 72, TE2 192.
LORA_MODULES = {"sd1": {"unet": 192, "te1": 72}, "sdxl": {"unet": 722, "te1": 72, "te2": 192}}


def expected_block(key: str, per_level: int) -> str | None:
    """The LBW block of a kohya key from the UNet's structure: `per_level` = 3 (SD1 and SDXL both have 3 slots).

    diffusers names: down_blocks.i.{resnets,attentions}.j → IN(3i+j+1), down_blocks.i.downsamplers → IN(3i+3),
    mid_block → M00, up_blocks.i.{resnets,attentions}.j → OUT(3i+j), up_blocks.i.upsamplers → OUT(3i+2),
    conv_in → IN00. LDM names carry the index: input_blocks.N → IN N, middle_block → M00, output_blocks.N → OUT N.
    """
    if key.startswith(("lora_te", "lora_te1_", "lora_te2_")):
        return BASE
    name = key.removeprefix("lora_unet_")
    patterns = [
        (r"down_blocks_(\d+)_(?:resnets|attentions)_(\d+)_", lambda i, j: f"IN{per_level * int(i) + int(j) + 1:02d}"),
        (r"down_blocks_(\d+)_downsamplers_0_", lambda i: f"IN{per_level * int(i) + per_level:02d}"),
        (r"up_blocks_(\d+)_(?:resnets|attentions)_(\d+)_", lambda i, j: f"OUT{per_level * int(i) + int(j):02d}"),
        (r"up_blocks_(\d+)_upsamplers_0_", lambda i: f"OUT{per_level * int(i) + per_level - 1:02d}"),
        (r"input_blocks_(\d+)_", lambda n: f"IN{int(n):02d}"),
        (r"output_blocks_(\d+)_", lambda n: f"OUT{int(n):02d}"),
        (r"(?:mid_block|middle_block)_", lambda: "M00"),
        (r"conv_in$", lambda: "IN00"),
    ]
    for pattern, block in patterns:
        match = re.match(pattern, name)
        if match:
            return block(*match.groups())
    return None


@pytest.fixture(scope="module")
def indices():
    sd1_encoders = build_full_text_encoders("sd1", device="meta")
    sdxl_encoders = build_full_text_encoders("sdxl", device="meta")
    return {
        ("sd1", "diffusers"): build_target_index_for(build_full_unet("sd1", device="meta"), "diffusers",
                                                     sd1_encoders, SD1),
        ("sd1", "ldm"): build_target_index_for(build_full_unet("sd1", layout="ldm", device="meta"), "ldm",
                                               sd1_encoders, SD1),
        ("sdxl", "diffusers"): build_target_index_for(build_full_unet("sdxl", device="meta"), "diffusers",
                                                      sdxl_encoders, SDXL),
    }


@pytest.mark.parametrize(("arch", "layout"), [("sd1", "diffusers"), ("sd1", "ldm"), ("sdxl", "diffusers")])
def test_every_key_of_a_full_size_kohya_lora_maps_to_its_structural_block(indices, arch, layout):
    index = indices[(arch, layout)]
    family = SD1 if arch == "sd1" else SDXL
    targets = kohya_default_targets(index, kind="lora")
    counts: dict[str, int] = {}
    for target in targets:
        counts[target.root] = counts.get(target.root, 0) + 1
    assert counts == LORA_MODULES[arch]
    blocks = set()
    for target in targets:
        for key in index.spellings(target):
            assert block_of_key(key, family) == expected_block(key, 3) == target.block, key
        blocks.add(target.block)
    assert blocks == (LBW_17 if arch == "sd1" else LBW_12)  # the LoRA format's vector, position for position


@pytest.mark.parametrize(("arch", "layout"), [("sd1", "diffusers"), ("sd1", "ldm"), ("sdxl", "diffusers")])
def test_every_weight_key_maps_and_only_time_label_and_out_have_no_block(indices, arch, layout):
    """All UNet weights a LoCon/full LoRA may touch: a block from the structure, or one of the unblocked parts."""
    index = indices[(arch, layout)]
    family = SD1 if arch == "sd1" else SDXL
    unblocked = set()
    for target in index.targets():
        for key in index.spellings(target):
            want = expected_block(key, 3)
            if want is None:
                unblocked.add(block_of_key(key, family))
            else:
                assert block_of_key(key, family) == want, key
    assert unblocked == ({"time_embed", "out"} if arch == "sd1" else set(UNBLOCKED_PARTS))
    locon = {t.block for t in kohya_default_targets(index, kind="locon") if t.root == "unet"}
    assert locon == set(family.unet_block_ids) - {"IN00"}  # ResBlocks and samplers in every block but conv_in's
