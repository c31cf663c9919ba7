"""`DatasetSession`: one page's caption-editing model, everything the Dataset tab does to a dataset, without gradio.

It holds the loaded Dataset, the caption texts being edited, the captions as they were on disk when loaded or
last saved (the `expected` of the conflict check), the EditHistory, the filter, the selected image and the
gallery and tag table pages. Its methods come in layers, one concern a module: browsing.py (filter, selection,
pages, batch edits, undo), loading.py (load, revert, rename repeats, reading the folder again after the tagger),
edits.py (one caption's tags and text, consolidation) and saving.py (saving, conflicts). Each action returns a
Markdown message (None: keep the last one) or raises a DatasetUIError whose text the page shows.
"""

from __future__ import annotations

from .edits import CaptionEdits
from .saving import CaptionSaving


class DatasetSession(CaptionEdits, CaptionSaving):
    """One page's dataset: what is loaded, edited, filtered, selected and saved. Not thread-safe: hold `lock`."""
