"""Keep one file under the run's name and move the others into an `epochs/` folder beside it; nothing is deleted.

`plan_keep` lists every rename first (each LoRA with its card files: `<stem>.json`, previews), and refuses —
changing nothing — when a target name is taken, a file lies in another folder, or there are too many.
The file that holds the run's name now (the end of the run) goes into `epochs/` under its epoch or step name, so
no two files in the LoRA folders share a name. `apply_keep` renames one by one, each atomically and never over
an existing file; when one fails, those done are renamed back (in reverse order) and the error is raised.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...atomic import rename_noreplace, sync_directory
from .files import MAX_FILES, CompareError, CompareFile, run_name_of

EPOCHS_FOLDER = "epochs"
CARD_ENDINGS = (".json", ".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp", ".png", ".jpg", ".jpeg",
                ".webp", ".civitai.info")
"""The files A1111's Lora cards read beside a LoRA `<stem>.safetensors`: `<stem>` + each ending."""


@dataclass(frozen=True)
class Move:
    source: Path
    target: Path


@dataclass(frozen=True)
class KeepPlan:
    """The renames, in order: the others into `epochs/` (each with its cards), then the kept file and its cards."""

    kept: Path
    moves: tuple[Move, ...]

    def describe(self) -> str:
        moved = sum(move.target.parent.name == EPOCHS_FOLDER and move.source.suffix == ".safetensors"
                    for move in self.moves)
        return f"kept {self.kept.name}; {moved} other LoRA files (with their cards) moved into " \
               f"{self.kept.parent / EPOCHS_FOLDER}"


def _archived_stem(file: CompareFile, run_name: str) -> str:
    """The name in `epochs/` of the file that held the run's name (its epoch or step; else `<name>-last`)."""
    if file.epoch is not None:
        return f"{run_name}-{file.epoch:06d}"
    if file.step is not None:
        return f"{run_name}-step{file.step:08d}"
    return f"{run_name}-last"


def _with_cards(source: Path, target: Path) -> list[Move]:
    moves = [Move(source, target)]
    for ending in CARD_ENDINGS:
        card = source.with_name(source.stem + ending)
        if card.is_file():
            moves.append(Move(card, target.with_name(target.stem + ending)))
    return moves


def plan_keep(chosen: CompareFile, files: Sequence[CompareFile], run_name: str | None = None) -> KeepPlan:
    """The renames that keep `chosen` as `<run name>.safetensors` beside it and put the other `files` in
    `epochs/`; CompareError (nothing changed) on a clash, a file elsewhere, too many files or a bad name."""
    if len(files) > MAX_FILES:
        raise CompareError(f"{len(files)} files: at most {MAX_FILES} are kept or moved at once")
    if chosen.path not in [file.path for file in files]:
        raise CompareError(f"{chosen.path} is not one of the files compared")
    name = run_name or run_name_of(chosen.name)
    if not name or Path(name).name != name or name in (".", ".."):
        raise CompareError(f"{name!r} cannot be a file name; give the run's name")
    folder = chosen.path.parent
    kept = folder / f"{name}{chosen.path.suffix}"
    moves: list[Move] = []
    for file in files:
        if file.path.parent != folder:
            raise CompareError(f"{file.path} is not in {folder}: the files to keep and move must share one folder")
        if file.path == chosen.path:
            continue
        stem = _archived_stem(file, name) if file.path.stem == name else file.path.stem
        moves += _with_cards(file.path, folder / EPOCHS_FOLDER / f"{stem}{file.path.suffix}")
    if chosen.path != kept:
        moves += _with_cards(chosen.path, kept)
    _check_targets(moves)
    return KeepPlan(kept, tuple(moves))


def _check_targets(moves: Sequence[Move]) -> None:
    """Every target free when its turn comes (a target another move frees first is fine), none twice."""
    freed: set[Path] = set()
    taken: set[Path] = set()
    clashes = []
    for move in moves:
        if move.target in taken or (move.target.exists() and move.target not in freed):
            clashes.append(str(move.target))
        taken.add(move.target)
        freed.add(move.source)
    if clashes:
        raise CompareError(f"nothing moved: {', '.join(clashes)} already exist{'s' if len(clashes) == 1 else ''}; "
                           "move or rename it first")


def apply_keep(plan: KeepPlan) -> KeepPlan:
    """Do the renames of `plan` (each atomic, none over an existing file); on a failure, undo those done and raise
    CompareError naming the file. Returns the plan."""
    done: list[Move] = []
    try:
        for move in plan.moves:
            move.target.parent.mkdir(exist_ok=True)
            _rename_new(move.source, move.target)
            done.append(move)
    except OSError as error:
        for move in reversed(done):
            with contextlib.suppress(OSError):
                _rename_new(move.target, move.source)
        raise CompareError(f"nothing moved: {move.source} could not be moved to {move.target} "
                           f"({error.strerror or error})") from error
    for folder in {move.target.parent for move in plan.moves} | {move.source.parent for move in plan.moves}:
        sync_directory(folder)
    return plan


def _rename_new(source: Path, target: Path) -> None:
    """Rename atomically where `target` does not exist (FileExistsError otherwise)."""
    if rename_noreplace(source, target):
        return
    if target.exists() or target.is_symlink():  # where the file system cannot refuse by itself: check first
        raise FileExistsError(17, "File exists", str(target))
    os.rename(source, target)
