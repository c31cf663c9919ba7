"""Run by the WebUI at start-up (`python install.py`, cwd = WebUI root, the WebUI's python): pip-installs what
requirements.txt lists for this Python and is missing, in versions that fit what the WebUI already has.

Every installed distribution is pinned as a pip constraint (`name==version`), so pip may add packages but never
change one, and what installed packages ask of packages not yet installed is a constraint too; pip's resolver
then picks the newest release whose dependencies fit (on A1111, an onnxruntime that accepts its protobuf 3.20).
A requirement no release fits is skipped with a log line. `pip check` runs before and after: findings that were
not there before are reported and what was installed is removed again. Silent when there is nothing to install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Iterable, Mapping, NamedTuple, Sequence

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # every pip carries a copy
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[no-redef]

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
# The WebUI pins these itself; installing or upgrading one from here could break it.
HOST_OWNED = frozenset(
    {"torch", "torchvision", "gradio", "transformers", "huggingface-hub", "numpy", "safetensors"}
)
LOG = "LoRA Studio:"
# What stays unavailable while a requirement is missing (user words for the log).
USED_BY = {
    "onnxruntime": "the Dataset tab's tagger",
    "tomli": "reading training configs",
    "tomli-w": "saving training configs and queues",
}
_PIP_OK = "No broken requirements found."


def normalize(name: str) -> str:
    """The PEP 503 form of a distribution name (`Huggingface_Hub` -> `huggingface-hub`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(lines: Iterable[str], environment: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, requirement without its marker) for each requirement line whose environment marker holds for this
    Python (or for `environment`'s marker values); comments, blanks and pip options are skipped."""
    found = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(dict(environment) if environment else None):
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        found.append((req.name, f"{req.name}{extras}{req.specifier}"))
    return found


def load_launch() -> ModuleType | None:
    """The WebUI's `launch` module (its pip helpers) when importable, else None."""
    try:
        import launch  # type: ignore[import-not-found]
    except ImportError:
        return None
    return launch


def is_installed(name: str, launch: ModuleType | None) -> bool:
    """Whether a distribution (or, failing that, an importable module) of this name is present."""
    if launch is not None:
        return bool(launch.is_installed(name))
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        # e.g. onnxruntime-gpu provides the `onnxruntime` module under another distribution name
        return importlib.util.find_spec(name.replace("-", "_")) is not None
    return True


def missing(lines: Iterable[str], launch: ModuleType | None) -> list[str]:
    """The requirements to install: meant for this Python, not installed, not one of the host's own packages."""
    return [
        requirement
        for name, requirement in requirements(lines)
        if normalize(name) not in HOST_OWNED and not is_installed(name, launch)
    ]


def installed_requirements() -> list[str]:
    """The Requires-Dist lines of every distribution on sys.path."""
    return [line for dist in importlib.metadata.distributions() for line in dist.requires or ()]


def installed_distributions() -> dict[str, str]:
    """Normalized name -> version of every distribution on sys.path, the first one winning (as imports do)."""
    importlib.invalidate_caches()
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        if name and version:
            found.setdefault(normalize(name), version)
    return found


def constraint_lines(installed: Mapping[str, str]) -> list[str]:
    """`name==version` for each installed distribution, so that pip may add packages but change none.

    A version pip cannot parse (legacy, non-PEP 440) is left out: pip would reject the whole constraints file."""
    lines = []
    for name, version in sorted(installed.items()):
        try:
            Version(version)
        except InvalidVersion:
            continue
        lines.append(f"{name}=={version}")
    return lines


def dependency_constraints(requires: Iterable[str], installed: Mapping[str, str]) -> list[str]:
    """What installed packages ask of packages that are not installed (`flatbuffers<2`), as constraints, so that
    pip does not add a version an installed package rejects. Lines for extras and other Pythons are left out."""
    found = set()
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.specifier and not req.url and normalize(req.name) not in installed:
            found.add(f"{normalize(req.name)}{req.specifier}")
    return sorted(found)


def pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`python -m pip ARGS` with this Python, output captured."""
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace")


def pip_check() -> frozenset[str] | None:
    """The findings of `pip check` (one line each; empty when clean), None when pip check could not run."""
    result = pip(["check"])
    findings = frozenset(line.strip() for line in result.stdout.splitlines() if line.strip())
    if result.returncode == 0 or (result.returncode == 1 and findings):
        return findings - {_PIP_OK}
    return None


def index_args(launch: ModuleType | None) -> list[str]:
    """The WebUI's package index (INDEX_URL), as its run_pip passes it, plus its --prefer-binary."""
    url = getattr(launch, "index_url", "") if launch is not None else ""
    return ["--prefer-binary", *(["--index-url", url] if url else [])]


class Plan(NamedTuple):
    """What pip would install for one requirement: `pin` to ask for, `adds` (name, version) it would bring in,
    `changes` the installed distributions it would replace (always empty under the constraints)."""

    pin: str
    adds: tuple[tuple[str, str], ...]
    changes: tuple[str, ...] = ()


def plan_from_report(report: Mapping[str, object], installed: Mapping[str, str]) -> Plan:
    """The Plan in a `pip install --dry-run --report` JSON report (pin "" when pip would install nothing)."""
    adds: list[tuple[str, str]] = []
    changes: list[str] = []
    pin = ""
    for entry in report.get("install") or []:  # type: ignore[attr-defined]
        name, version = normalize(entry["metadata"]["name"]), entry["metadata"]["version"]
        if name in installed:
            changes.append(f"{name} {installed[name]} (with {version})")
        else:
            adds.append((name, version))
        if entry.get("requested") or not pin:
            pin = f"{name}=={version}"
    return Plan(pin=pin, adds=tuple(adds), changes=tuple(changes))


def pip_reason(output: str, limit: int = 12) -> str:
    """pip's own explanation, indented: its "conflict is caused by" list when it has one, else the lines from its
    first ERROR on (or its last lines); at most `limit` lines."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and "is ignored: it is neither" not in line]
    cause = next((i for i, line in enumerate(lines) if line.startswith("The conflict is caused by")), None)
    if cause is not None:
        end = next((i for i in range(cause, len(lines)) if lines[i].startswith("To fix this")), len(lines))
        kept = lines[cause:end]
    else:
        error = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), max(0, len(lines) - limit))
        kept = lines[error:]
    if len(kept) > limit:
        kept = kept[:limit - 1] + [f"... ({len(kept) - limit + 1} more lines)"]
    return "\n".join("    " + line for line in kept)


def resolve(requirement: str, constraints: Path, extra: Sequence[str], installed: Mapping[str, str]) -> Plan | str:
    """pip's plan for `requirement` under the constraints (a dry run), or why none exists, in user words."""
    report_path = constraints.with_name("report.json")
    result = pip(["install", "--dry-run", "--report", str(report_path),
                  "-c", str(constraints), *extra, requirement])
    if result.returncode != 0 and "no such option" in result.stderr:  # pip < 22.2: no dry run; constraints still hold
        return Plan(pin=requirement, adds=())
    if result.returncode != 0:
        output = result.stdout + "\n" + result.stderr
        if "ResolutionImpossible" in output or "conflicting dependencies" in output:
            why = "no release of it fits the packages this WebUI already has"
        else:
            why = "pip could not find a release to install (is the package index reachable?)"
        note = "\n    (a constraint is a version this WebUI has installed; LoRA Studio never changes those)" \
            if "(constraint)" in output else ""
        return f"{why}; pip says:\n{pip_reason(output)}{note}"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"pip's dry run gave no readable report ({error})"
    return plan_from_report(report, installed)


def run_install(pin: str, constraints: Path, launch: ModuleType | None, extra: Sequence[str]) -> str | None:
    """Install `pin` under the constraints through the WebUI's run_pip (or pip); pip's complaint if it failed."""
    try:
        if launch is not None:
            # run_pip goes through a shell: quote so that `>=` is not a redirection.
            launch.run_pip(f'install "{pin}" -c "{constraints}"', f"LoRA Studio requirement: {pin}")
            return None
        result = pip(["install", "-c", str(constraints), *extra, pin])
    except Exception as error:  # the WebUI's run_pip raises RuntimeError with pip's output
        return pip_reason(str(error))
    return None if result.returncode == 0 else pip_reason(result.stdout + "\n" + result.stderr)


def rollback(before: Mapping[str, str], after: Mapping[str, str], extra: Sequence[str]) -> list[str]:
    """Put the installed set back as it was (uninstall what was added, reinstall what changed); the commands that
    failed, for the user to run by hand."""
    added = sorted(set(after) - set(before))
    restore = sorted(f"{n}=={v}" for n, v in before.items() if after.get(n) != v)
    failed = []
    if added and pip(["uninstall", "-y", *added]).returncode != 0:
        failed.append(f'"{sys.executable}" -m pip uninstall -y {" ".join(added)}')
    if restore and pip(["install", "--no-deps", *extra, *restore]).returncode != 0:
        failed.append(f'"{sys.executable}" -m pip install --no-deps ' + " ".join(f'"{r}"' for r in restore))
    return failed


def describe(versions: Iterable[tuple[str, str]]) -> str:
    """`a 1.0, b 2.0`."""
    return ", ".join(f"{name} {version}" for name, version in versions)


def not_installed(requirement: str, why: str) -> str:
    """The log line for a requirement left out: which, why, and what stays unavailable."""
    name = normalize(Requirement(requirement).name)
    return f"{LOG} {requirement} not installed: {why}\n    {USED_BY.get(name, 'what needs ' + name)} stays " \
           "unavailable (and says so) until it is installed; the rest of LoRA Studio works"


def install_fitting(requirement: str, launch: ModuleType | None, extra: Sequence[str],
                    baseline: frozenset[str] | None) -> list[str]:
    """Install one requirement in a version that fits the installed set; the log lines saying what happened."""
    before = installed_distributions()
    pins = constraint_lines(before) + dependency_constraints(installed_requirements(), before)
    with tempfile.TemporaryDirectory(prefix="lora-studio-pip-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
        plan = resolve(requirement, constraints, extra, before)
        if isinstance(plan, str):
            return [not_installed(requirement, plan)]
        if plan.changes:
            return [not_installed(requirement, f"pip would replace the installed {', '.join(plan.changes)}")]
        if not plan.pin:
            return []
        failure = run_install(plan.pin, constraints, launch, extra)
    after = installed_distributions()
    added = [(n, v) for n, v in sorted(after.items()) if n not in before]
    changed = [f"{n} {v} -> {after.get(n, 'removed')}" for n, v in sorted(before.items()) if after.get(n) != v]
    findings = pip_check()
    new = sorted(findings - baseline) if findings is not None and baseline is not None else []
    if new or changed:
        lines = [f"{LOG} installing {requirement} made new problems:"]
        lines += [f"    pip check: {line}" for line in new] + [f"    changed: {line}" for line in changed]
        undo = rollback(before, after, extra)
        if undo or installed_distributions() != before or pip_check() != baseline:
            return lines + [f"    could not undo it all; to restore the WebUI's packages run: {command}"
                            for command in undo or [f'"{sys.executable}" -m pip check  (and fix what it lists)']]
        return lines + [not_installed(requirement, "it was removed again; the packages and pip check are as they "
                                                   "were")]
    if failure is not None and not added:
        return [not_installed(requirement, f"pip failed:\n{failure}")]
    if not added:
        return [not_installed(requirement, "pip installed nothing (is the WebUI running with --skip-install?)")]
    return [f"{LOG} installed {describe(added)} for {requirement} (versions that fit the installed packages)"]


def main(launch: ModuleType | None = None) -> None:
    """Install what is missing; print (to the WebUI's log) what was installed, skipped or undone, and why."""
    launch = launch or load_launch()
    wanted = missing(REQUIREMENTS.read_text(encoding="utf-8").splitlines(), launch)
    if not wanted:
        return
    extra = index_args(launch)
    baseline = pip_check()
    if baseline is None:
        print(f"{LOG} pip check could not run, so new package conflicts cannot be detected", flush=True)
    for requirement in wanted:
        for line in install_fitting(requirement, launch, extra, baseline):
            print(line, flush=True)


if __name__ == "__main__":
    main()
