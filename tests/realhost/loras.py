"""Random kohya LoRAs for a real host's checkpoint, from the shapes in its safetensors header (no weights read).

`lora_targets(checkpoint)` lists the modules a plain (attention-only) kohya LoRA reaches: every linear or 1×1
conv weight in the UNet's transformer blocks (`input_blocks.N.1`, `middle_block.1`, `output_blocks.N.1`) and the
text encoders' attention and MLP layers. Names come from lib_lora's own helpers (`networks.keys.kohya_name`,
`te_path_to_hf`), blocks from `blocks.mapping.block_of_key`. Every UNet target lies in a block of the arch's short
LBW format (SD1 17 values, SDXL 12), so ALL (all ones) applies exactly what the plain tag applies.

`random_lora(targets, seed)` writes rank-4 `lora_down`/`lora_up`/`alpha` tensors (alpha = rank, scale 1) sized so
that each module's change is about STRENGTH of its weight (the test checkpoints' weights are N(0, 1/fan_in)):
visible in the image, not NaN. `restrict(tensors, blocks)` keeps the modules of some blocks, bit for bit.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lib_lora.arch import get_arch
from lib_lora.blocks.presets import FORMATS, LORA_LENGTH, PresetBook, family_of
from lib_lora.networks.keys import kohya_name, te_path_to_hf
from lib_lora.unet_blocks import BASE, block_of_key

RANK = 4
STRENGTH = 0.5
"""Each module's change relative to its weight (delta rows ~ STRENGTH × a weight row's size)."""

_UNET = "model.diffusion_model."
_UNET_MODULE = re.compile(
    r"(?:input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\."
    r"(?:proj_in|proj_out|transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.(?:0\.proj|2)))"
)
_HF_TE_MODULE = re.compile(r"text_model\.encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])")
_OPENCLIP_MODULE = re.compile(r"transformer\.resblocks\.\d+\.(?:attn\.out_proj|mlp\.c_fc|mlp\.c_proj)")
_OPENCLIP_FUSED = re.compile(r"transformer\.resblocks\.\d+\.attn")
# (checkpoint prefix of a text encoder, kohya prefix, naming) per arch
_TEXT_ENCODERS: Mapping[str, tuple[tuple[str, str, str], ...]] = {
    "sd1": (("cond_stage_model.transformer.", "lora_te", "hf"),),
    "sdxl": (("conditioner.embedders.0.transformer.", "lora_te1", "hf"),
             ("conditioner.embedders.1.model.", "lora_te2", "openclip")),
}


@dataclass(frozen=True)
class Target:
    """One module a LoRA changes: its kohya name, weight shape (out, in[, 1, 1]) and block id."""

    name: str
    shape: tuple[int, ...]
    block: str


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor key: (dtype, shape)} from a safetensors file's JSON header; the tensors are not read."""
    with Path(path).open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return {key: (value["dtype"], tuple(value["shape"])) for key, value in header.items() if key != "__metadata__"}


def checkpoint_arch(header: Mapping[str, object]) -> str:
    """"sdxl" when the checkpoint has SDXL's second text encoder, "sd1" when it has SD1's, else ValueError."""
    if any(key.startswith("conditioner.embedders.1.") for key in header):
        return "sdxl"
    if any(key.startswith("cond_stage_model.transformer.") for key in header):
        return "sd1"
    raise ValueError("neither an SD1 nor an SDXL checkpoint (LDM/sgm keys)")


def lora_targets(checkpoint: Path) -> tuple[str, list[Target]]:
    """The checkpoint's arch and the modules a plain kohya LoRA for it reaches, sorted by name."""
    header = read_header(checkpoint)
    arch = checkpoint_arch(header)
    shapes = {key: shape for key, (_, shape) in header.items()}
    targets = [*_unet_targets(shapes, arch), *_text_encoder_targets(shapes, arch)]
    short = set(FORMATS[family_of(arch)][LORA_LENGTH[family_of(arch)]])
    outside = sorted({t.block for t in targets} - short)
    if outside:
        raise ValueError(f"targets outside the {LORA_LENGTH[family_of(arch)]}-value blocks: {outside}")
    return arch, sorted(targets, key=lambda target: target.name)


def _unet_targets(shapes: Mapping[str, tuple[int, ...]], arch: str) -> Iterable[Target]:
    for key, shape in shapes.items():
        if not (key.startswith(_UNET) and key.endswith(".weight")):
            continue
        path = key[len(_UNET):-len(".weight")]
        if not _UNET_MODULE.fullmatch(path) or not _linear_like(shape):
            continue
        name = kohya_name("lora_unet", path)
        block = block_of_key(name, get_arch(arch))
        if block is None:
            raise ValueError(f"no block for {name}")
        yield Target(name, shape, block)


def _text_encoder_targets(shapes: Mapping[str, tuple[int, ...]], arch: str) -> Iterable[Target]:
    for prefix, kohya_prefix, naming in _TEXT_ENCODERS[arch]:
        for key, shape in shapes.items():
            if not key.startswith(prefix):
                continue
            path = key[len(prefix):]
            if naming == "hf" and path.endswith(".weight") and _HF_TE_MODULE.fullmatch(path[:-7]):
                yield Target(kohya_name(kohya_prefix, path[:-7]), shape, BASE)
            elif naming == "openclip" and path.endswith(".weight") and _OPENCLIP_MODULE.fullmatch(path[:-7]):
                yield Target(kohya_name(kohya_prefix, _hf(path[:-7])), shape, BASE)
            elif naming == "openclip" and path.endswith(".in_proj_weight") and _OPENCLIP_FUSED.fullmatch(path[:-15]):
                rows = shape[0] // 3  # q, k, v stacked: kohya names them as HF's three projections
                for part in ("q_proj", "k_proj", "v_proj"):
                    yield Target(kohya_name(kohya_prefix, f"{_hf(path[:-15])}.{part}"), (rows, shape[1]), BASE)


def _hf(openclip_path: str) -> str:
    hf = te_path_to_hf(openclip_path)
    if hf is None:
        raise ValueError(f"no HF name for {openclip_path}")
    return hf


def _linear_like(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1))


def random_lora(targets: Iterable[Target], seed: int, *, rank: int = RANK,
                strength: float = STRENGTH) -> dict[str, np.ndarray]:
    """Seeded rank-`rank` kohya tensors for `targets` (fp16; alpha = rank): same arguments, same bytes."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for target in targets:
        out_features, in_features = target.shape[0], target.shape[1]
        down = rng.standard_normal((rank, in_features)) / np.sqrt(in_features)
        # up @ down @ x has entries ~ strength / sqrt(fan_in) per unit input, like strength × a weight row
        up = rng.standard_normal((out_features, rank)) * strength / np.sqrt(rank)
        conv = len(target.shape) == 4
        tensors[f"{target.name}.lora_down.weight"] = _fp16(down[..., None, None] if conv else down)
        tensors[f"{target.name}.lora_up.weight"] = _fp16(up[..., None, None] if conv else up)
        tensors[f"{target.name}.alpha"] = np.asarray(float(rank), dtype=np.float16)
    return tensors


def _fp16(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.astype(np.float16))


def restrict(tensors: Mapping[str, np.ndarray], targets: Iterable[Target],
             blocks: Iterable[str]) -> dict[str, np.ndarray]:
    """The tensors of the modules whose block is in `blocks` (the same arrays: bit for bit what they were)."""
    keep = {target.name for target in targets if target.block in set(blocks)}
    return {key: value for key, value in tensors.items() if key.split(".", 1)[0] in keep}


def preset_blocks(preset: str, arch: str) -> set[str]:
    """The blocks (BASE included) a built-in preset gives weight 1 on `arch`; other weights must be 0 or 1."""
    weights = PresetBook.builtin().get(preset, arch)
    if any(value not in (0.0, 1.0) for value in weights.values()):
        raise ValueError(f"{preset} is not an on/off preset")
    return {block for block, value in weights.items() if value == 1.0}


def preset_vector(preset: str, arch: str) -> str:
    """The built-in preset's vector for `arch`'s family as a literal tag spec, e.g. `1,1,1,0,…` (17 values on SD1)."""
    vector = PresetBook.builtin().preset(preset).vectors[family_of(arch)]
    return ",".join(f"{value:g}" for value in vector)


def write_lora(path: Path, tensors: Mapping[str, np.ndarray], arch: str) -> Path:
    """Save `tensors` as a kohya LoRA (.safetensors with the usual ss_* metadata); returns `path`."""
    from safetensors.numpy import save_file

    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": str(RANK),
        "ss_base_model_version": get_arch(arch).ss_base_model_version,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    save_file(dict(tensors), str(temporary), metadata=metadata)
    temporary.replace(path)
    return path


GROUP: Mapping[str, tuple[str, str]] = {"sd1": ("OUTD", "lsouttd"), "sdxl": ("OUTALL", "lsoutall")}
"""Per arch, the block group of the restriction test and its LoRA's name: OUTD has no SDXL vector (LBW ships
none), so SDXL uses OUTALL."""
PLAIN_SEED = 1
SECOND_SEED = 2


@dataclass(frozen=True)
class LoraSet:
    """A host's test LoRAs: `plain` (every target), `group_lora` (plain restricted to `group`), `second`."""

    arch: str
    group: str
    group_lora: str
    files: Mapping[str, Path]
    plain: str = "lsplain"
    second: str = "lssecond"


def write_host_loras(lora_dir: Path, checkpoint: Path) -> LoraSet:
    """Write lsplain, the group LoRA (lsouttd on SD1) and lssecond for `checkpoint` into `lora_dir` (deterministic)."""
    arch, targets = lora_targets(checkpoint)
    group, group_lora = GROUP[arch]
    plain = random_lora(targets, PLAIN_SEED)
    tensors = {
        "lsplain": plain,
        group_lora: restrict(plain, targets, preset_blocks(group, arch)),
        "lssecond": random_lora(targets, SECOND_SEED),
    }
    files = {name: write_lora(Path(lora_dir) / f"{name}.safetensors", value, arch) for name, value in tensors.items()}
    return LoraSet(arch=arch, group=group, group_lora=group_lora, files=files)


_WRITTEN: dict[str, LoraSet] = {}


def host_loras(host: Any) -> LoraSet:
    """The test LoRAs of a running `hosts.RealHost`: written into its LoRA folder and listed by it once a session."""
    if host.name not in _WRITTEN:
        _WRITTEN[host.name] = write_host_loras(host.lora_dir, host.checkpoint)
        host.refresh_loras()
    return _WRITTEN[host.name]
