"""What a LoRA file holds, from the file alone (no model): format, family, modules per block, keys no model has.

Family: the metadata's (ss_base_model_version, modelspec.architecture, ss_v2), else inferred from the keys
(`families.infer_arch_from_keys`). Unmatched keys, without a model to match against, are those that are no module
of any model of that family: `block_of_key` places them in no block of the family (e.g. `input_blocks_10` on SDXL, a
text-encoder prefix the family lacks such as `lora_te2_` on SD1) or their name is no module name kohya or
LyCORIS give a UNet or CLIP text encoder (`KNOWN_UNET_KEY`, `KNOWN_TE_KEY`). A key can pass both and still be
missing from a particular model (a deeper transformer than it has); only matching against a model tells that.
With `loaders=True` the loader check (`networks.loaders`) adds what each program's loader would apply of the file.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...arch import ARCHS, SD1
from ...unet_blocks import BASE, block_of_key
from ..families import infer_arch_from_keys
from ..formats.base import NetworkModule
from ..loaded import load_network
from ..metadata import arch_from_metadata, parse_metadata

if TYPE_CHECKING:
    from ..loaders import LoaderCheck

TOP_TAGS = 20

_ATTENTION = (r"(?:norm|proj_in|proj_out|transformer_blocks_\d+_(?:attn[12]_(?:to_q|to_k|to_v|to_out_0)"
              r"|ff_net_0_proj|ff_net_2|norm[123]))")
_UNET_NAMES = (
    rf"(?:down_blocks_\d+|up_blocks_\d+|mid_block)_attentions_\d+_{_ATTENTION}",
    r"(?:down_blocks_\d+|up_blocks_\d+|mid_block)_resnets_\d+_(?:norm[12]|conv[12]|time_emb_proj|conv_shortcut)",
    r"down_blocks_\d+_downsamplers_0_conv|up_blocks_\d+_upsamplers_0_conv",
    r"conv_in|conv_out|conv_norm_out|time_embedding_linear_[12]|add_embedding_linear_[12]",
    rf"(?:input_blocks_\d+_1|middle_block_1|output_blocks_\d+_1)_{_ATTENTION}",
    r"(?:input_blocks_\d+_0|middle_block_[02]|output_blocks_\d+_0)_(?:in_layers_[02]|out_layers_[03]|emb_layers_1"
    r"|skip_connection)",
    r"input_blocks_\d+_0_op|output_blocks_\d+_[12]_conv|input_blocks_0_0|time_embed_[02]|label_emb_0_[02]|out_[02]",
)
KNOWN_UNET_KEY = re.compile(rf"lora_unet_(?:{'|'.join(_UNET_NAMES)})")
"""Every UNet module name kohya/LyCORIS write, in the diffusers and the LDM spelling."""
KNOWN_TE_KEY = re.compile(r"(?P<prefix>lora_te[12]?)_(?:text_model_(?:encoder_layers_\d+_(?:self_attn_[qkv]_proj"
                          r"|self_attn_out_proj|mlp_fc[12]|layer_norm[12])|embeddings_(?:token|position)_embedding"
                          r"|final_layer_norm)|text_projection)")
"""Every text-encoder module name (HF CLIP spelling, which kohya also uses for open_clip encoders)."""


@dataclass(frozen=True)
class ModuleInfo:
    """One module: kohya name, block id (None: no block of the family), type, rank and alpha as stored."""

    key: str
    block: str | None
    kind: str
    rank: int | None
    alpha: float | None


@dataclass(frozen=True)
class NetworkInfo:
    """What `network_info` read; `to_json()` is the `lora info --json` object, `to_text()` the human summary."""

    path: Path
    format: str
    arch: str | None
    arch_source: str | None  # "metadata", "keys" or None
    modules: tuple[ModuleInfo, ...]
    unmatched: tuple[str, ...]
    metadata: dict[str, object]
    loaders: LoaderCheck | None = None
    """What each program's loader would apply (None: not checked)."""

    def to_json(self) -> dict[str, object]:
        """{"format", "arch", "modules": [{"key", "block", "rank", "alpha"}], "unmatched", "metadata"}, and
        "loaders" (`LoaderCheck.to_json()`) when checked."""
        data: dict[str, object] = {
            "format": self.format,
            "arch": self.arch,
            "modules": [{"key": m.key, "block": m.block, "rank": m.rank, "alpha": m.alpha} for m in self.modules],
            "unmatched": list(self.unmatched),
            "metadata": self.metadata,
        }
        if self.loaders is not None:
            data["loaders"] = self.loaders.to_json()
        return data

    def top_tags(self, count: int | None = TOP_TAGS) -> list[tuple[str, int]]:
        """The most frequent training tags (ss_tag_frequency summed over folders), most frequent first; all of
        them when `count` is None."""
        frequency = self.metadata.get("ss_tag_frequency")
        totals: Counter[str] = Counter()
        if isinstance(frequency, dict):
            for tags in frequency.values():
                if isinstance(tags, dict):
                    totals.update({str(t): n for t, n in tags.items() if type(n) is int})
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:count]

    def to_text(self) -> str:
        """Several lines: format, family, modules per block, rank/alpha summary, unmatched keys, top tags."""
        arch = f"{self.arch} (from {self.arch_source})" if self.arch else "unknown"
        lines = [f"file: {self.path}", f"format: {self.format}", f"arch: {arch}", f"modules: {len(self.modules)}"]
        blocks = Counter(m.block or "(none)" for m in self.modules)
        lines.append("per block: " + ", ".join(f"{block} {n}" for block, n in blocks.items()))
        lines.append(f"rank: {_summary([m.rank for m in self.modules])}")
        lines.append(f"alpha: {_summary([m.alpha for m in self.modules])}")
        kinds = Counter(m.kind for m in self.modules)
        if len(kinds) > 1:
            lines.append("types: " + ", ".join(f"{kind} {n}" for kind, n in kinds.items()))
        shown = ", ".join(self.unmatched[:10]) + (" …" if len(self.unmatched) > 10 else "")
        lines.append(f"unmatched: {len(self.unmatched)}" + (f" ({shown})" if self.unmatched else ""))
        for key in ("ss_output_name", "ss_sd_model_name", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                    "ss_steps", "ss_training_comment", "lora_studio_operation"):
            if key in self.metadata:
                lines.append(f"{key}: {self.metadata[key]}")
        tags = self.top_tags()
        lines.append("top tags: " + (", ".join(f"{tag} ({n})" for tag, n in tags) if tags else "(none)"))
        if self.loaders is not None:
            lines += ["loaders:", self.loaders.to_text()]
        return "\n".join(lines)


def _summary(values: list[int | float | None]) -> str:
    """"8", "4–32 (most often 8)" or "none" for a list of per-module values."""
    known = [v for v in values if v is not None]
    missing = len(values) - len(known)
    if not known:
        return "none stored"
    counts = Counter(known)
    text = (f"{_number(known[0])}" if len(counts) == 1 else
            f"{_number(min(known))}–{_number(max(known))} (most often {_number(counts.most_common(1)[0][0])})")
    return text + (f"; {missing} modules have none" if missing else "")


def _number(value: int | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def unmatched_keys(modules: Mapping[str, NetworkModule], arch: str | None) -> list[str]:
    """Keys that are no module of any model of `arch` (see the module docstring); any family when None."""
    family = ARCHS.get(arch or "", SD1)
    unmatched = []
    for key in modules:
        te = KNOWN_TE_KEY.fullmatch(key)
        if te is not None:
            if arch is not None and te["prefix"] not in family.te_prefixes:
                unmatched.append(key)
        elif block_of_key(key, family) in (None, BASE) or not KNOWN_UNET_KEY.fullmatch(key):
            unmatched.append(key)
    return unmatched


def network_info(path: str | os.PathLike[str], *, loaders: bool = False, loader_arch: str | None = None
                 ) -> NetworkInfo:
    """Read a LoRA file (validated, no model) and describe it; LoraFormatError names the file and key if broken.

    `loaders`: add the loader check, on `loader_arch` or else the file's own family.
    """
    network = load_network(path)
    from_metadata = arch_from_metadata(network.metadata)
    arch = from_metadata or infer_arch_from_keys(network.modules)
    family = ARCHS.get(arch or "", SD1)
    modules = tuple(
        ModuleInfo(key, block_of_key(key, family), module.kind, module.rank, module.alpha)
        for key, module in network.modules.items()
    )
    return NetworkInfo(
        path=Path(path),
        format=network.format,
        arch=arch,
        arch_source="metadata" if from_metadata else ("keys" if arch else None),
        modules=modules,
        unmatched=tuple(unmatched_keys(network.modules, arch)),
        metadata=parse_metadata(network.metadata),
        loaders=_loader_check(path, loader_arch or arch) if loaders else None,
    )


def _loader_check(path: str | os.PathLike[str], arch: str | None) -> LoaderCheck:
    from ..loaders import check_file

    return check_file(path, arch)
