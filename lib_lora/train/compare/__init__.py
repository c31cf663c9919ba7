"""Choosing an epoch: compare saved LoRA files on the loaded model, recommend one file and strength, keep it.

files.py       CompareFile: a saved file's epoch, step and the validation loss its run wrote
words.py       COMPARE_HELP, the default strengths, reading strengths (no torch: the command line's help)
spec.py        CompareSpec (prompts, strengths, seed, size, what to analyze), checked on creation
similarity.py  samples vs training images: CLIP image embeddings where the host has them, else a documented
               colour-and-layout statistic
score.py       the combined score and the recommendation, with its reason
run.py         the grid (files × prompts × strengths) rendered through a LoraRenderer, the analyzer, loader checks
prepare.py     training images, validation losses measured on a folder, `run_comparison` (the whole of it)
keep.py        keep the chosen file under the run's name, move the others into `epochs/` (atomic, undone on failure)

No gradio here: the command line (cli_compare.py) and the Train tab (ui/train_compare.py) call these. The names
below are importable from this package and loaded on first use, so importing it costs nothing.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MAX_FILES": "files", "CompareError": "files", "CompareFile": "files", "common_run_name": "files",
    "describe_file": "files", "describe_files": "files",
    "COMPARE_HELP": "words", "DEFAULT_STRENGTHS": "words", "parse_strengths": "words", "strengths_text": "words",
    "CompareSpec": "spec",
    "FeatureStatistic": "similarity", "image_embedder": "similarity",
    "Candidate": "score", "Recommendation": "score", "Scored": "score", "recommend": "score",
    "score_candidates": "score",
    "CompareResult": "run", "FileRow": "run", "compare_files": "run", "file_losses": "run",
    "measure_losses": "prepare", "reference_images": "prepare", "run_comparison": "prepare",
    "EPOCHS_FOLDER": "keep", "KeepPlan": "keep", "apply_keep": "keep", "plan_keep": "keep",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
