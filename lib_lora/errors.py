"""Typed errors raised by the core; the edges (UI, command line, WebUI glue) report them once."""

from __future__ import annotations

from .wording import echo, shorten


class LoraStudioError(Exception):
    """Base class of every error this project raises on purpose."""


class ModelLoadError(LoraStudioError):
    """A model could not be loaded or built; the message says which source and why."""


class HostError(LoraStudioError):
    """The host model is missing, of an unsupported kind, or in a state we cannot work with."""


class UnsupportedArchError(HostError):
    """The loaded model belongs to a family this code does not handle (e.g. SD3, Flux)."""


class LoraFormatError(LoraStudioError):
    """A LoRA file or one of its modules is unreadable, hostile or inconsistent; names the file and the key."""

    def __init__(self, reason: str, *, path: object = None, key: str | None = None) -> None:
        self.reason = reason
        self.path = path
        self.key = key
        where = ", ".join(part for part in (str(path) if path else "", f"key {echo(key)}" if key else "") if part)
        super().__init__(f"{where}: {reason}" if where else reason)


class LoraShapeError(LoraFormatError):
    """A module's delta weight does not fit the host module it maps to."""


class BlockWeightError(LoraStudioError):
    """A block-weight vector, preset or preset file is invalid; says what was expected and what was received."""


class PromptSyntaxError(LoraStudioError):
    """A `<lora:…>` tag is malformed; names the tag text and the problem."""

    def __init__(self, reason: str, *, tag: str | None = None) -> None:
        self.reason = reason
        self.tag = tag
        super().__init__(f"{shorten(tag)}: {reason}" if tag else reason)
