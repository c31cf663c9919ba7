"""Loader check: how many of a LoRA file's keys each program's loader would apply, and why the others not.

One module per loader, in the order they are reported (`LOADERS`), each with NAME, TITLE and `check`:
diffusers.py   `load_lora_weights` run for real on meta-device models (where diffusers and PEFT are installed)
a1111.py       A1111 1.10's built-in Lora, as a table written from reading its code
forge_neo.py   Forge Neo's `load_lora` (its vendored ComfyUI code and its own skip rule), as a table
comfyui.py     ComfyUI's key maps and `load_lora`, as a table
layouts.py     the real SD1/SDXL layer names the tables map onto, built from our own model layouts
report.py      `LoaderReport`: every key applied, or failed with a reason

The tables never import the programs they describe: they run anywhere, inside A1111 too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ...errors import HostError, LoraFormatError, LoraStudioError
from ..files import load_lora_file
from ..metadata import arch_from_metadata
from . import a1111, comfyui, diffusers, forge_neo
from .layouts import FAMILIES
from .report import REASONS, KeyFailure, LoaderReport

__all__ = ["CARD_KEY", "FAMILIES", "LOADERS", "REASONS", "KeyFailure", "Loader", "LoaderCheck", "LoaderReport",
           "card_entry", "check_file", "check_tensors"]


@dataclass(frozen=True)
class Loader:
    """One program's loader: `check(tensors, arch)`; `available()` says whether it can run here."""

    name: str
    title: str
    check: Callable[[Mapping[str, torch.Tensor], str], LoaderReport]
    available: Callable[[], bool] = lambda: True


LOADERS: tuple[Loader, ...] = (
    Loader(diffusers.NAME, diffusers.TITLE, diffusers.check, diffusers.available),
    Loader(a1111.NAME, a1111.TITLE, a1111.check),
    Loader(forge_neo.NAME, forge_neo.TITLE, forge_neo.check),
    Loader(comfyui.NAME, comfyui.TITLE, comfyui.check),
)


@dataclass(frozen=True)
class LoaderCheck:
    """Every loader's report for one file on one family; `skipped`: loaders not run here, with why."""

    arch: str | None
    reports: tuple[LoaderReport, ...]
    skipped: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every loader that ran applies every key."""
        return all(report.complete for report in self.reports)

    def to_json(self, limit: int | None = None) -> dict[str, object]:
        """{"arch", "complete", "reports": [LoaderReport.to_json()], "skipped"}: `--json`'s form; with `limit`,
        each report keeps that many failures and counts the rest in "more" (the card's form)."""
        reports = []
        for report in self.reports:
            data = report.to_json()
            if limit is not None and len(report.failures) > limit:
                data["failures"] = data["failures"][:limit]  # type: ignore[index]
                data["more"] = len(report.failures) - limit
            reports.append(data)
        return {"arch": self.arch, "complete": self.complete, "reports": reports, "skipped": list(self.skipped)}

    def to_text(self) -> str:
        lines = [report.to_text() for report in self.reports] + [f"not checked: {why}" for why in self.skipped]
        return "\n".join(lines)


def check_tensors(tensors: Mapping[str, torch.Tensor], arch: str | None,
                  loaders: tuple[Loader, ...] = LOADERS) -> LoaderCheck:
    """Run each loader on `tensors` for a model of `arch`; a family the check does not know is skipped whole."""
    if arch not in FAMILIES:
        family = f"the {arch.upper()} family" if arch else "a file whose family is unknown"
        return LoaderCheck(arch, (), (f"the loader check knows {' and '.join(f.upper() for f in FAMILIES)}, "
                                      f"not {family}",))
    reports, skipped = [], []
    for loader in loaders:
        if not loader.available():
            skipped.append(f"{loader.title}: not installed here")
            continue
        try:
            reports.append(loader.check(tensors, arch))
        except HostError as error:  # no model layout can be built here
            skipped.append(f"{loader.title}: {error}")
    return LoaderCheck(arch, tuple(reports), tuple(skipped))


def check_file(path: str | os.PathLike[str], arch: str | None = None,
               loaders: tuple[Loader, ...] = LOADERS) -> LoaderCheck:
    """The loader check of a LoRA file for `arch`, else the family its metadata or keys name.

    Raises LoraFormatError for a file that cannot be read; a file no parser takes (foreign keys) is still checked.
    """
    from ..families import arch_of
    from ..loaded import network_from_state_dict

    loaded = load_lora_file(path)
    if arch is None:
        try:
            network = network_from_state_dict(loaded.tensors, name="check", metadata=loaded.metadata,
                                              identity="-")
            arch = arch_of(network.modules, loaded.metadata)
        except LoraFormatError:
            arch = arch_from_metadata(loaded.metadata)
    return check_tensors(loaded.tensors, arch, loaders)


CARD_KEY = "loader check"
"""The field of a LoRA's card (`<name>.json`) that holds its loader check."""
CARD_FAILURES = 20
"""How many failing keys per loader the card keeps (the rest are counted)."""


def card_entry(path: str | os.PathLike[str]) -> dict[str, object]:
    """The card's `loader check` value for a written LoRA: `LoaderCheck.to_json(CARD_FAILURES)`, or {"error"} when
    the file cannot be checked (a check never fails the save that called it)."""
    try:
        return check_file(path).to_json(CARD_FAILURES)
    except (LoraStudioError, OSError, RuntimeError, ValueError) as error:
        return {"error": str(error)}
