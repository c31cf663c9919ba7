"""Run by the WebUI at start-up (`python install.py`, cwd = WebUI root): pip-installs what
requirements.txt lists and is missing. Installed packages are never upgraded, and the host's own stack is
never touched. Silent when there is nothing to do.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
# The WebUI pins these itself; installing or upgrading one from here could break it.
HOST_OWNED = frozenset(
    {"torch", "torchvision", "gradio", "transformers", "huggingface-hub", "numpy", "safetensors"}
)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """The PEP 503 form of a distribution name (`Huggingface_Hub` -> `huggingface-hub`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(name, requirement) for each requirement line; comments, blanks, pip options skipped."""
    found = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        match = _NAME.match(line)
        if line and not line.startswith("-") and match:
            found.append((match.group(1), line))
    return found


def load_launch() -> ModuleType | None:
    """The WebUI's `launch` module (its pip helpers) when importable, else None."""
    try:
        import launch  # type: ignore[import-not-found]
    except ImportError:
        return None
    return launch


def is_installed(name: str, launch: ModuleType | None) -> bool:
    if launch is not None:
        return bool(launch.is_installed(name))
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        # e.g. onnxruntime-gpu provides the `onnxruntime` module under another distribution name
        return importlib.util.find_spec(name.replace("-", "_")) is not None
    return True


def install(requirement: str, launch: ModuleType | None) -> None:
    if launch is not None:
        # run_pip goes through a shell: quote so that `>=` is not a redirection.
        launch.run_pip(f'install "{requirement}"', f"LoRA Studio requirement: {requirement}")
    else:
        subprocess.run([sys.executable, "-m", "pip", "install", requirement], check=True)


def missing(lines: Iterable[str], launch: ModuleType | None) -> list[str]:
    """The requirements to install: not installed, and not one of the host's own packages."""
    return [
        requirement
        for name, requirement in requirements(lines)
        if normalize(name) not in HOST_OWNED and not is_installed(name, launch)
    ]


def main(launch: ModuleType | None = None) -> None:
    launch = launch or load_launch()
    for requirement in missing(REQUIREMENTS.read_text(encoding="utf-8").splitlines(), launch):
        install(requirement, launch)


if __name__ == "__main__":
    main()
