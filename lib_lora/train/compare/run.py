"""One comparison: every file rendered at every strength and prompt on the loaded model, scored, analyzed.

`compare_files` renders the grid through a LoraRenderer (a LoraSession: `<lora:name:strength>` tags on the
host's own `generate`), rows = files in training order, columns = prompts × strengths, each prompt at its fixed
seed; measures each (file, strength)'s similarity to the training images; takes each file's validation loss (given,
or the one its run wrote when all were measured alike); recommends one file and strength (score.py); ranks the
blocks of the recommended file (or all, or none) with the block analyzer; checks every file's keys against each
program's loader. Progress per image, cancel between and within images (JobControl).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ...blocks.analyze import AnalyzeSpec, analyze_blocks
from ...blocks.grid_image import compose_grid
from ...blocks.rendering import render_image
from ...blocks.syntax import LoraCall, format_call
from .files import CompareFile, comparable_losses
from .score import Candidate, Recommendation, recommend
from .similarity import ImageEmbedder, similarity
from .spec import CompareSpec, strengths_text

if TYPE_CHECKING:
    import numpy as np

    from ...blocks.grid import LoraRenderer
    from ...jobs import JobControl
    from ...networks.loaders import LoaderCheck

TOP_BLOCKS = 3
COMPARE_SETTINGS_KEY = "lora_studio_compare"
"""The PNG text chunk holding the comparison's result as JSON."""


@dataclass(frozen=True)
class FileRow:
    """One file's measurements: validation loss, similarity per strength, top blocks (None: not analyzed), the
    analyzer's summary and the loader check (or why it could not run)."""

    file: CompareFile
    validation_loss: float | None
    similarities: tuple[float, ...]
    top_blocks: tuple[str, ...] | None = None
    analysis: str = ""
    loaders: LoaderCheck | str | None = None


@dataclass(frozen=True)
class CompareResult:
    """The grid, each file's row, the recommendation and how things were measured."""

    spec: CompareSpec
    rows: tuple[FileRow, ...]
    recommendation: Recommendation
    grid: Image.Image
    embedder: str
    loss_source: str
    seconds: float
    path: Path | None = None

    @property
    def best(self) -> FileRow:
        return self.rows[self.recommendation.best.candidate.file]

    @property
    def best_strength(self) -> float:
        return self.recommendation.best.candidate.strength

    def to_json(self) -> dict[str, Any]:
        scores = {(s.candidate.file, s.candidate.strength): s.score for s in self.recommendation.scored}
        return {
            "recommended": {"file": str(self.best.file.path), "strength": self.best_strength,
                            "score": self.recommendation.best.score, "reason": self.recommendation.reason},
            "similarity": self.embedder, "validation_loss": self.loss_source, "seconds": round(self.seconds, 3),
            "files": [{"file": str(row.file.path), "label": row.file.label, "epoch": row.file.epoch,
                       "step": row.file.step, "validation_loss": row.validation_loss,
                       "similarity": dict(zip(map(str, self.spec.strengths), row.similarities)),
                       "score": {str(s): scores[(index, s)] for s in self.spec.strengths},
                       "top_blocks": list(row.top_blocks) if row.top_blocks is not None else None,
                       "loaders": _loaders_json(row.loaders)}
                      for index, row in enumerate(self.rows)],
            "grid": str(self.path) if self.path else None,
        }


def _loaders_json(check: LoaderCheck | str | None) -> object:
    if check is None or isinstance(check, str):
        return {"error": check} if check else None
    return check.to_json(limit=20)


def file_losses(files: Sequence[CompareFile], measured: Sequence[float] | None = None) -> tuple[list[float | None],
                                                                                                str]:
    """Each file's validation loss and where it came from: `measured`, else the metadata when every file has one
    measured alike (same seed and timesteps), else none."""
    if measured is not None:
        return list(measured), "measured now on the validation folder"
    if comparable_losses(files):
        return [file.validation_loss for file in files], "written by each file's run (ss_validation_loss)"
    if any(file.validation_loss is not None for file in files):
        return [None] * len(files), "not scored: the files' runs did not all measure it alike"
    return [None] * len(files), "not measured (no validation folder, none in the files)"


def tag(file: CompareFile, strength: float) -> str:
    return format_call(LoraCall(file.name, te=strength, unet=strength))


def compare_files(files: Sequence[CompareFile], spec: CompareSpec, renderer: LoraRenderer, control: JobControl, *,
                  embedder: ImageEmbedder, reference: np.ndarray, losses: Sequence[float | None], source: str,
                  arch: Any, model_name: str, save_to: Path | None = None,
                  loader_check: Callable[[Path], LoaderCheck] | None = None) -> CompareResult:
    """Render, score, recommend, analyze (module docstring); `reference` are the training images' embeddings.
    Every tag is checked before the first image; the grid is saved to `save_to` when given."""
    started = time.monotonic()
    prompts = spec.sample_prompts()
    requests = [p.request(index=i, run_seed=spec.seed, default_size=(spec.width, spec.height))
                for i, p in enumerate(prompts)]
    for file in files:
        for strength in spec.strengths:
            renderer.check(f"{requests[0].prompt} {tag(file, strength)}")
    total = len(files) * len(spec.strengths) * len(requests)
    tiles: list[list[Image.Image]] = []
    similarities: list[tuple[float, ...]] = []
    for row, file in enumerate(files):
        images: list[Image.Image] = []
        for request in requests:
            for strength in spec.strengths:
                done = len(images) + row * len(spec.strengths) * len(requests)
                cell = replace(request, prompt=f"{request.prompt} {tag(file, strength)}")
                what = f"{file.label} at {strength:g}"
                images.append(render_image(renderer, cell, control, done=done, total=total, what=what).image)
        tiles.append(images)
        similarities.append(tuple(
            similarity(reference, embedder.embed(images[column::len(spec.strengths)]))
            for column in range(len(spec.strengths))))
    candidates = [Candidate(row, file.label, strength, losses[row], similarities[row][column])
                  for row, file in enumerate(files) for column, strength in enumerate(spec.strengths)]
    recommendation = recommend(candidates)
    rows = [FileRow(file, losses[row], similarities[row]) for row, file in enumerate(files)]
    rows = _analyzed(rows, spec, requests[0], recommendation, renderer, control, arch, model_name)
    if loader_check is not None:
        rows = [replace(row, loaders=_checked(loader_check, row.file.path)) for row in rows]
    grid = draw_comparison(files, spec, [r.prompt for r in prompts], tiles, recommendation)
    result = CompareResult(spec, tuple(rows), recommendation, grid, embedder.name, source,
                           time.monotonic() - started)
    if save_to is not None:
        result = replace(result, path=_save(result, save_to, requests[0], model_name))
    control.progress(total, total, "done")
    return result


def _checked(check: Callable[[Path], LoaderCheck], path: Path) -> LoaderCheck | str:
    from ...errors import LoraStudioError

    try:
        return check(path)
    except (LoraStudioError, OSError, RuntimeError, ValueError) as error:  # shown in place of the check
        return str(error)


def _analyzed(rows: list[FileRow], spec: CompareSpec, request: Any, recommendation: Recommendation,
              renderer: LoraRenderer, control: JobControl, arch: Any, model_name: str) -> list[FileRow]:
    """The rows with the analyzer's top blocks for the recommended file (spec.analyze "best") or every file."""
    if spec.analyze == "none":
        return rows
    best = recommendation.best.candidate
    chosen = range(len(rows)) if spec.analyze == "all" else [best.file]
    analyzed = list(rows)
    for index in chosen:
        row = rows[index]
        analysis = AnalyzeSpec(lora=row.file.name, weight=best.strength, prompt=request.prompt,
                               negative_prompt=request.negative_prompt, seed=request.seed, steps=request.steps,
                               cfg_scale=request.cfg_scale, width=request.width, height=request.height)
        result = analyze_blocks(analysis, renderer, control, arch=arch, model_name=model_name)
        top = tuple(f"{effect.block} ({effect.percent})" for effect in result.rows[:TOP_BLOCKS]
                    if effect.rank is not None)
        analyzed[index] = replace(row, top_blocks=top, analysis=result.summary())
    return analyzed


def draw_comparison(files: Sequence[CompareFile], spec: CompareSpec, prompts: Sequence[str],
                    tiles: Sequence[Sequence[Image.Image]], recommendation: Recommendation) -> Image.Image:
    """Rows = files (validation loss under each name, the recommended one marked), columns = prompt × strength.
    Labels keep to ASCII and Latin-1: PIL's fallback font draws nothing else."""
    best = recommendation.best.candidate
    columns = [f"{strength:g} · prompt {index + 1}" if len(prompts) > 1 else f"strength {strength:g}"
               for index in range(len(prompts)) for strength in spec.strengths]
    labels = []
    for row, file in enumerate(files):
        loss = recommendation.scored[row * len(spec.strengths)].candidate.validation_loss
        label = file.label + (f"\nval {loss:.4f}" if loss is not None else "")
        labels.append(label + (f"\n* best at {best.strength:g}" if row == best.file else ""))
    title = (f"{len(files)} LoRA files, strengths {strengths_text(spec.strengths)}; seed {spec.seed}; "
             f"recommended: {files[best.file].label} at {best.strength:g}\n" + " | ".join(prompts))
    return compose_grid(tiles, column_labels=columns, row_labels=labels, title=title)


def _save(result: CompareResult, path: Path, request: Any, model_name: str) -> Path:
    from ...pnginfo import parameters_text, save_png

    fields = {"Epoch comparison": json.dumps(result.recommendation.reason)}
    parameters = parameters_text(request.prompt, request, model=model_name, extra_fields=fields)
    return save_png(result.grid, path, parameters, extra_text={COMPARE_SETTINGS_KEY: json.dumps(result.to_json())})
