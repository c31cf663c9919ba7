"""Installing an optimizer's package when the user asks for it (the Train tab's Install button), never unasked.

The work is install.py's, the same code the WebUI runs at start-up: every installed distribution pinned as a
constraint, pip's dry-run plan first, `pip check` before and after, and the install removed again when it made a
new finding. On top of that, only the packages the optimizer table names can be asked for, and a plan that would
bring any other package along is refused before anything is installed. pip runs as this Python's `-m pip`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType, SimpleNamespace

from .errors import LoraStudioError
from .train.optim import OPTIMIZERS

INSTALLER = Path(__file__).resolve().parents[1] / "install.py"
INSTALLABLE: frozenset[str] = frozenset(spec.package for spec in OPTIMIZERS.values() if spec.package)
"""The pip packages the Install button may install: the optional optimizers' (dadaptation, prodigyopt, ...)."""
PIP_PATIENCE = ("--retries", "1", "--timeout", "15")  # an unreachable index is reported in seconds, not minutes
_busy = threading.Lock()


class PackageInstallError(LoraStudioError):
    """A package was not installed: not one that may be, no pip, no index, no fitting release, or undone."""


@lru_cache(maxsize=1)
def load_installer() -> ModuleType:
    """install.py as a module of its own (it is a script beside the package, not part of it)."""
    spec = importlib.util.spec_from_file_location("lora_studio_install", INSTALLER)
    if spec is None or spec.loader is None or not INSTALLER.is_file():
        raise PackageInstallError(f"{INSTALLER} is missing, so nothing can be installed from here")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def index_args() -> list[str]:
    """The package index the WebUI uses (its INDEX_URL), as install.py passes it, and a short patience."""
    return [*load_installer().index_args(SimpleNamespace(index_url=os.environ.get("INDEX_URL", ""))), *PIP_PATIENCE]


def pip_available() -> bool:
    """Whether this Python has pip (environments made by uv or conda may not)."""
    return importlib.util.find_spec("pip") is not None


def can_install(package: str | None) -> bool:
    """Whether the Install button may install `package` here: one of INSTALLABLE, and this Python has pip."""
    return package in INSTALLABLE and pip_available()


def is_installed(package: str) -> bool:
    """Whether a distribution of this name is installed in this Python."""
    installer = load_installer()
    return installer.normalize(package) in installer.installed_distributions()


def install_package(package: str, *, extra: Sequence[str] | None = None) -> Iterator[str]:
    """Install `package` (one of INSTALLABLE) in a release that fits every installed package; yields what it is
    doing, then what it installed. PackageInstallError when it is refused, fails or was undone (nothing changed
    then, or the message says what to run)."""
    if package not in INSTALLABLE:
        raise PackageInstallError(f"{package!r} is not a package LoRA Studio installs; it installs only "
                                  f"{', '.join(sorted(INSTALLABLE))}")
    if not pip_available():
        raise PackageInstallError(f"pip is not available in this Python ({sys.executable}), so {package} cannot be "
                                  "installed from here: install it with the tool that made this environment")
    if not _busy.acquire(blocking=False):
        raise PackageInstallError("another package is being installed; wait until it is done")
    try:
        yield from _install(load_installer(), package, list(index_args() if extra is None else extra))
    finally:
        _busy.release()


def _install(installer: ModuleType, package: str, extra: list[str]) -> Iterator[str]:
    if is_installed(package):
        yield f"{package} is already installed."
        return
    yield f"Installing {package}: checking the installed packages (pip check)…"
    baseline = installer.pip_check()
    if baseline is None:
        raise PackageInstallError(f"pip check could not run in this Python, so a conflict {package} made could not "
                                  "be detected: nothing was installed")
    yield f"Installing {package}: asking pip for a release that fits the installed packages…"
    before = installer.installed_distributions()
    pins = installer.constraint_lines(before) + installer.dependency_constraints(installer.installed_requirements(),
                                                                                  before)
    with tempfile.TemporaryDirectory(prefix="lora-studio-pip-") as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
        plan = installer.resolve(package, constraints, extra, before)
    if isinstance(plan, str):
        raise PackageInstallError(f"{package} was not installed: {plan}")
    others = [f"{name} {version}" for name, version in plan.adds if name != installer.normalize(package)]
    if plan.changes:
        raise PackageInstallError(f"{package} was not installed: pip would replace the installed "
                                  f"{', '.join(plan.changes)}, and LoRA Studio never changes an installed package")
    if others:
        raise PackageInstallError(f"{package} was not installed: pip would also install {', '.join(others)}, and "
                                  f"this button installs only {package}; to take them too, run "
                                  f'"{sys.executable}" -m pip install {plan.pin}')
    if not plan.pin:
        yield f"{package} is already installed."
        return
    yield f"Installing {plan.pin.replace('==', ' ')}…"
    lines = installer.install_fitting(plan.pin, None, extra, baseline)
    if not (is_installed(package) and any(line.startswith(f"{installer.LOG} installed ") for line in lines)):
        text = "\n".join(line.replace(installer.LOG, "").strip() for line in lines) or "pip installed nothing"
        raise PackageInstallError(text)
    yield f"Installed {plan.pin.replace('==', ' ')} (pip check finds nothing new)."
