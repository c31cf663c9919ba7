"""What one loader would do with a LoRA's keys: `LoaderReport`, with each key it would not apply and why.

A key is one tensor name of the file (`lora_unet_x.lora_up.weight`). Every key is accounted for once: applied,
or failed with one of `REASONS`. A loader that refuses the whole file (diffusers raising, A1111 finding a module
no network type takes, Neo skipping a LoRA with over half its keys unmatched) fails every key with the reason
and the loader's own words in `detail`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

UNKNOWN_MODULE = "unknown module"
"""The loader finds no layer of the model under this key's module name."""
UNKNOWN_SUFFIX = "unknown suffix"
"""The module is found, but the loader reads no tensor of this name (it is ignored)."""
UNSUPPORTED_TYPE = "unsupported network type"
"""The module is found, but none of the loader's network types takes its tensors."""
NOT_LOADED = "file not loaded"
"""The loader refuses the whole file (or the part of it this key is in)."""
REASONS = (UNKNOWN_MODULE, UNKNOWN_SUFFIX, UNSUPPORTED_TYPE, NOT_LOADED)
SHOWN = 10
"""How many failing keys `LoaderReport.to_text` lists."""


@dataclass(frozen=True)
class KeyFailure:
    """One key a loader would not apply: `reason` is one of REASONS, `detail` the loader's own words if any."""

    key: str
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"`reason` must be one of {REASONS}, got {self.reason!r}")
        object.__setattr__(self, "detail", " ".join(self.detail.split()))  # one line, as a loader's message may not be

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason, **({"detail": self.detail} if self.detail else {})}


@dataclass(frozen=True)
class LoaderReport:
    """One loader's dry run of one file on one model family: `applied` of `total` keys, and every failure."""

    loader: str
    title: str
    arch: str
    total: int
    applied: int
    failures: tuple[KeyFailure, ...] = ()
    notes: tuple[str, ...] = ()
    """What the loader itself said (warnings it logged), each once."""

    def __post_init__(self) -> None:
        if self.applied + len(self.failures) != self.total:
            raise ValueError(f"{self.title}: {self.applied} applied + {len(self.failures)} failed != {self.total}")

    @property
    def complete(self) -> bool:
        return not self.failures

    @property
    def share(self) -> float:
        """The fraction of keys applied (1.0 for a file with no keys)."""
        return self.applied / self.total if self.total else 1.0

    def by_reason(self) -> dict[str, int]:
        """{reason: count of keys failing for it}, in REASONS order."""
        counts = Counter(failure.reason for failure in self.failures)
        return {reason: counts[reason] for reason in REASONS if counts[reason]}

    def summary(self) -> str:
        """`ComfyUI (SDXL): 1,230 of 1,230 keys applied`, then the failures per reason when there are any."""
        text = f"{self.title} ({self.arch.upper()}): {self.applied:,} of {self.total:,} keys applied"
        if self.failures:
            text += " — " + ", ".join(f"{n:,} {reason}" for reason, n in self.by_reason().items())
        return text

    def to_text(self, shown: int = SHOWN) -> str:
        """The summary, then per reason its detail when all its keys share one, and up to `shown` of its keys."""
        lines = [self.summary()]
        for reason in self.by_reason():
            failed = [failure for failure in self.failures if failure.reason == reason]
            details = {failure.detail for failure in failed}
            shared = details.pop() if len(details) == 1 else ""
            lines.append(f"  {reason}" + (f": {shared}" if shared else ""))
            for failure in failed[:shown]:
                lines.append(f"    {failure.key}" + (f" ({failure.detail})" if failure.detail and not shared else ""))
            if len(failed) > shown:
                lines.append(f"    … and {len(failed) - shown:,} more")
        lines.extend(f"  {self.title} said: {note}" for note in self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        """{"loader", "title", "arch", "total", "applied", "failures": [{"key", "reason", "detail"?}]}."""
        return {"loader": self.loader, "title": self.title, "arch": self.arch, "total": self.total,
                "applied": self.applied, "failures": [failure.to_json() for failure in self.failures],
                "notes": list(self.notes)}


def account(loader: str, title: str, arch: str, keys: Iterable[str], failures: Mapping[str, KeyFailure],
            notes: Iterable[str] = ()) -> LoaderReport:
    """The report of `keys` of which those in `failures` failed (failures for other keys are an error)."""
    keys = list(dict.fromkeys(keys))
    stray = set(failures) - set(keys)
    if stray:
        raise ValueError(f"{title}: failures for keys the file lacks: {sorted(stray)[:3]}")
    failed = tuple(failures[key] for key in keys if key in failures)
    return LoaderReport(loader, title, arch, len(keys), len(keys) - len(failed), failed, tuple(dict.fromkeys(notes)))


def refuse_all(loader: str, title: str, arch: str, keys: Iterable[str], detail: str,
               notes: Iterable[str] = ()) -> LoaderReport:
    """The report of a loader that loads none of the file: every key NOT_LOADED with `detail`."""
    keys = list(dict.fromkeys(keys))
    return account(loader, title, arch, keys, {key: KeyFailure(key, NOT_LOADED, detail) for key in keys}, notes)
