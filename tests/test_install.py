"""install.py: environment markers, constraints from the installed set, pip's plan, pip check before/after and the
rollback, on a fake `launch`, a fake installed set and a fake pip (no network); plus one run as the WebUI runs it
(own process, the fake `launch` and a fake `pip` package on PYTHONPATH), and the tagger's message when
onnxruntime was not installed."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

pytestmark = pytest.mark.hostcompat

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()


def load_installer() -> ModuleType:
    """install.py as the WebUI runs it: a file, not a package module (not put in sys.modules)."""
    spec = importlib.util.spec_from_file_location("lora_studio_install", ROOT / "install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inst = load_installer()


# --- requirements and markers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("python_version", "expected"),
    [
        ("3.10", ["onnxruntime", "tomli", "tomli-w"]),  # A1111 on its usual Python: tomllib is missing
        ("3.11", ["onnxruntime", "tomli-w"]),
        ("3.13", ["onnxruntime", "tomli-w"]),  # Forge Neo
    ],
)
def test_requirements_txt_markers(python_version: str, expected: list[str]) -> None:
    names = [name for name, _ in inst.requirements(REQUIREMENTS, {"python_version": python_version})]
    assert names == expected


def test_requirements_txt_for_this_python() -> None:
    names = [name for name, _ in inst.requirements(REQUIREMENTS)]
    assert ("tomli" in names) == (sys.version_info < (3, 11))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("onnxruntime>=1.17", [("onnxruntime", "onnxruntime>=1.17")]),
        ('tomli>=2.0; python_version < "3.11"  # comment', [("tomli", "tomli>=2.0")]),  # marker dropped
        ('tomli>=2.0 ; python_version >= "3.0"', [("tomli", "tomli>=2.0")]),
        ('x; sys_platform == "nonexistent"', []),
        ("pkg[b,a]>=1,<2", [("pkg", "pkg[a,b]<2,>=1")]),
        ("# only a comment", []),
        ("-r other.txt", []),
        ("   ", []),
    ],
)
def test_requirement_lines(line: str, expected: list[tuple[str, str]]) -> None:
    assert inst.requirements([line], {"python_version": "3.10"}) == expected


def test_missing_skips_host_packages_installed_ones_and_other_pythons() -> None:
    launch = SimpleNamespace(is_installed=lambda name: name == "present")
    lines = ["torch>=2.0", "gradio==4.40", "Transformers", "huggingface_hub>=0.2", "# comment", "-r other.txt",
             "present>=1", "absent>=2  # trailing comment", 'old; python_version < "3.0"', ""]
    assert inst.missing(lines, launch) == ["absent>=2"]


# --- constraints -------------------------------------------------------------------------------------------


def test_constraints_pin_every_installed_distribution() -> None:
    installed = {"protobuf": "3.20.0", "torch": "2.12.1+cu130", "numpy": "1.26.2", "legacy-thing": "0.1-beta-x"}
    assert inst.constraint_lines(installed) == ["numpy==1.26.2", "protobuf==3.20.0", "torch==2.12.1+cu130"]


@pytest.mark.parametrize(
    ("requires", "expected"),
    [
        (["flatbuffers<2", "flatbuffers>=1.0"], ["flatbuffers<2", "flatbuffers>=1.0"]),  # pip ANDs them
        (["protobuf>=4"], []),  # installed: already pinned exactly (pip check reports that conflict, if any)
        (["Some_Pkg<3"], ["some-pkg<3"]),
        (["nospec", "ml_dtypes>=0.5; extra == 'quantization'", "old<1; python_version < '3.0'"], []),
        (["tool @ https://example.invalid/tool.whl", "not a requirement !"], []),
    ],
)
def test_dependency_constraints_for_packages_not_installed(requires: list[str], expected: list[str]) -> None:
    assert inst.dependency_constraints(requires, {"protobuf": "3.20.0"}) == expected


def test_installed_distributions_reads_this_environment() -> None:
    installed = inst.installed_distributions()
    assert installed["pip"] == importlib.metadata.version("pip")
    assert all(name == inst.normalize(name) for name in installed)


def test_plan_from_report() -> None:
    report = {"install": [
        {"metadata": {"name": "flatbuffers", "version": "25.12.19"}, "requested": False},
        {"metadata": {"name": "onnxruntime", "version": "1.26.0"}, "requested": True},
    ]}
    plan = inst.plan_from_report(report, {"protobuf": "3.20.0"})
    assert plan == ("onnxruntime==1.26.0", (("flatbuffers", "25.12.19"), ("onnxruntime", "1.26.0")), ())
    changed = inst.plan_from_report({"install": [{"metadata": {"name": "Protobuf", "version": "7.0"}}]},
                                    {"protobuf": "3.20.0"})
    assert changed.changes == ("protobuf 3.20.0 (with 7.0)",)
    assert inst.plan_from_report({"install": []}, {}).pin == ""


CONFLICT = """Collecting onnxruntime>=1.27
  Downloading onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl (23.1 MB)

The conflict is caused by:
    onnxruntime 1.32.0 depends on protobuf>=4.25.8
    The user requested (constraint) protobuf==3.20.0

To fix this you could try to:
1. loosen the range of package versions you've specified
"""


def test_pip_reason_keeps_the_conflict_or_the_errors() -> None:
    assert inst.pip_reason(CONFLICT).splitlines() == [
        "    The conflict is caused by:", "    onnxruntime 1.32.0 depends on protobuf>=4.25.8",
        "    The user requested (constraint) protobuf==3.20.0"]
    noisy = "WARNING: Location 'file:///x' is ignored: it is neither a file nor a directory.\nERROR: boom\nmore"
    assert inst.pip_reason(noisy) == "    ERROR: boom\n    more"
    assert len(inst.pip_reason("\n".join(f"ERROR {i}" for i in range(40)), limit=5).splitlines()) == 5


# --- the whole flow on fakes -------------------------------------------------------------------------------


class FakeWebUI:
    """A fake installed set, a fake pip (check, dry run, uninstall) and a fake `launch` whose run_pip installs."""

    def __init__(self, installed: dict[str, str], *, check: Sequence[str] = (),
                 resolves: dict[str, dict[str, str] | str] | None = None,
                 breaks: Sequence[str] = (), pip_fails: bool = False, requires: Sequence[str] = ()) -> None:
        self.installed = dict(installed)
        self.requires = list(requires)  # Requires-Dist lines of the installed packages
        self.check = list(check)
        self.resolves = resolves or {}
        self.breaks = list(breaks)  # pip check findings that appear once something is installed
        self.pip_fails = pip_fails
        self.calls: list[list[str]] = []
        self.run_pip_calls: list[str] = []
        self.constraints_seen: list[list[str]] = []
        self.launch = SimpleNamespace(is_installed=lambda name: inst.normalize(name) in self.installed,
                                      run_pip=self.run_pip, index_url="")

    def pip(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        args = list(args)
        self.calls.append(args)
        if args[0] == "check":
            out = "\n".join(self.check) if self.check else "No broken requirements found."
            return subprocess.CompletedProcess(args, 1 if self.check else 0, out + "\n", "")
        if args[0] == "uninstall":
            for name in args[2:]:
                if not name.startswith("-"):
                    self.installed.pop(name, None)
            self.check = [line for line in self.check if line not in self.breaks]
            return subprocess.CompletedProcess(args, 0, "", "")
        if "--dry-run" in args:
            constraints = Path(args[args.index("-c") + 1])
            self.constraints_seen.append(constraints.read_text().split())
            outcome = self.resolves[args[-1]]
            if isinstance(outcome, str):
                return subprocess.CompletedProcess(args, 1, outcome, "ERROR: ResolutionImpossible: see above\n")
            report = {"install": [{"metadata": {"name": n, "version": v}, "requested": i == 0}
                                  for i, (n, v) in enumerate(outcome.items())]}
            Path(args[args.index("--report") + 1]).write_text(json.dumps(report))
            return subprocess.CompletedProcess(args, 0, "", "")
        raise AssertionError(f"unexpected pip call {args}")

    def run_pip(self, command: str, desc: str | None = None) -> str:
        self.run_pip_calls.append(command)
        if self.pip_fails:
            raise RuntimeError("Couldn't install it.\nstderr: ERROR: No space left on device")
        name, version = command.split('"')[1].split("==")
        for plan in self.resolves.values():
            if isinstance(plan, dict) and next(iter(plan.items())) == (name, version):
                self.installed.update(plan)
        self.check += self.breaks
        return ""


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
             ) -> Callable[..., list[str]]:
    """inst.main on a FakeWebUI and requirement lines; the lines it printed."""
    def run(fake: FakeWebUI, lines: Sequence[str] = ("onnxruntime>=1.17", "tomli-w>=1.0")) -> list[str]:
        requirements = tmp_path / "requirements.txt"
        requirements.write_text("\n".join(lines))
        monkeypatch.setattr(inst, "pip", fake.pip)
        monkeypatch.setattr(inst, "installed_distributions", lambda: dict(fake.installed))
        monkeypatch.setattr(inst, "installed_requirements", lambda: list(fake.requires))
        monkeypatch.setattr(inst, "REQUIREMENTS", requirements)
        inst.main(fake.launch)
        return capsys.readouterr().out.splitlines()
    return run


A1111 = {"protobuf": "3.20.0", "numpy": "1.26.2", "torch": "2.12.1+cu130", "packaging": "26.4"}
ORT_FITS = {"onnxruntime": "1.26.0", "flatbuffers": "25.12.19"}
NO_FIT = ("The conflict is caused by:\n    onnxruntime 1.32.0 depends on protobuf>=4.25.8\n"
          "    The user requested (constraint) protobuf==3.20.0\n")
PILLOW = "gradio 4.40.0 has requirement pillow<11.0,>=8.0, but you have pillow 12.2.0."


def test_nothing_missing_is_silent_and_runs_no_pip(run_main) -> None:
    fake = FakeWebUI({**A1111, "onnxruntime": "1.26.0", "tomli-w": "1.2.0"})
    assert run_main(fake) == []
    assert fake.calls == [] and fake.run_pip_calls == []


def test_installs_the_fitting_version_under_constraints_of_everything_installed(run_main) -> None:
    fake = FakeWebUI(dict(A1111), resolves={"onnxruntime>=1.17": ORT_FITS, "tomli-w>=1.0": {"tomli-w": "1.2.0"}},
                     requires=["protobuf>=3.20", "coloredlogs<16"])
    out = run_main(fake)
    assert fake.constraints_seen[0] == ["numpy==1.26.2", "packaging==26.4", "protobuf==3.20.0",
                                        "torch==2.12.1+cu130", "coloredlogs<16"]
    assert "onnxruntime==1.26.0" in fake.constraints_seen[1]  # the second requirement sees the first's result
    assert [c.split('"')[1] for c in fake.run_pip_calls] == ["onnxruntime==1.26.0", "tomli-w==1.2.0"]
    assert all(c.startswith('install "') and ' -c "' in c and c.endswith('"') for c in fake.run_pip_calls)  # shell
    assert out == [
        "LoRA Studio: installed flatbuffers 25.12.19, onnxruntime 1.26.0 for onnxruntime>=1.17 (versions that fit "
        "the installed packages)",
        "LoRA Studio: installed tomli-w 1.2.0 for tomli-w>=1.0 (versions that fit the installed packages)"]
    assert [c[0] for c in fake.calls].count("check") == 3  # before, and after each install
    assert fake.installed["protobuf"] == "3.20.0"


def test_no_fitting_release_is_skipped_with_a_clear_line(run_main) -> None:
    fake = FakeWebUI(dict(A1111), resolves={"onnxruntime>=1.17": NO_FIT, "tomli-w>=1.0": {"tomli-w": "1.2.0"}})
    out = "\n".join(run_main(fake))
    assert [c.split('"')[1] for c in fake.run_pip_calls] == ["tomli-w==1.2.0"]
    assert "onnxruntime>=1.17 not installed: no release of it fits the packages this WebUI already has" in out
    assert "onnxruntime 1.32.0 depends on protobuf>=4.25.8" in out
    assert "the Dataset tab's tagger stays unavailable (and says so) until it is installed" in out
    assert "installed tomli-w 1.2.0" in out and "onnxruntime" not in fake.installed


def test_an_unreachable_index_is_not_called_a_conflict(run_main) -> None:
    fake = FakeWebUI(dict(A1111), resolves={"onnxruntime>=1.17": "ERROR: No matching distribution found"})
    fake.pip = _failing_dry_run(fake.pip, "ERROR: No matching distribution found for onnxruntime>=1.17\n")
    out = "\n".join(run_main(fake, ["onnxruntime>=1.17"]))
    assert "pip could not find a release to install (is the package index reachable?)" in out
    assert fake.run_pip_calls == []


def _failing_dry_run(pip: Callable[[Sequence[str]], subprocess.CompletedProcess[str]], stderr: str
                     ) -> Callable[[Sequence[str]], subprocess.CompletedProcess[str]]:
    def fake(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if "--dry-run" in args:
            return subprocess.CompletedProcess(list(args), 1, "", stderr)
        return pip(args)
    return fake


def test_a_new_pip_check_finding_is_reported_and_rolled_back(run_main) -> None:
    broken = "somepkg 1.0 has requirement flatbuffers<2, but you have flatbuffers 25.12.19."
    fake = FakeWebUI({**A1111, "somepkg": "1.0"}, resolves={"onnxruntime>=1.17": ORT_FITS}, breaks=[broken])
    out = "\n".join(run_main(fake, ["onnxruntime>=1.17"]))
    assert f"pip check: {broken}" in out
    assert ["uninstall", "-y", "flatbuffers", "onnxruntime"] in fake.calls
    assert "onnxruntime>=1.17 not installed: it was removed again; the packages and pip check are as they were" in out
    assert fake.installed == {**A1111, "somepkg": "1.0"} and fake.check == []


def test_a_finding_present_before_is_not_new(run_main) -> None:
    """Forge Neo: gradio 4.40's pillow<11 finding is there before LoRA Studio installs anything, and stays alone."""
    fake = FakeWebUI({"pillow": "12.2.0", "protobuf": "4.25.9"}, check=[PILLOW],
                     resolves={"onnxruntime>=1.17": {"onnxruntime": "1.32.0", "flatbuffers": "25.12.19"}})
    out = run_main(fake, ["onnxruntime>=1.17"])
    assert out == ["LoRA Studio: installed flatbuffers 25.12.19, onnxruntime 1.32.0 for onnxruntime>=1.17 "
                   "(versions that fit the installed packages)"]
    assert fake.check == [PILLOW]


def test_run_pip_failure_is_reported(run_main) -> None:
    fake = FakeWebUI(dict(A1111), resolves={"onnxruntime>=1.17": ORT_FITS}, pip_fails=True)
    out = "\n".join(run_main(fake, ["onnxruntime>=1.17"]))
    assert "onnxruntime>=1.17 not installed: pip failed:" in out and "No space left on device" in out


def test_the_wrong_kind_of_plan_is_refused(run_main) -> None:
    """Belt and braces: a plan that would replace an installed package is never installed."""
    fake = FakeWebUI(dict(A1111), resolves={"onnxruntime>=1.17": {"onnxruntime": "1.32.0", "protobuf": "7.36.2"}})
    out = "\n".join(run_main(fake, ["onnxruntime>=1.17"]))
    assert "pip would replace the installed protobuf 3.20.0 (with 7.36.2)" in out and fake.run_pip_calls == []


# --- as the WebUI runs it ----------------------------------------------------------------------------------

FAKE_LAUNCH = '''
"""A fake of the WebUI's `launch`: is_installed from FAKE_INSTALLED; run_pip logs and "installs" a dist-info."""
import json, os, pathlib
ROOT = pathlib.Path(__file__).parent
INSTALLED = set(json.loads(os.environ["FAKE_INSTALLED"]))
LOG = os.environ["FAKE_LOG"]
index_url = ""

def is_installed(package):
    with open(LOG, "a") as log:
        log.write("is_installed " + package + "\\n")
    return package in INSTALLED

def run_pip(command, desc=None):
    with open(LOG, "a") as log:
        log.write("run_pip " + command + "\\n")
    name, version = command.split('"')[1].split("==")
    info = ROOT / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
'''

FAKE_PIP = '''
"""A fake `python -m pip` (it shadows the real one on PYTHONPATH): check is clean, a dry run plans version 9.9."""
import json, os, sys
args = [arg for arg in sys.argv[1:] if arg != "--disable-pip-version-check"]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write("pip " + " ".join(a for a in args if not a.startswith("/")) + "\\n")
if args[0] == "check":
    print("No broken requirements found.")
elif "--dry-run" in args:
    name = args[-1].split(">")[0].split("=")[0]
    report = {"install": [{"metadata": {"name": name, "version": "9.9"}, "requested": True}]}
    open(args[args.index("--report") + 1], "w").write(json.dumps(report))
else:
    sys.exit(f"unexpected pip call {args}")
'''


def run_as_webui(tmp_path: Path, installed: list[str], requirements: Sequence[str] = REQUIREMENTS
                 ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run install.py as the WebUI does: own process, cwd and PYTHONPATH = the (fake) WebUI root, from the
    extension's folder (a copy of install.py beside the given requirements.txt)."""
    webui_root = tmp_path / "webui"
    extension = webui_root / "extensions" / "lora-studio"
    (webui_root / "pip").mkdir(parents=True)
    extension.mkdir(parents=True)
    (webui_root / "launch.py").write_text(FAKE_LAUNCH)
    (webui_root / "pip" / "__init__.py").write_text("")
    (webui_root / "pip" / "__main__.py").write_text(FAKE_PIP)
    (extension / "install.py").write_bytes((ROOT / "install.py").read_bytes())
    (extension / "requirements.txt").write_text("\n".join(requirements))
    log = tmp_path / "calls.log"
    env = dict(os.environ, PYTHONPATH=str(webui_root), FAKE_LOG=str(log), FAKE_INSTALLED=json.dumps(installed))
    result = subprocess.run([sys.executable, str(extension / "install.py")], cwd=webui_root, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, log.read_text().splitlines() if log.exists() else []


def test_as_webui_silent_when_all_present(tmp_path: Path) -> None:
    names = [name for name, _ in inst.requirements(REQUIREMENTS)]
    result, calls = run_as_webui(tmp_path, installed=names)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    assert calls == [f"is_installed {name}" for name in names]


def test_as_webui_installs_only_missing_and_never_the_host_stack(tmp_path: Path) -> None:
    lines = ["torch>=2.0", "gradio==4.40", "lora-studio-fake-a>=1.0  # comment", "lora_studio_fake_b",
             'lora-studio-fake-c; python_version < "3.0"', "numpy"]
    result, calls = run_as_webui(tmp_path, installed=[], requirements=lines)
    assert result.returncode == 0, result.stderr
    pips = [call.removeprefix("run_pip ") for call in calls if call.startswith("run_pip")]
    assert [pip.split('"')[1] for pip in pips] == ["lora-studio-fake-a==9.9", "lora-studio-fake-b==9.9"]
    assert all(pip.startswith('install "') and ' -c "' in pip and pip.endswith('"') for pip in pips)  # a shell
    for host_package in ("torch", "gradio", "numpy", "fake-c"):
        assert not any(host_package in call for call in calls), calls
    assert calls.count("pip check") == 3  # before, and after each install
    assert result.stdout.splitlines() == [
        "LoRA Studio: installed lora-studio-fake-a 9.9 for lora-studio-fake-a>=1.0 (versions that fit the "
        "installed packages)",
        "LoRA Studio: installed lora-studio-fake-b 9.9 for lora_studio_fake_b (versions that fit the installed "
        "packages)"]


# --- what the Dataset tab says when onnxruntime was not installed ------------------------------------------


def test_tagger_says_onnxruntime_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lib_lora.dataset.tagging.models import TaggerFiles
    from lib_lora.dataset.tagging.tagger import Tagger, TaggerUnavailableError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ModuleNotFoundError
    files = TaggerFiles(tmp_path / "model.onnx", tmp_path / "selected_tags.csv", "folder", "test")
    with pytest.raises(TaggerUnavailableError, match="onnxruntime is not installed in this Python") as error:
        Tagger.load(files)
    assert "start-up log" in str(error.value)
