"""Typed errors of the training package: bad settings (ConfigError) and problems while a run goes (TrainingError)."""

from __future__ import annotations

from lib_lora.errors import LoraStudioError
from lib_lora.wording import echo


class ConfigError(LoraStudioError):
    """A training setting is invalid; names the setting (sd-scripts' name), the value received and why."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key} = {echo(value)}: {reason}")


class TrainingError(LoraStudioError):
    """A training run cannot go on (data unreadable, loss not finite, host in the wrong state, ...)."""
