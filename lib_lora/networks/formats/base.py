"""The one network-module interface: a type rebuilds its raw ΔW; this base adds scale, bias, DoRA and the multiplier.

Conventions follow kohya/A1111 for scale (alpha / rank, 1.0 when either is missing; a `scale` tensor wins) and
lycoris-lora 4.x for DoRA (`dora_scale` per output row `[out,1,…]` or per input column `[1,in,…]`, told apart by
its shape; norm + float32 eps; the multiplier interpolates the DoRA ratio, so a multiplier of 0 still leaves
W + ΔW·scale, exactly as LyCORIS computes it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...errors import LoraFormatError, LoraShapeError

_EPS = torch.finfo(torch.float32).eps
SCALAR_SUFFIXES = frozenset({"alpha", "scale"})


def _trim_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape without trailing 1-sized kernel dims: [o,i,1,1] -> [o,i]."""
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


class NetworkModule(ABC):
    """One kohya module (`key`) of a network file: its tensors by suffix, and the maths to turn them into ΔW."""

    format: ClassVar[str]
    own_suffixes: ClassVar[frozenset[str]]  # the type's own tensors; any one of them claims the module
    common_suffixes: ClassVar[frozenset[str]] = frozenset({"alpha", "scale", "dora_scale", "bias", "diff_b"})

    def __init__(self, key: str, tensors: Mapping[str, Tensor]) -> None:
        self.key = key
        self.tensors: dict[str, Tensor] = dict(tensors)
        self.alpha: float | None = self._scalar("alpha")
        self.dora_scale: Tensor | None = self.tensors.get("dora_scale")
        self._check_complete()

    @classmethod
    def suffixes(cls) -> frozenset[str]:
        """Every tensor suffix a module of this type may carry."""
        return cls.own_suffixes | cls.common_suffixes

    # -- what a type provides -------------------------------------------------------------------------------
    @abstractmethod
    def _check_complete(self) -> None:
        """Raise LoraFormatError when a required tensor is missing (e.g. lora_up without lora_down)."""

    @abstractmethod
    def _check_shapes(self) -> None:
        """Raise LoraFormatError when the factors' shapes do not fit each other."""

    @property
    @abstractmethod
    def rank(self) -> int | None:
        """The low rank that alpha is divided by; None for types without one (full, LoKr with two full factors)."""

    @abstractmethod
    def raw_delta(self, device: torch.device | str | None = None) -> Tensor:
        """The unscaled ΔW in float32, in the factors' natural shape ([out,in], [out,in,kh,kw] or [out,in·kh·kw])."""

    # -- shared -------------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The finer type name for reports: the format, except LoRA reports "locon" for k×k conv factors."""
        return self.format

    @property
    def scale(self) -> float:
        """The `scale` tensor if present, else alpha / rank when both are known, else 1.0."""
        explicit = self._scalar("scale")
        if explicit is not None:
            return explicit
        rank = self.rank
        return self.alpha / rank if self.alpha is not None and rank else 1.0

    def unscaled_delta(self, device: torch.device | str | None = None) -> Tensor:
        """`raw_delta` plus A1111's weight-shaped `bias` term (added before scaling); float32, natural shape."""
        raw = self.raw_delta(device)
        weight_bias = self.tensors.get("bias")
        if weight_bias is not None and weight_bias.dim() >= 2:
            raw = raw + self._fit(weight_bias.to(raw.device, torch.float32), tuple(raw.shape), "bias")
        return raw

    def delta_weight(self, base_weight: Tensor, multiplier: float = 1.0) -> Tensor:
        """What to add to `base_weight` (float32, its exact shape) for this module at `multiplier`."""
        base = base_weight.detach().to(torch.float32)
        delta = self._fit(self.unscaled_delta(base.device), tuple(base.shape)) * self.scale
        if self.dora_scale is None:
            return delta * multiplier
        return self._decompose(base, delta, self.dora_scale.to(base.device, torch.float32), multiplier)

    def check_fits(self, target_shape: tuple[int, ...] | torch.Size) -> None:
        """Raise LoraShapeError unless ΔW (and dora_scale) fit a weight of `target_shape`; computes nothing."""
        shape = tuple(target_shape)
        self._fit(self.raw_delta("meta"), shape)
        dora = self.dora_scale
        if dora is not None:
            n = dora.numel()
            fits_rows = dora.shape[0] == n == shape[0]
            fits_columns = len(shape) >= 2 and dora.dim() >= 2 and dora.shape[1] == n == shape[1]
            if not (fits_rows or fits_columns):
                raise LoraShapeError(f"dora_scale {list(dora.shape)} fits neither the rows nor the columns of the "
                                     f"target weight {list(shape)}", key=self.key)

    def low_rank_factors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor] | None:
        """(up·scale [out,r], down [r,in·kh·kw]) in float32 when ΔW·scale is exactly up @ down, else None.

        Lets a merge fold several LoRAs on one weight into a single matrix product; types that are no plain
        low-rank product (LoHa, LoKr, full, Tucker, DoRA, a weight-shaped bias) return None.
        """
        return None

    def bias_delta(self, multiplier: float = 1.0) -> Tensor | None:
        """What to add to the layer's bias (LyCORIS `diff_b`, or a 1-D `bias`), float32; None when there is none."""
        bias = self.tensors.get("diff_b")
        if bias is None:
            bias = self.tensors.get("bias")
            if bias is not None and bias.dim() != 1:
                bias = None
        return None if bias is None else bias.to(torch.float32) * multiplier

    def validate(self) -> None:
        """Raise LoraFormatError (naming the key) for bad alpha/rank, NaN/Inf, or factors that do not fit."""
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise self._error(f"alpha must be finite and > 0, got {self.alpha}")
        for suffix, tensor in self.tensors.items():
            if not (tensor.is_floating_point() or suffix in SCALAR_SUFFIXES):
                raise self._error(f"{suffix} has non-float dtype {tensor.dtype}")
            if not torch.isfinite(tensor).all():
                raise self._error(f"{suffix} contains NaN or Inf")
        rank = self.rank
        if rank is not None and rank < 1:
            raise self._error(f"rank must be >= 1, got {rank}")
        bias = self.tensors.get("bias")
        if "diff_b" in self.tensors and bias is not None and bias.dim() == 1:
            raise self._error("has both diff_b and a 1-D bias for the same layer bias")
        if self.dora_scale is not None and self.dora_scale.dim() < 2:
            raise self._error(f"dora_scale must be [out,1,…] or [1,in,…], got {list(self.dora_scale.shape)}")
        self._check_shapes()

    # -- helpers ------------------------------------------------------------------------------------------------
    def _t(self, suffix: str, device: torch.device | str | None = None) -> Tensor:
        return self.tensors[suffix].to(device=device, dtype=torch.float32)

    def _error(self, reason: str) -> LoraFormatError:
        return LoraFormatError(reason, key=self.key)

    def _require(self, *suffixes: str) -> None:
        missing = [suffix for suffix in suffixes if suffix not in self.tensors]
        if missing:
            raise self._error(f"{self.format} module has {sorted(self.tensors)} but lacks {missing}")

    def _scalar(self, suffix: str) -> float | None:
        tensor = self.tensors.get(suffix)
        if tensor is None:
            return None
        if tensor.numel() != 1:
            raise self._error(f"{suffix} must hold one number, got shape {list(tensor.shape)}")
        return float(tensor.item())

    def _fit(self, delta: Tensor, shape: tuple[int, ...], what: str = "delta weight") -> Tensor:
        """Reshape between linear [o,i] and 1×1 conv [o,i,1,1], or a flattened [o,i·k·k] to a conv; else raise."""
        got = tuple(delta.shape)
        if got == shape:
            return delta
        same_rows = len(got) >= 2 and len(shape) >= 2 and got[0] == shape[0] and delta.numel() == math.prod(shape)
        if same_rows and (_trim_ones(got) == _trim_ones(shape) or len(got) == 2):
            return delta.reshape(shape)
        raise LoraShapeError(f"{what} does not fit its target: expected {list(shape)}, got {list(got)}", key=self.key)

    def _decompose(self, base: Tensor, delta: Tensor, dora: Tensor, multiplier: float) -> Tensor:
        """DoRA as lycoris-lora: W' = (W+ΔW)·(m·(d/‖W+ΔW‖ − 1) + 1), norm per out row or in column; returns W' − W."""
        merged = base + delta
        shape, n = tuple(base.shape), dora.numel()
        if dora.dim() >= 2 and dora.shape[0] == n == shape[0]:
            norm = merged.reshape(shape[0], -1).norm(dim=1).reshape(shape[0], *[1] * (len(shape) - 1))
        elif dora.dim() >= 2 and len(shape) >= 2 and dora.shape[1] == n == shape[1]:
            norm = merged.transpose(0, 1).reshape(shape[1], -1).norm(dim=1)
            norm = norm.reshape(1, shape[1], *[1] * (len(shape) - 2))
        else:
            raise LoraShapeError(f"dora_scale {list(dora.shape)} fits neither the rows nor the columns of the "
                                 f"target weight {list(shape)}", key=self.key)
        ratio = dora.reshape(norm.shape) / (norm + _EPS)
        if multiplier != 1:
            ratio = multiplier * (ratio - 1) + 1
        return merged * ratio - base


@dataclass(frozen=True)
class ModuleType:
    """A registry entry: claims a module whose tensors include one of its own suffixes, and builds it."""

    name: str
    module: type[NetworkModule]

    @property
    def suffixes(self) -> frozenset[str]:
        """Every tensor suffix this type consumes."""
        return self.module.suffixes()

    def create(self, key: str, tensors: Mapping[str, Tensor]) -> NetworkModule | None:
        """The module built from the suffixes this type consumes, or None when none of its own are present."""
        if not self.module.own_suffixes & tensors.keys():
            return None
        return self.module(key, {suffix: t for suffix, t in tensors.items() if suffix in self.suffixes})
