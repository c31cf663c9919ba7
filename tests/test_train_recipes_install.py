"""The Train tab's Install button (lib_lora/packages.py): it installs only the optimizer's package, through
install.py's machinery (constraints from the installed set, a dry-run plan, pip check before and after, undone on a
new finding), refuses clearly without pip, offline, or when pip would bring or change anything else, and
install.py never installs an optimizer's package unasked. pip is faked on install.py's module, except in one real
dry run against an index that does not answer."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lib_lora import packages
from lib_lora.packages import INSTALLABLE, PackageInstallError, install_package, load_installer

pytestmark = pytest.mark.hostcompat
INDEX = ["--index-url", "http://127.0.0.1:9/simple/"]


class FakePip:
    """An installed set, pip check findings, and what a dry run plans for each requirement."""

    def __init__(self, installed: dict[str, str], plans: dict[str, dict[str, str] | str],
                 breaks: Sequence[str] = ()) -> None:
        self.installed = dict(installed)
        self.plans = plans
        self.breaks = list(breaks)
        self.check: list[str] = []
        self.calls: list[list[str]] = []
        self.constraints: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        args = list(args)
        self.calls.append(args)
        if args[0] == "check":
            out = "\n".join(self.check) or "No broken requirements found."
            return subprocess.CompletedProcess(args, 1 if self.check else 0, out + "\n", "")
        if args[0] == "uninstall":
            for name in args[2:]:
                self.installed.pop(name, None)
            self.check = []
            return subprocess.CompletedProcess(args, 0, "", "")
        requirement = args[-1]
        plan = self.plans[requirement.split("==")[0]]
        if "--dry-run" in args:
            self.constraints.append(Path(args[args.index("-c") + 1]).read_text().split())
            if isinstance(plan, str):
                return subprocess.CompletedProcess(args, 1, "", plan)
            report = {"install": [{"metadata": {"name": n, "version": v}, "requested": i == 0}
                                  for i, (n, v) in enumerate(plan.items())]}
            Path(args[args.index("--report") + 1]).write_text(json.dumps(report))
            return subprocess.CompletedProcess(args, 0, "", "")
        assert isinstance(plan, dict) and "-c" in args
        self.installed.update(plan)
        self.check += self.breaks
        return subprocess.CompletedProcess(args, 0, "", "")

    @property
    def installs(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] == "install" and "--dry-run" not in c]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`fake(plans, installed=..., breaks=...)`: install.py's pip and installed set replaced by a FakePip."""
    installer = load_installer()

    def make(plans: dict[str, dict[str, str] | str], installed: dict[str, str] | None = None,
             breaks: Sequence[str] = ()) -> FakePip:
        pip = FakePip(installed or {"torch": "2.1.2", "numpy": "1.26.2"}, plans, breaks)
        monkeypatch.setattr(installer, "pip", pip)
        monkeypatch.setattr(installer, "installed_distributions", lambda: dict(pip.installed))
        monkeypatch.setattr(installer, "installed_requirements", lambda: ["numpy>=1.20", "flatbuffers<2"])
        return pip
    return make


def test_installs_only_the_package_under_constraints_of_everything_installed(fake):
    pip = fake({"dadaptation": {"dadaptation": "3.2"}})
    said = list(install_package("dadaptation", extra=INDEX))
    assert said[-1] == "Installed dadaptation 3.2 (pip check finds nothing new)."
    assert any("pip check" in line for line in said[:-1])  # progress before the result
    assert pip.constraints[0] == ["numpy==1.26.2", "torch==2.1.2", "flatbuffers<2"]
    assert [call[-1] for call in pip.installs] == ["dadaptation==3.2"]
    assert pip.installed == {"torch": "2.1.2", "numpy": "1.26.2", "dadaptation": "3.2"}
    assert [c[0] for c in pip.calls].count("check") >= 2  # before and after


@pytest.mark.parametrize(("plan", "installed", "fragments"), [
    ("ERROR: Could not find a version that satisfies the requirement dadaptation\n"
     "ERROR: No matching distribution found for dadaptation", None, ["is the package index reachable?"]),
    ({"dadaptation": "3.2", "einops": "0.8.0"}, None, ["would also install einops 0.8.0", "installs only dadaptation"]),
    ({"dadaptation": "3.2", "numpy": "2.0.0"}, None, ["would replace the installed numpy 1.26.2"]),
    ({"dadaptation": "3.2"}, {"torch": "2.1.2", "dadaptation": "3.1"}, None),  # already there: nothing to do
])
def test_refused_plans_install_nothing(fake, plan, installed, fragments):
    pip = fake({"dadaptation": plan}, installed=installed)
    before = dict(pip.installed)
    if fragments is None:
        assert list(install_package("dadaptation", extra=INDEX)) == ["dadaptation is already installed."]
    else:
        with pytest.raises(PackageInstallError) as caught:
            list(install_package("dadaptation", extra=INDEX))
        for fragment in fragments:
            assert fragment in str(caught.value)
    assert pip.installs == [] and pip.installed == before


def test_a_new_pip_check_finding_is_undone(fake):
    broken = "somepkg 1.0 has requirement dadaptation<3, but you have dadaptation 3.2."
    pip = fake({"dadaptation": {"dadaptation": "3.2"}}, breaks=[broken])
    with pytest.raises(PackageInstallError) as caught:
        list(install_package("dadaptation", extra=INDEX))
    assert "made new problems" in str(caught.value) and broken in str(caught.value)
    assert ["uninstall", "-y", "dadaptation"] in pip.calls
    assert "dadaptation" not in pip.installed and pip.check == []


@pytest.mark.parametrize(("package", "pip_there", "fragment"), [
    ("requests", True, "not a package LoRA Studio installs"),
    ("dadaptation", False, "pip is not available in this Python"),
])
def test_refused_before_pip_runs(fake, monkeypatch, package, pip_there, fragment):
    pip = fake({})
    monkeypatch.setattr(packages, "pip_available", lambda: pip_there)
    with pytest.raises(PackageInstallError, match=fragment):
        list(install_package(package, extra=INDEX))
    assert pip.calls == []


def test_one_install_at_a_time(fake):
    pip = fake({"dadaptation": {"dadaptation": "3.2"}})
    first = install_package("dadaptation", extra=INDEX)
    next(first)  # the first is under way
    with pytest.raises(PackageInstallError, match="another package is being installed"):
        list(install_package("prodigyopt", extra=INDEX))
    list(first)
    assert [call[-1] for call in pip.installs] == ["dadaptation==3.2"]


def test_the_tab_s_install_says_each_step(fake, monkeypatch):
    from lib_lora.ui.train import hints as train_hints
    from lib_lora.ui.wiring import bound

    fake({"dadaptation": {"dadaptation": "3.2"}})
    monkeypatch.setattr(packages, "index_args", lambda: list(INDEX))
    monkeypatch.setattr(train_hints, "missing_package", lambda name: "dadaptation" if name == "DAdaptLion" else None)
    steps = list(bound(train_hints.install, {"status": "status"}, tab="Train")("DAdaptLion"))
    assert len(steps) >= 3 and steps[-1]["status"].replace("\\", "") == \
        "Installed dadaptation 3.2 (pip check finds nothing new)."
    assert list(bound(train_hints.install, {"status": "status"}, tab="Train")("AdamW")) == \
        [{"status": "AdamW needs no package that is missing."}]


def test_install_py_never_installs_an_optimizer_package_unasked():
    installer = load_installer()
    lines = installer.REQUIREMENTS.read_text(encoding="utf-8").splitlines()
    for python in ("3.10", "3.11", "3.13"):
        names = {installer.normalize(name) for name, _ in installer.requirements(lines, {"python_version": python})}
        assert names.isdisjoint(INSTALLABLE)


def test_an_index_that_does_not_answer_is_refused_by_the_real_pip(monkeypatch):
    """A real dry run (no pip config file, an index on a closed port): offline is said as such."""
    installer = load_installer()
    absent = sorted(name for name in INSTALLABLE if not packages.is_installed(name))
    if not absent:
        pytest.skip("every optimizer package is installed here")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setattr(installer, "install_fitting", lambda *a: pytest.fail("it tried to install"))
    monkeypatch.setattr(installer, "pip_check", lambda: frozenset())  # a real one adds seconds, not meaning
    with pytest.raises(PackageInstallError, match=r"is the package index reachable\?"):
        list(install_package(absent[0], extra=[*INDEX, "--retries", "0", "--timeout", "3"]))
