"""Network-file tensors -> typed modules: an ordered registry of module types, each behind NetworkModule.

A state dict is grouped per kohya module (key split at its first "."), each group is claimed by the first type
in MODULE_TYPES that owns one of its suffixes, every tensor must be consumed, and every module is validated.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ...errors import LoraFormatError
from . import full, loha, lokr, lora
from .base import ModuleType, NetworkModule

__all__ = [
    "FORMATS",
    "MODULE_TYPES",
    "ModuleType",
    "NetworkModule",
    "detect_format",
    "group_by_module",
    "parse_modules",
    "to_state_dict",
]

MODULE_TYPES: tuple[ModuleType, ...] = (lora.MODULE_TYPE, loha.MODULE_TYPE, lokr.MODULE_TYPE, full.MODULE_TYPE)
# Most specific first: detect_format names a mixed file by the most specific kind any of its modules has.
FORMATS: tuple[str, ...] = ("dora", "lokr", "loha", "full", "locon", "lora")


def group_by_module(state_dict: Mapping[str, Tensor], *, path: object = None) -> dict[str, dict[str, Tensor]]:
    """Split each key at its first "." as A1111 does: `lora_unet_x.lora_up.weight` -> ("lora_unet_x", ...)."""
    groups: dict[str, dict[str, Tensor]] = {}
    for name, tensor in state_dict.items():
        module_key, dot, suffix = str(name).partition(".")
        if not dot or not module_key or not suffix:
            raise LoraFormatError("tensor name has no 'module.tensor' form", path=path, key=str(name))
        if not isinstance(tensor, Tensor):
            raise LoraFormatError(f"value is a {type(tensor).__name__}, not a tensor", path=path, key=str(name))
        groups.setdefault(module_key, {})[suffix] = tensor
    return groups


def _parse_one(key: str, tensors: dict[str, Tensor]) -> NetworkModule:
    tried = ", ".join(t.name for t in MODULE_TYPES)
    for module_type in MODULE_TYPES:
        module = module_type.create(key, tensors)
        if module is not None:
            break
    else:
        raise LoraFormatError(f"no module type accepts tensors {sorted(tensors)} (tried {tried})", key=key)
    leftover = sorted(set(tensors) - module_type.suffixes)
    if leftover:
        raise LoraFormatError(f"tensors {leftover} are not part of a {module_type.name} module (has "
                              f"{sorted(tensors)}; tried {tried})", key=key)
    module.validate()
    return module


def parse_modules(state_dict: Mapping[str, Tensor], *, path: object = None) -> dict[str, NetworkModule]:
    """Every module of the file as a validated NetworkModule; anything unknown, partial or broken raises."""
    modules: dict[str, NetworkModule] = {}
    for key, tensors in group_by_module(state_dict, path=path).items():
        try:
            modules[key] = _parse_one(key, tensors)
        except LoraFormatError as err:
            if path is None or err.path is not None:
                raise
            raise type(err)(err.reason, path=path, key=err.key) from err
    return modules


def detect_format(modules: Mapping[str, NetworkModule]) -> str:
    """The file's format: "dora" if any module has dora_scale, else the most specific kind any module has."""
    if not modules:
        raise LoraFormatError("the file holds no network modules")
    if any(module.dora_scale is not None for module in modules.values()):
        return "dora"
    kinds = {module.kind for module in modules.values()}
    return next(name for name in FORMATS if name in kinds)


def to_state_dict(modules: Mapping[str, NetworkModule]) -> dict[str, Tensor]:
    """The flat kohya state dict of `modules`, the same tensors under the same names (inverse of parse_modules)."""
    return {f"{key}.{suffix}": tensor for key, module in modules.items() for suffix, tensor in module.tensors.items()}
