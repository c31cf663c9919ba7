"""scan_dataset and AllowedRoots: sd-scripts folders, problems listed instead of raised, paths kept inside roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from lib_lora.dataset.backups import BACKUP_DIR_NAME
from lib_lora.dataset.caption_format import read_caption
from lib_lora.dataset.captions import save_caption
from lib_lora.dataset.errors import DatasetError, PathNotAllowedError
from lib_lora.dataset.folder import (
    ROOT_SUBSET,
    ProblemKind,
    parse_repeats_folder,
    rename_subset_repeats,
    scan_dataset,
    validate_caption_ext,
)
from lib_lora.dataset.roots import AllowedRoots
from lib_lora.tiny.images import generate_dataset, make_corrupt_files

pytestmark = pytest.mark.hostcompat


def image(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def kinds(dataset) -> list[tuple[str, list[str]]]:
    return [(problem.kind.value, sorted(p.name for p in problem.paths)) for problem in dataset.problems]


def test_generated_dataset(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=6, repeats=3, name="mychar")
    dataset = scan_dataset(tmp_path)
    assert dataset.problems == []
    assert [item.image for item in dataset.items] == list(data.images)
    assert [item.text for item in dataset.items] == list(data.captions)
    assert {(item.subset, item.repeats, item.name) for item in dataset.items} == {("3_mychar", 3, "mychar")}
    [subset] = dataset.subsets()
    assert (subset.path, subset.folder, subset.repeats, subset.name, subset.images, subset.captioned) == (
        "3_mychar", data.folder, 3, "mychar", 6, 6,
    )
    assert list(dataset.captions()) == [f"3_mychar/{p.name}" for p in data.images]
    assert dataset.item("3_mychar/mychar_000.png").caption_path == data.caption_paths[0]


def test_root_can_be_the_repeats_folder_itself(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=2, repeats=4, name="x")
    dataset = scan_dataset(data.folder)
    assert {(item.subset, item.repeats, item.name) for item in dataset.items} == {(ROOT_SUBSET, 4, "x")}


@pytest.mark.parametrize(
    "name,expected",
    [
        ("10_mychar", (10, "mychar")),
        ("1_a_b", (1, "a_b")),
        ("007_bond", (7, "bond")),
        ("1_ spaced name", (1, " spaced name")),
        ("mychar", (None, "mychar")),
        ("_x", (None, "_x")),
        ("10_", (None, "10_")),
        ("x_10", (None, "x_10")),
        ("1.5_x", (None, "1.5_x")),
    ],
)
def test_parse_repeats_folder(name: str, expected: tuple) -> None:
    assert parse_repeats_folder(name) == expected


def test_same_stem_images_are_a_problem_not_merged(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("shared\n")
    image(tmp_path / "b.png")
    dataset = scan_dataset(tmp_path)
    assert [item.image.name for item in dataset.items] == ["b.png"]
    assert kinds(dataset) == [("same_stem", ["a.jpg", "a.png", "a.txt"])]
    assert "a.jpg, a.png would share the caption a.txt" in str(dataset.problems[0])


def test_unreadable_files_are_problems(tmp_path: Path) -> None:
    make_corrupt_files(tmp_path / "1_bad")
    image(tmp_path / "1_bad" / "good.png")
    (tmp_path / "1_bad" / "good.txt").write_bytes(b"\xff\x81\xfd")
    image(tmp_path / "1_bad" / "fine.png")
    (tmp_path / "1_bad" / "orphan.txt").write_text("no image\n")
    dataset = scan_dataset(tmp_path)
    # the truncated PNG has an intact header: it is found when decoded (open_image), not by the scan
    assert [item.image.name for item in dataset.items] == ["fine.png", "truncated.png"]
    assert sorted(kinds(dataset)) == [
        ("orphan_caption", ["orphan.txt"]),
        ("unreadable_caption", ["good.png", "good.txt"]),
        ("unreadable_image", ["empty.jpg"]),
        ("unreadable_image", ["not_an_image.png"]),
    ]
    unchecked = scan_dataset(tmp_path, check_images=False)
    assert ProblemKind.UNREADABLE_IMAGE not in {problem.kind for problem in unchecked.problems}
    assert "empty.jpg" in [item.image.name for item in unchecked.items]


def test_hidden_and_backup_folders_are_skipped(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("one\n")
    save_caption(tmp_path / "a.txt", "two", expected=read_caption(tmp_path / "a.txt"), root=tmp_path)
    image(tmp_path / BACKUP_DIR_NAME / "stray.png")
    image(tmp_path / ".hidden" / "b.png")
    image(tmp_path / ".c.png")
    dataset = scan_dataset(tmp_path)
    assert [item.image.name for item in dataset.items] == ["a.png"] and dataset.problems == []


def test_recursive_option_and_natural_order(tmp_path: Path) -> None:
    for name in ("img10.png", "img2.png", "Img1.png"):
        image(tmp_path / name)
    image(tmp_path / "2_sub" / "deep.png")
    assert [item.image.name for item in scan_dataset(tmp_path, recursive=False).items] == [
        "Img1.png", "img2.png", "img10.png",
    ]
    assert [item.subset for item in scan_dataset(tmp_path).items] == [".", ".", ".", "2_sub"]


def test_captions_with_other_extension(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=2, caption_ext=".caption")
    (data.folder / "tinychar_000.txt").write_text("ignored\n")
    dataset = scan_dataset(tmp_path, caption_ext=".caption")
    assert [item.text for item in dataset.items] == list(data.captions)
    assert [item.caption for item in scan_dataset(tmp_path).items][1] is None
    assert dataset.subsets()[0].captioned == 2


@pytest.mark.parametrize("ext", ["txt", ".", "./x", ".a/b", ".a\\b", "..txt", ".t xt", "", ".png", ".JPG", None])
def test_invalid_caption_extensions(tmp_path: Path, ext: object) -> None:
    with pytest.raises(DatasetError, match="caption extension") as caught:
        scan_dataset(tmp_path, caption_ext=ext)  # type: ignore[arg-type]
    assert repr(ext) in str(caught.value)


@pytest.mark.parametrize("ext", [".txt", ".caption", ".tags", ".cap_v2"])
def test_valid_caption_extensions(ext: str) -> None:
    assert validate_caption_ext(ext) == ext


def test_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        scan_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_dataset(image(tmp_path / "a.png"))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlinked_folders_are_not_followed(tmp_path: Path) -> None:
    image(tmp_path / "outside" / "x.png")
    (tmp_path / "data").mkdir()
    image(tmp_path / "data" / "a.png")
    os.symlink(tmp_path / "outside", tmp_path / "data" / "link")
    dataset = scan_dataset(tmp_path / "data")
    assert [item.image.name for item in dataset.items] == ["a.png"]
    assert kinds(dataset) == [("symlinked_folder", ["link"])]


# --- repeats -------------------------------------------------------------------------------------------------


def test_rename_subset_repeats(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=2, repeats=3, name="mychar")
    renamed = rename_subset_repeats(scan_dataset(tmp_path), "3_mychar", 10)
    assert not data.folder.exists() and (tmp_path / "10_mychar").is_dir()
    assert {(item.subset, item.repeats) for item in renamed.items} == {("10_mychar", 10)}
    assert [item.text for item in renamed.items] == list(data.captions)
    plain = tmp_path / "plain"
    image(plain / "a.png")
    again = rename_subset_repeats(scan_dataset(tmp_path), "plain", 2)
    assert "2_plain" in [subset.path for subset in again.subsets()]


@pytest.mark.parametrize("repeats", [0, -1, True, 2.0, "3"])
def test_rename_refuses_bad_repeats(tmp_path: Path, repeats: object) -> None:
    generate_dataset(tmp_path, count=1, repeats=3, name="a")
    with pytest.raises(DatasetError, match="repeats must be"):
        rename_subset_repeats(scan_dataset(tmp_path), "3_a", repeats)  # type: ignore[arg-type]
    assert (tmp_path / "3_a").is_dir()


def test_rename_refuses_clashes_unknown_and_root(tmp_path: Path) -> None:
    generate_dataset(tmp_path, count=1, repeats=3, name="a")
    (tmp_path / "5_a").mkdir()
    dataset = scan_dataset(tmp_path)
    with pytest.raises(DatasetError, match="already exists"):
        rename_subset_repeats(dataset, "3_a", 5)
    with pytest.raises(DatasetError, match="no subset 'nope'"):
        rename_subset_repeats(dataset, "nope", 5)
    image(tmp_path / "root.png")
    with pytest.raises(DatasetError, match="dataset root itself"):
        rename_subset_repeats(scan_dataset(tmp_path), ROOT_SUBSET, 2)
    assert (tmp_path / "3_a").is_dir()


# --- allowed roots -------------------------------------------------------------------------------------------


def test_allowed_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "root2").mkdir()
    roots = AllowedRoots([root, tmp_path / "other"])
    assert roots.check(root) == root.resolve()
    assert roots.check(root / "sub" / ".." / "sub") == (root / "sub").resolve()
    assert roots.check(str(root / "not_yet")) == (root / "not_yet").resolve()
    for outside in (root / "..", root / "sub" / ".." / ".." / "root2", tmp_path / "root2", Path("/")):
        with pytest.raises(PathNotAllowedError) as caught:
            roots.check(outside)
        assert str(outside) in str(caught.value) and str(root.resolve()) in str(caught.value)
        assert not roots.allows(outside)
    with pytest.raises(PathNotAllowedError, match="none configured"):
        AllowedRoots([]).check(root)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_escaping_a_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "inner").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "escape")
    os.symlink(root / "inner", root / "alias")
    roots = AllowedRoots([root])
    with pytest.raises(PathNotAllowedError):
        roots.check(root / "escape")
    with pytest.raises(PathNotAllowedError):
        roots.check(root / "escape" / "file.txt")
    assert roots.check(root / "alias") == (root / "inner").resolve()
