"""Caption editing without a UI: the DatasetSession the Dataset tab drives (see session.py)."""

from __future__ import annotations

from ...wording import code
from .browsing import FREQUENCY_ROWS, PAGE_SIZE
from .errors import ConfirmationNeeded, DatasetUIError
from .session import DatasetSession

__all__ = ["FREQUENCY_ROWS", "PAGE_SIZE", "ConfirmationNeeded", "DatasetSession", "DatasetUIError", "code"]
