"""The base of every trainable module: scale, multiplier, dropout, DoRA and the hook maths, written once.

A module adapts one host weight (a `Target`) without replacing or writing it: the network registers
`adjusted_output` as a forward hook, which returns output + Δ(x). An algorithm (network_lora/loha/lokr)
only says how its parameters build the unscaled ΔW, which tensors it saves under which kohya suffix, and
which of them LoRA+ speeds up. Parameters are float32 whatever the host's dtype; Δ is computed in float32
(or under the caller's autocast) and cast to the output's dtype.

Conventions: scale = alpha/dim (alpha 0 means dim, as sd-scripts); rank dropout and module dropout act only in
train mode; DoRA (LyCORIS `dora_wd`) rescales W+ΔW to a trained magnitude per output row (or input column) and
the hook adds W'−W, with the multiplier interpolating the ratio as lycoris-lora does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...networks.keys import Target
from ..errors import ConfigError

_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class ModuleSpec:
    """What one trainable module is built from (ranks, dropout, DoRA, LoKr factoring)."""

    target: Target
    dim: int
    alpha: float
    dropout: float | None = None
    rank_dropout: float | None = None
    module_dropout: float | None = None
    dora: bool = False
    dora_on_output: bool = True
    factor: int = -1
    decompose_both: bool = False
    full_matrix: bool = False


def apply_weight(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """`weight` applied to `x` the way `module` applies its own (linear, or conv2d with its stride/padding)."""
    if weight.dim() == 2:
        return F.linear(x, weight)
    if weight.dim() == 4:
        return F.conv2d(x, weight, stride=getattr(module, "stride", 1), padding=getattr(module, "padding", 0),
                        dilation=getattr(module, "dilation", 1), groups=getattr(module, "groups", 1))
    raise ConfigError("target", tuple(weight.shape), "only linear and 2-D convolution weights can be trained")


class TrainableModule(nn.Module, ABC):
    """One trainable adapter on one host weight; subclasses hold the factors (see module docstring)."""

    algo: ClassVar[str]
    plus_names: ClassVar[frozenset[str]] = frozenset()
    """Parameter names LoRA+ gives the larger learning rate (the factors on the output side)."""

    def __init__(self, spec: ModuleSpec, generator: torch.Generator) -> None:
        super().__init__()
        self.target = spec.target  # a plain attribute, not a submodule: the host module is never ours to save
        self.lora_name = spec.target.key
        self.shape: tuple[int, ...] = tuple(spec.target.shape)
        self.dim = spec.dim
        self.alpha = float(spec.alpha) if spec.alpha else float(spec.dim)
        self.neuron_dropout = spec.dropout or None
        self.rank_dropout = spec.rank_dropout or None
        self.module_dropout = spec.module_dropout or None
        self.dora_on_output = spec.dora_on_output
        self._build(spec, generator)
        if spec.dora:
            self.dora_scale = nn.Parameter(self._base_norm(spec.target.weight.detach().float()))
        else:
            self.dora_scale = None

    # -- what an algorithm provides ---------------------------------------------------------------------------
    @abstractmethod
    def _build(self, spec: ModuleSpec, generator: torch.Generator) -> None:
        """Create the factor parameters (float32, CPU) and initialise them so that ΔW starts at 0."""

    @abstractmethod
    def unscaled_delta(self) -> Tensor:
        """ΔW before alpha/dim, float32, in the target weight's shape."""

    @abstractmethod
    def factor_tensors(self) -> dict[str, Tensor]:
        """The factors under their kohya suffixes, in the layout our reader and LyCORIS use."""

    @abstractmethod
    def norm_pair(self) -> tuple[Tensor, Tensor]:
        """Two parameters whose scaling by √r each scales ΔW by r (for max-norm regularisation)."""

    @property
    def saved_alpha(self) -> float:
        """The alpha written to the file (LoKr with two full factors writes dim: its scale is 1)."""
        return self.alpha

    @property
    def scale(self) -> float:
        return self.saved_alpha / self.dim

    def delta_output(self, module: nn.Module, x: Tensor) -> Tensor:
        """Δ(x) = ΔW·scale applied to x; algorithms with a cheaper activation path override this."""
        return apply_weight(module, x, self.delta_weight().to(x.dtype))

    # -- shared -------------------------------------------------------------------------------------------------
    def delta_weight(self) -> Tensor:
        """ΔW·scale in the target's shape; in train mode rank dropout zeroes whole output rows (LyCORIS)."""
        delta = self.unscaled_delta() * self.scale
        if self.training and self.rank_dropout:
            keep = torch.rand(delta.shape[0], device=delta.device) > self.rank_dropout
            delta = delta * keep.to(delta.dtype).reshape(-1, *[1] * (delta.dim() - 1))
        return delta

    def adjusted_output(self, module: nn.Module, x: Tensor, output: Tensor, multiplier: float) -> Tensor:
        """What the hooked module returns: its output plus this module's change at `multiplier`."""
        if multiplier == 0.0 and self.dora_scale is None:
            return output
        if self.training and self.module_dropout and torch.rand(1).item() < self.module_dropout:
            return output
        h = x if torch.is_autocast_enabled(x.device.type) else x.to(torch.float32)
        if self.dora_scale is None:
            return self.add_delta(module, h, output, multiplier)
        delta = apply_weight(module, h, self.dora_delta(multiplier).to(h.dtype))
        return output + delta.to(output.dtype)

    def add_delta(self, module: nn.Module, x: Tensor, output: Tensor, multiplier: float) -> Tensor:
        """output + Δ(x)·multiplier (no DoRA); LoRA folds the add and the scales into its last product."""
        return output + (self.delta_output(module, x) * multiplier).to(output.dtype)

    def dora_delta(self, multiplier: float = 1.0) -> Tensor:
        """W'−W for DoRA: W' = (W+ΔW)·(m·(d/‖W+ΔW‖−1)+1), norms per output row or input column."""
        base = self.target.weight.detach().to(torch.float32)
        merged = base + self.delta_weight()
        ratio = self.dora_scale / (self._base_norm(merged) + _EPS)
        if multiplier != 1.0:
            ratio = multiplier * (ratio - 1) + 1
        return merged * ratio - base

    def _base_norm(self, weight: Tensor) -> Tensor:
        """‖weight‖ per output row ([out,1,…]) or per input column ([1,in,…]), kept differentiable."""
        ones = [1] * (weight.dim() - 1)
        if self.dora_on_output:
            return weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *ones)
        columns = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
        return columns.reshape(1, weight.shape[1], *ones[1:])

    def kohya_tensors(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """This module's tensors for a kohya file, on the CPU; alpha stays float32 so the scale is exact."""
        tensors = dict(self.factor_tensors())
        if self.dora_scale is not None:
            tensors["dora_scale"] = self.dora_scale
        out = {s: t.detach().to("cpu", dtype or t.dtype, copy=True).contiguous() for s, t in tensors.items()}
        out["alpha"] = torch.tensor(self.saved_alpha, dtype=torch.float32)
        return out

    def load_kohya_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Copy a file's tensors in (same suffixes and shapes; ConfigError otherwise) and adopt its alpha.

        Taking the file's alpha keeps the loaded delta exactly what the file holds.
        """
        own = self.kohya_tensors()
        wanted, got = set(own) - {"alpha"}, set(tensors) - {"alpha"}
        if wanted != got:
            raise ConfigError("network_weights", self.lora_name, f"has {sorted(got)}, this network's "
                                                                 f"{self.algo} module needs {sorted(wanted)}")
        params = dict(self.factor_parameters())
        if self.dora_scale is not None:
            params["dora_scale"] = self.dora_scale
        for suffix, param in params.items():
            source = tensors[suffix]
            if tuple(source.shape) != tuple(param.shape):
                raise ConfigError("network_weights", self.lora_name,
                                  f"{suffix} is {list(source.shape)}, this network has {list(param.shape)} (set "
                                  "dim_from_weights = true to take the ranks from the file)")
        with torch.no_grad():
            for suffix, param in params.items():
                param.copy_(tensors[suffix].to(param.device, param.dtype))
        if "alpha" in tensors:
            alpha = float(tensors["alpha"].float().item())
            if not math.isfinite(alpha) or alpha <= 0:
                raise ConfigError("network_weights", self.lora_name, f"alpha must be a positive number, got {alpha}")
            self.alpha = alpha

    def factor_parameters(self) -> dict[str, nn.Parameter]:
        """The factor parameters under their kohya suffixes (default: parameter name with '.' for '_weight')."""
        return {self.suffix_of(name): p for name, p in self.named_parameters() if name != "dora_scale"}

    @staticmethod
    def suffix_of(param_name: str) -> str:
        """The kohya suffix of a parameter: `lora_down` -> `lora_down.weight`; LyCORIS names are kept."""
        return f"{param_name}.weight" if param_name in ("lora_down", "lora_up") else param_name

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[bool, float]:
        """Scale ΔW down to norm ≤ max_norm (sd-scripts' rule); (whether it was scaled, the norm after)."""
        norm = (self.unscaled_delta() * self.scale).norm()
        clamped = norm.clamp(min=max_norm / 2)
        desired = clamped.clamp(max=max_norm)
        ratio = float((desired / clamped).item())
        if ratio != 1.0:
            for param in self.norm_pair():
                param.mul_(math.sqrt(ratio))
        return ratio != 1.0, float(norm.item()) * ratio
