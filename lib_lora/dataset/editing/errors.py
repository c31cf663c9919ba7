"""The errors of caption editing: an action refused, and an action that needs asking twice."""

from __future__ import annotations

from ...errors import LoraStudioError


class DatasetUIError(LoraStudioError):
    """The session cannot do what was asked (nothing loaded, a stale chip, tagging running, ...); says why."""


class ConfirmationNeeded(DatasetUIError):
    """An action would discard unsaved edits; doing the same action again confirms it."""
