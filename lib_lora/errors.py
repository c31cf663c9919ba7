"""Typed errors raised by the core; the edges (UI, command line, WebUI glue) report them once."""

from __future__ import annotations


class LoraStudioError(Exception):
    """Base class of every error this project raises on purpose."""


class ModelLoadError(LoraStudioError):
    """A model could not be loaded or built; the message says which source and why."""


class HostError(LoraStudioError):
    """The host model is missing, of an unsupported kind, or in a state we cannot work with."""


class UnsupportedArchError(HostError):
    """The loaded model belongs to a family this code does not handle (e.g. SD3, Flux)."""
