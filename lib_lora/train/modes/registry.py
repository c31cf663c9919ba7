"""The ordered registry of training modes (the names are ModeConfig's `training_mode` values)."""

from __future__ import annotations

from collections.abc import Callable

from .base import DiscardedOutputs, TrainingMode

__all__ = ["MODES", "DiscardedOutputs", "TrainingMode", "mode_for"]


def _lora() -> TrainingMode:
    from .lora import LoraMode

    return LoraMode()


def _slider() -> TrainingMode:
    from .slider import SliderMode

    return SliderMode()


def _difference() -> TrainingMode:
    from .difference import DifferenceMode

    return DifferenceMode()


def _rounds() -> TrainingMode:
    from .rounds import RoundsMode

    return RoundsMode()


MODES: dict[str, Callable[[], TrainingMode]] = {"lora": _lora, "slider": _slider, "difference": _difference,
                                                 "rounds": _rounds}
"""Mode name → a factory of its TrainingMode, in config.MODE_NAMES' order."""


def mode_for(name: str) -> TrainingMode:
    """A fresh TrainingMode for `name` (one of MODE_NAMES; the config has checked it)."""
    return MODES[name]()
