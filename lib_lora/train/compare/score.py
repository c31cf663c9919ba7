"""The recommendation: one file and one strength, by a combined score of validation loss and similarity.

Every (file, strength) of the grid is a candidate. Its score, from 0 (worst here) to 1 (best here), is

    score = (W_LOSS · L + W_SIMILARITY · S) / (the weights of the terms that are known)

- L, the validation term, is the file's place between the highest and the lowest validation loss of the files:
  (highest − its loss) / (highest − lowest); 1 for every file when all losses are equal. Losses count only when
  every file has one measured the same way (same images, seed and timesteps); otherwise the term is left out.
- S, the similarity term, is the candidate's place between the lowest and the highest similarity of its samples
  to the training images (similarity.py) over all candidates, (its − lowest) / (highest − lowest); 1 for all
  when all are equal.

Both weights are 1/2: the loss says how well a file has learned the data without overfitting it, the similarity
whether the samples show it. Among equal scores the strength nearest 1 wins, then the earlier file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

W_LOSS = 0.5
W_SIMILARITY = 0.5


@dataclass(frozen=True)
class Candidate:
    """One file at one strength: its position among the files, label, validation loss and samples' similarity."""

    file: int
    label: str
    strength: float
    validation_loss: float | None
    similarity: float | None


@dataclass(frozen=True)
class Scored:
    """A candidate, its combined score and the terms it was made of (None: the term was left out)."""

    candidate: Candidate
    score: float
    loss_term: float | None
    similarity_term: float | None


@dataclass(frozen=True)
class Recommendation:
    """The best candidate, every candidate scored (grid order) and the reason in a sentence or two."""

    best: Scored
    scored: tuple[Scored, ...]
    reason: str


def _place(value: float, low: float, high: float, *, higher_is_better: bool) -> float:
    if high == low:
        return 1.0
    return (value - low) / (high - low) if higher_is_better else (high - value) / (high - low)


def score_candidates(candidates: Sequence[Candidate]) -> list[Scored]:
    """Each candidate's combined score (module docstring); ValueError when neither term is known."""
    losses = [c.validation_loss for c in candidates]
    use_loss = bool(candidates) and all(loss is not None for loss in losses)
    sims = [c.similarity for c in candidates]
    use_similarity = bool(candidates) and all(sim is not None for sim in sims)
    if not (use_loss or use_similarity):
        raise ValueError("nothing to score: no validation loss for every file and no similarity for every sample")
    weight = (W_LOSS if use_loss else 0.0) + (W_SIMILARITY if use_similarity else 0.0)
    scored = []
    for candidate in candidates:
        loss_term = similarity_term = None
        total = 0.0
        if use_loss:
            known = [loss for loss in losses if loss is not None]
            loss_term = _place(candidate.validation_loss or 0.0, min(known), max(known), higher_is_better=False)
            total += W_LOSS * loss_term
        if use_similarity:
            values = [sim for sim in sims if sim is not None]
            similarity_term = _place(candidate.similarity or 0.0, min(values), max(values), higher_is_better=True)
            total += W_SIMILARITY * similarity_term
        scored.append(Scored(candidate, total / weight, loss_term, similarity_term))
    return scored


def recommend(candidates: Sequence[Candidate]) -> Recommendation:
    """The highest-scoring candidate (ties: strength nearest 1, then the earlier file) and why."""
    scored = score_candidates(candidates)
    best = min(scored, key=lambda s: (-s.score, abs(s.candidate.strength - 1.0), s.candidate.file))
    return Recommendation(best, tuple(scored), _reason(best, scored))


def _reason(best: Scored, scored: Sequence[Scored]) -> str:
    c = best.candidate
    parts = []
    if best.loss_term is not None and c.validation_loss is not None:
        lowest = min(s.candidate.validation_loss or 0.0 for s in scored)
        rank = "the lowest validation loss" if c.validation_loss == lowest else "validation loss"
        parts.append(f"{rank} ({c.validation_loss:.5f})")
    if best.similarity_term is not None and c.similarity is not None:
        highest = max(s.candidate.similarity or 0.0 for s in scored)
        rank = "the samples closest to the training images" if c.similarity == highest else "samples at similarity"
        parts.append(f"{rank} ({c.similarity:.3f})")
    terms = " and ".join(parts)
    left_out = []
    if best.loss_term is None:
        left_out.append("validation loss (not measured the same way for every file)")
    if best.similarity_term is None:
        left_out.append("similarity")
    note = f"; not scored: {', '.join(left_out)}" if left_out else ""
    return (f"{c.label} at strength {c.strength:g}: {terms}; combined score {best.score:.3f} of 1, the best of "
            f"{len(scored)}{note}.")
