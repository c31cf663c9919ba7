"""Dataset folders as the Dataset and Train tabs list and take them: only folders holding images (directly or in
`<repeats>_<name>` subfolders), found by name within bounds, shown relative to their root; a relative name typed
is looked up in the roots, never in the server's working folder; a failed Load leaves no folder loaded for Tag or
Save to act on, and Tag works only on the folder the page shows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lib_lora.dataset.editing import DatasetSession, DatasetUIError
from lib_lora.dataset.errors import PathNotAllowedError
from lib_lora.dataset.finder import find_dataset_folders
from lib_lora.dataset.roots import AllowedRoots, AmbiguousFolderError, FolderNotFoundError
from lib_lora.tiny.images import generate_dataset
from lib_lora.ui.dataset.folders import dataset_folder_choices

pytestmark = pytest.mark.hostcompat

PNG = b"not decoded: the finder reads names only"


def make(root: Path, files: list[str]) -> None:
    """Files (and, for names ending in '/', folders) under `root`."""
    for name in files:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(PNG)


TREES = [
    # (files, the folders listed, relative to the root)
    (["charA/10_charA/a.png", "charA/notes/", "styleB/b.JPG", "empty/", "onlysub/misc/c.png"],
     ["charA", "charA/10_charA", "onlysub/misc", "styleB"]),
    # hidden, backups, programs' folders (a .py or a .git) are not entered; too deep is not looked at
    ([".hidden/a.png", ".lora_studio_backup/a.png", "tool/run.py", "tool/samples/a.png", "repo/.git/",
      "repo/docs/a.png", "deep/1/2/3/4/a.png", "ok/1/2/3/a.png", "ok/1/2/3/4_x/a.png"],
     ["ok/1/2/3"]),
    # a root holding a program (the WebUI's folder): its own folders are left out, a dataset beside them is not
    (["launch.py", "modules/", "html/card-no-preview.png", "outputs/txt2img-images/2024-12-07/0001.png",
      "models/Lora/x.preview.png", "extensions/ext/install.py", "extensions/ext/shot.png", "repositories/",
      "embeddings/e.png", "datasets/mychar/10_mychar/a.webp", "train/5_x/a.png", "train/5_x/a.txt"],
     ["datasets/mychar", "datasets/mychar/10_mychar", "train", "train/5_x"]),
]


@pytest.mark.parametrize(("files", "listed"), TREES)
def test_only_folders_holding_images_are_found(tmp_path: Path, files: list[str], listed: list[str]) -> None:
    root = tmp_path / "root"
    make(root, files)
    (root / "linked").symlink_to(tmp_path, target_is_directory=True)  # a link to elsewhere is not followed
    assert [found.relative for found in find_dataset_folders([root.resolve()])] == listed


def test_the_search_is_bounded_and_reads_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: pytest.fail("an image was opened"))
    make(tmp_path, [f"many/{n:04d}/a.png" for n in range(1500)])
    began = time.monotonic()
    found = find_dataset_folders([tmp_path.resolve()], max_visited=200, max_found=50)
    assert len(found) == 50 and time.monotonic() - began < 5
    assert len(find_dataset_folders([tmp_path.resolve()], max_visited=200)) == 198  # 200 minus root and many/


def test_the_lists_show_folders_relative_to_their_root_and_each_label_leads_back(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    make(first, ["a.png", "mychar/10_mychar/a.png", "both/a.png"])
    make(second, ["both/a.png", "other/3_o/a.png"])
    choices = dataset_folder_choices([first, second, tmp_path / "missing"])
    assert choices == [str(first), str(first / "both"), "mychar", "mychar/10_mychar",
                       str(second / "both"), "other", "other/3_o"]
    allowed = AllowedRoots([first, second])
    assert [allowed.locate(choice) for choice in choices] == [
        first, first / "both", first / "mychar", first / "mychar" / "10_mychar", second / "both",
        second / "other", second / "other" / "3_o"]


LOCATE = [
    ("mychar/10_mychar", "{first}/mychar/10_mychar"),
    ("mychar/10_mychar/", "{first}/mychar/10_mychar"),
    ("other", "{second}/other"),
    ("{first}/mychar", "{first}/mychar"),
    ("both", AmbiguousFolderError),
    ("nosuch", FolderNotFoundError),
    ("../outside", PathNotAllowedError),
    ("mychar/../../outside", PathNotAllowedError),
    ("{tmp}/outside", PathNotAllowedError),
]


@pytest.mark.parametrize(("typed", "expected"), LOCATE)
def test_a_typed_folder_is_looked_up_in_the_roots_not_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, typed: str, expected: str | type) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    make(first, ["mychar/10_mychar/", "both/"])
    make(second, ["both/", "other/"])
    make(tmp_path, ["outside/", "cwd/nosuch/", "cwd/other/"])
    monkeypatch.chdir(tmp_path / "cwd")  # the server's working folder holds `nosuch` and `other` too
    places = {"first": first, "second": second, "tmp": tmp_path}
    allowed = AllowedRoots([first, second])
    if isinstance(expected, type):
        with pytest.raises(expected) as raised:
            allowed.locate(typed.format(**places))
        assert str(tmp_path / "cwd") not in str(raised.value)
    else:
        assert allowed.locate(typed.format(**places)) == Path(expected.format(**places))


# --- the Dataset tab's session --------------------------------------------------------------------------------


@pytest.fixture()
def roots(tmp_path: Path) -> Path:
    generate_dataset(tmp_path / "datasets" / "char", count=3, seed=1, repeats=3, name="tinychar")
    (tmp_path / "datasets" / "other").mkdir()
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "datasets"


def test_a_folder_typed_as_the_list_shows_it_loads(roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(roots.parent.parent)
    session = DatasetSession(lambda: [roots])
    assert dataset_folder_choices([roots]) == ["char", "char/3_tinychar"]
    assert session.load("char/3_tinychar").startswith(f"Loaded `{roots / 'char' / '3_tinychar'}`: 3 images")


@pytest.mark.parametrize("typed", ["{tmp}/elsewhere", "nosuch", "other/nosuch", "../elsewhere"])
def test_a_failed_load_leaves_nothing_for_tag_or_save_to_act_on(roots: Path, typed: str) -> None:
    session = DatasetSession(lambda: [roots])
    session.load("char")
    with pytest.raises(DatasetUIError, match="Nothing is loaded now"):
        session.load(typed.format(tmp=roots.parent))
    assert session.dataset is None and session.texts == {} and session.selected is None
    for act in (lambda: session.require_shown(typed), lambda: session.save(), session.revert):
        with pytest.raises(DatasetUIError, match="load a dataset folder first"):
            act()


def test_a_failed_load_keeps_unsaved_edits_and_says_so(roots: Path) -> None:
    session = DatasetSession(lambda: [roots])
    session.load("char")
    key = session.keys[0]
    session.texts[key] += ", edited"
    with pytest.raises(DatasetUIError, match=r"stays loaded for its 1 unsaved caption: Save or Revert"):
        session.load("nosuch")
    assert session.texts[key].endswith(", edited") and session.dataset is not None
    with pytest.raises(DatasetUIError, match="but .*char is loaded"):
        session.require_shown("other")


@pytest.mark.parametrize(("shown", "allowed"), [
    ("", True), ("char", True), ("{root}/char", True), ("{root}/char/", True),
    ("other", False), ("char/3_tinychar", False), ("nosuch", False), ("{tmp}/elsewhere", False),
])
def test_tag_works_only_on_the_folder_the_page_shows(roots: Path, shown: str, allowed: bool) -> None:
    session = DatasetSession(lambda: [roots])
    session.load("char")
    text = shown.format(root=roots, tmp=roots.parent)
    if allowed:
        assert session.require_shown(text) is session.dataset
    else:
        with pytest.raises(DatasetUIError, match="Folder box"):
            session.require_shown(text)
