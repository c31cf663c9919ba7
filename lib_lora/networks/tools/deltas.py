"""What the network tools share: their error, rank rules with sd-scripts' meanings, SVD factors, ΔW shapes,
output-path checks and the metadata of derived files."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...errors import LoraStudioError
from ...file_names import check_output_files, check_writable_folder
from ..files import SAFETENSORS_SUFFIXES
from ..formats.base import NetworkModule
from ..metadata import DYNAMIC, derived_file_metadata

MIN_SINGULAR_VALUE = 1e-6
"""As sd-scripts: a ΔW whose largest singular value is at most this counts as zero and gets rank 1."""
RULES = ("rank", "sv_ratio", "sv_fro", "sv_cumulative")


class NetworkToolError(LoraStudioError):
    """A network tool cannot do what it was asked: bad options, a module it cannot convert, an unsafe output."""


@dataclass(frozen=True)
class RankRule:
    """How each module's new rank is chosen; exactly one field is set (sd-scripts resize_lora's meanings).

    rank: that rank. sv_ratio R: keep the singular values s_i >= s_max / R. sv_fro F: the smallest r with
    sqrt(Σ_{i<r} s_i²) / sqrt(Σ s_i²) >= F. sv_cumulative C: the smallest r with Σ_{i<r} s_i / Σ s_i >= C.
    The result is then capped by the module's own rank (`choose`'s cap) and is at least 1.
    """

    rank: int | None = None
    sv_ratio: float | None = None
    sv_fro: float | None = None
    sv_cumulative: float | None = None

    def __post_init__(self) -> None:
        given = [name for name in RULES if getattr(self, name) is not None]
        if len(given) != 1:
            raise NetworkToolError(f"give exactly one of {', '.join(RULES)}; got {', '.join(given) or 'none'}")
        value = getattr(self, given[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise NetworkToolError(f"{given[0]} must be a finite number, got {value!r}")
        if self.rank is not None and not (isinstance(self.rank, int) and self.rank >= 1):
            raise NetworkToolError(f"rank must be an integer >= 1, got {self.rank!r}")
        if self.sv_ratio is not None and self.sv_ratio < 1:
            raise NetworkToolError(f"sv_ratio must be >= 1 (keeps s >= s_max / ratio), got {self.sv_ratio}")
        for name in ("sv_fro", "sv_cumulative"):
            fraction = getattr(self, name)
            if fraction is not None and not 0 < fraction <= 1:
                raise NetworkToolError(f"{name} must be a fraction in (0, 1], got {fraction}")

    @property
    def method(self) -> str:
        """The name of the field that is set."""
        return next(name for name in RULES if getattr(self, name) is not None)

    def describe(self) -> str:
        """E.g. "rank 4" or "sv_fro 0.9"."""
        return f"{self.method} {getattr(self, self.method)}"

    def choose(self, singular_values: Tensor, cap: int) -> int:
        """The rank to keep of a ΔW with these singular values (descending), between 1 and min(cap, their count)."""
        s = singular_values.detach().to("cpu", torch.float64)
        limit = max(1, min(cap, s.numel()))
        if s.numel() == 0 or float(s[0]) <= MIN_SINGULAR_VALUE:
            return 1
        if self.rank is not None:
            chosen = self.rank
        elif self.sv_ratio is not None:
            chosen = int((s >= s[0] / self.sv_ratio).sum())
        elif self.sv_fro is not None:
            chosen = _first_reaching(torch.cumsum(s**2, 0) / (s**2).sum(), self.sv_fro**2)
        else:
            chosen = _first_reaching(torch.cumsum(s, 0) / s.sum(), float(self.sv_cumulative or 0))
        return max(1, min(chosen, limit))


def _first_reaching(fractions: Tensor, target: float) -> int:
    """The smallest r with fractions[r-1] >= target (len + 1 when rounding keeps the last just below it)."""
    return int(torch.searchsorted(fractions, torch.tensor([target], dtype=fractions.dtype))[0]) + 1


@dataclass(frozen=True)
class LowRank:
    """matrix ≈ up @ down (float32, up = U_r·diag(s_r), down = V_rᵀ); `singular_values` are all of the matrix's."""

    up: Tensor
    down: Tensor
    singular_values: Tensor

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def fro_retained(self) -> float:
        """sqrt(Σ_{i<r} s_i²) / sqrt(Σ s_i²): the share of ΔW's Frobenius norm kept (1.0 for a zero ΔW)."""
        squares = self.singular_values.to(torch.float64) ** 2
        total = float(squares.sum())
        return 1.0 if total == 0 else math.sqrt(float(squares[: self.rank].sum()) / total)


def low_rank(matrix: Tensor, rule: RankRule, cap: int | None = None) -> LowRank:
    """The best (Eckart–Young) factors of a 2-D `matrix` at the rank `rule` picks, capped by `cap`.

    The SVD runs in float64 on CPU and float32 elsewhere; the factors come back in float32 on the same device.
    """
    work = matrix.detach().to(torch.float64 if matrix.device.type == "cpu" else torch.float32)
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    rank = rule.choose(s, min(work.shape) if cap is None else cap)
    up = (u[:, :rank] * s[:rank]).to(torch.float32)
    return LowRank(up=up, down=vh[:rank].to(torch.float32).contiguous(), singular_values=s.to("cpu"))


# --- ΔW shapes --------------------------------------------------------------------------------------------------

_CONV3X3_KEY = re.compile(r"lora_unet_.*_(?:conv[12]?|in_layers_2|out_layers_3|op|conv_in|conv_out|input_blocks_0_0"
                          r"|out_2)")
_CONV1X1_KEY = re.compile(r"lora_unet_.*_(?:conv_shortcut|skip_connection)")


def natural_shape(key: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The layer shape of a module's ΔW: as computed when it has a kernel, else [out, in], except that a flattened
    [out, in·k·k] of a module whose kohya name is a 3×3 (or 1×1) UNet conv becomes [out, in, 3, 3] (or [out, in, 1, 1]).

    LoHa and LoKr store conv factors flattened, so the kernel comes from the name; proj_in/proj_out (1×1 conv in
    SD1, linear in SD2/SDXL) stay 2-D, which our loader and A1111's merge both reshape to the layer.
    """
    shape = tuple(shape)
    if len(shape) != 2:
        return shape
    out_dim, columns = shape
    if _CONV3X3_KEY.fullmatch(key) and columns % 9 == 0:
        return (out_dim, columns // 9, 3, 3)
    if _CONV1X1_KEY.fullmatch(key):
        return (out_dim, columns, 1, 1)
    return shape


def module_delta(module: NetworkModule, device: torch.device | str | None = None) -> Tensor:
    """A module's unscaled ΔW (float32) in its natural shape, a flattened conv given its kernel back."""
    raw = module.unscaled_delta(device)
    return raw.reshape(natural_shape(module.key, raw.shape))


def max_delta_rank(module: NetworkModule, shape: tuple[int, ...]) -> int:
    """The most rank the module's ΔW can have: a LoRA's own rank, else the smaller side of the flattened matrix."""
    bound = min(shape[0], math.prod(shape[1:]))
    return min(module.rank or bound, bound) if module.format == "lora" else bound


def factors_to_lora(lowrank: LowRank, shape: tuple[int, ...], alpha: float, dtype: torch.dtype) -> dict[str, Tensor]:
    """kohya tensors for a low-rank ΔW of layer `shape`: down [r, in(, kh, kw)], up [out, r(, 1, 1)], alpha."""
    rank = lowrank.rank
    up_shape = (shape[0], rank, *([1] * (len(shape) - 2)))
    return {
        "lora_down.weight": lowrank.down.reshape(rank, *shape[1:]).to("cpu", dtype).contiguous(),
        "lora_up.weight": lowrank.up.reshape(up_shape).to("cpu", dtype).contiguous(),
        "alpha": torch.tensor(float(alpha), dtype=dtype),
    }


def bias_delta_tensors(module: NetworkModule, multiplier: float = 1.0) -> dict[str, Tensor]:
    """{"diff_b": the layer-bias delta × multiplier} when the module has one, else {} (A1111's LoRA type ignores it)."""
    bias = module.bias_delta(multiplier)
    return {} if bias is None else {"diff_b": bias.to("cpu").contiguous()}


def storage_dtype(module: NetworkModule) -> torch.dtype:
    """The floating dtype the module's factors are stored in (float32 when it has none)."""
    for suffix, tensor in module.tensors.items():
        if tensor.is_floating_point() and suffix not in ("alpha", "scale"):
            return tensor.dtype
    return torch.float32


# --- outputs ----------------------------------------------------------------------------------------------------


def check_output_path(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], *,
                      overwrite: bool = False) -> Path:
    """`out` as a Path once it is safe to write: a .safetensors in an existing folder that can be written, a name
    its file system holds, none of `inputs`, and new unless `overwrite`; raises NetworkToolError (FileNameError for
    the name and the folder) saying which rule it breaks. Writers keep what they replace with `backups.replacing`."""
    out = Path(out)
    if out.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise NetworkToolError(f"{out}: outputs are written as .safetensors; give a name ending in .safetensors")
    check_output_files([out], option="--output", value=out)
    check_writable_folder(out.parent, option="--output", value=out)  # not under a file, and writable
    if not out.parent.is_dir():
        raise NetworkToolError(f"{out}: the folder {out.parent} does not exist")
    for source in inputs:
        source = Path(source)
        same = out.resolve() == source.resolve()
        if not same and out.exists() and source.exists():
            same = os.path.samefile(out, source)
        if same:
            raise NetworkToolError(f"{out}: refusing to overwrite an input file; choose another output name")
    if out.is_dir():
        raise NetworkToolError(f"{out}: is a folder, not a file")
    if out.exists() and not overwrite:
        raise NetworkToolError(f"{out}: already exists; refusing to overwrite it (use --force to replace it)")
    return out


def derived_metadata(
    source: Mapping[str, str],
    *,
    arch: str | None,
    ranks: Iterable[int],
    alphas: Iterable[float],
    note: str,
    plain_lora: bool = False,
    output_name: str = "",
    sd_model_name: str | None = None,
    merge: Mapping[str, object] | None = None,
    merged_from: Sequence[str] | None = None,
) -> dict[str, str]:
    """Metadata for a file a tool made from `source`'s (`derived_file_metadata`): the new dim and alpha are the
    modules' own, or "Dynamic" when they differ (as sd-scripts); NetworkToolError when there are no modules."""
    rank_set, alpha_set = sorted(set(ranks)), sorted(set(alphas))
    if not rank_set or not alpha_set:
        raise NetworkToolError("the result holds no modules; nothing to write")
    return derived_file_metadata(
        source, arch=arch, dim=int(rank_set[0]) if len(rank_set) == 1 else DYNAMIC,
        alpha=float(alpha_set[0]) if len(alpha_set) == 1 else DYNAMIC, base_dim=max(rank_set),
        base_alpha=max(max(alpha_set), 0.0), note=note, plain_lora=plain_lora, output_name=output_name,
        sd_model_name=sd_model_name, merge=merge, merged_from=merged_from)
