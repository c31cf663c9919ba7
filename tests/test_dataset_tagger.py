"""The WD14 tagger on the tiny contract model: tags its scores imply, batching, caption policies, cancel,
unreadable images, providers, and finding models (folder, models_dir, the hub cache offline)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_dataset_tagger_preprocess import reference

from lib_lora.dataset.caption_format import read_caption
from lib_lora.dataset.folder import scan_dataset
from lib_lora.dataset.images import open_image
from lib_lora.dataset.tagging.models import REGISTRY, TaggerModelError, resolve_model
from lib_lora.dataset.tagging.run import tag_folder
from lib_lora.dataset.tagging.tagger import Tagger, TaggerOptions, merge_caption, tags_from_scores
from lib_lora.jobs import Job, JobCancelled
from lib_lora.tiny.images import generate_dataset, make_corrupt_files
from lib_lora.tiny.tagger import FAKE_COMMIT, write_hub_layout, write_tiny_wd14_tagger

pytestmark = pytest.mark.hostcompat

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    write_tiny_wd14_tagger(root / "dynamic")
    write_tiny_wd14_tagger(root / "fixed", dynamic_batch=False, input_name="input_1:0",
                           output_name="predictions_sigmoid", input_size=224)
    return {"dynamic": root / "dynamic", "fixed": root / "fixed"}


@pytest.fixture(scope="module")
def taggers(models: dict[str, Path]) -> dict[str, Tagger]:
    return {kind: Tagger.load(resolve_model(str(path)), providers=["cpu"]) for kind, path in models.items()}


def uncaptioned(folder: Path, count: int = 7, seed: int = 1) -> list[Path]:
    """A generated dataset without captions plus a plain red and a plain blue image; the image paths."""
    data = generate_dataset(folder, count=count, seed=seed)
    for path in data.caption_paths:
        path.unlink()
    Image.new("RGB", (80, 50), (255, 0, 0)).save(data.folder / "zz_red.png")
    Image.new("RGB", (50, 80), (0, 0, 255)).save(data.folder / "zz_blue.png")
    return [*data.images, data.folder / "zz_red.png", data.folder / "zz_blue.png"]


def reference_scores(model_dir: Path, images: list[Path]) -> np.ndarray:
    """Scores from a plain session on the reference preprocessing, one image at a time."""
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    rows = [session.run(None, {inp.name: reference(open_image(p), inp.shape[1])[None]})[0][0] for p in images]
    return np.stack(rows)


def test_session_contract_is_read(taggers: dict[str, Tagger]) -> None:
    dynamic, fixed = taggers["dynamic"], taggers["fixed"]
    assert (dynamic.input_name, dynamic.input_size, dynamic.fixed_batch) == ("input", 448, None)
    assert (fixed.input_name, fixed.input_size, fixed.fixed_batch) == ("input_1:0", 224, 1)
    assert dynamic.provider_in_use == fixed.provider_in_use == "CPUExecutionProvider"
    assert dynamic.warnings == () and len(dynamic.labels.names) == 28
    assert fixed.plan(8).batch_size == 1 and dynamic.plan(8).batch_size == 8


def test_cpu_plans_one_single_threaded_run_per_core(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    from lib_lora.dataset.tagging import tagger as tagger_module

    files = resolve_model(str(models["dynamic"]))
    monkeypatch.setattr(tagger_module, "_physical_cores", lambda: 4)
    per_core = Tagger.load(files, providers=["cpu"])
    assert per_core.threads == 1 and per_core.session.get_session_options().intra_op_num_threads == 1
    plan = per_core.plan()
    assert (plan.batch_size, plan.model_runs, plan.decode_workers, plan.intra_op_threads) == (1, 4, 0, 1)
    assert per_core.plan(3).batch_size == 3 and per_core.plan(3).model_runs == 4
    monkeypatch.setattr(tagger_module, "_physical_cores", lambda: 64)
    assert per_core.plan().model_runs == tagger_module.MAX_CPU_RUNS  # each run holds its own activations
    monkeypatch.setattr(tagger_module, "_physical_cores", lambda: 4)
    two_threads = Tagger.load(files, providers=["cpu"], threads=2).plan()
    assert (two_threads.model_runs, two_threads.decode_workers, two_threads.intra_op_threads) == (2, 0, 2)
    default = Tagger.load(files, providers=["cpu"], threads=0).plan()  # onnxruntime's own: every core
    assert (default.model_runs, default.decode_workers) == (1, 1)
    assert "runs at once" in plan.describe() and "runs at once" not in default.describe()


OPTION_SETS = [
    {},
    {"include_rating": True, "general_mcut": True, "character_mcut": True},
    {"exclude": "1girl, solo", "max_tags": 3, "trigger": "tinychar"},
    {"underscores_to_spaces": False, "escape_brackets": True, "general_threshold": 0.2,
     "character_threshold": 0.5},
]


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
@pytest.mark.parametrize("option_set", range(len(OPTION_SETS)))
def test_captions_are_the_tags_the_scores_imply(kind: str, option_set: int, models: dict[str, Path],
                                                taggers: dict[str, Tagger], tmp_path: Path) -> None:
    images = uncaptioned(tmp_path)
    options = TaggerOptions(recursive=True, existing="overwrite", **OPTION_SETS[option_set])
    report = tag_folder(tmp_path, taggers[kind], options)
    assert [r.status for r in report.results] == ["tagged"] * len(images)
    expected_scores = reference_scores(models[kind], images)
    for image, row in zip(images, expected_scores):
        expected = merge_caption(tags_from_scores(row, taggers[kind].labels, options), None, options)
        assert read_caption(image.with_suffix(".txt")).text == expected
    red, blue = (read_caption(images[i].with_suffix(".txt")).text for i in (-2, -1))
    if option_set == 0:
        assert red.startswith("hu tao (genshin impact), ") and "red background" in red
        assert "blue background" in blue and "hu tao" not in blue and "red background" not in blue
    if option_set == 2:
        assert red.startswith("tinychar, ") and "1girl" not in red and len(red.split(", ")) == 4


def test_batched_and_single_runs_give_the_same_tags(models: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from lib_lora.dataset.tagging import tagger as tagger_module

    images = uncaptioned(tmp_path, count=9)
    files = resolve_model(str(models["dynamic"]))
    monkeypatch.setattr(tagger_module, "_physical_cores", lambda: 3)
    runs = {"one": Tagger.load(files, providers=["cpu"], threads=0), "three": Tagger.load(files, providers=["cpu"])}
    assert (runs["one"].plan().model_runs, runs["three"].plan().model_runs) == (1, 3)
    captions, folder_order = {}, [Path(item.image) for item in scan_dataset(tmp_path).items]
    for name, tagger in runs.items():
        for batch in (1, 4, "auto"):
            ext = f".{name}{batch}"
            report = tag_folder(tmp_path, tagger, TaggerOptions(recursive=True, caption_ext=ext, batch_size=batch))
            assert [r.image for r in report.results] == folder_order  # however the runs finished
            captions[name, batch] = [read_caption(p.with_suffix(ext)).text for p in images]
    assert len(set(map(tuple, captions.values()))) == 1
    assert len(set(captions["one", 1])) > 3  # the images differ, so do their captions


def test_existing_caption_policies(taggers: dict[str, Tagger], tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=4, seed=2)
    old = {p: p.read_text(encoding="utf-8").strip() for p in data.caption_paths}
    data.images[0].write_bytes(b"not an image any more")  # skipped images are not even decoded
    tagger = taggers["dynamic"]
    report = tag_folder(scan_dataset(tmp_path, check_images=False), tagger, TaggerOptions())
    assert [r.status for r in report.results] == ["skipped"] * 4
    assert {p: p.read_text(encoding="utf-8").strip() for p in data.caption_paths} == old
    data.images[0].unlink()
    for policy in ("append", "prepend", "overwrite"):
        before = {p: read_caption(p).text for p in data.caption_paths[1:]}
        options = TaggerOptions(existing=policy, recursive=True, trigger="tinychar")
        report = tag_folder(tmp_path, tagger, options)
        assert [r.status for r in report.results] == ["tagged"] * 3
        for result in report.results:
            expected = merge_caption(list(result.tags), before[result.caption_path], options)
            assert read_caption(result.caption_path).text == expected == result.caption
            assert expected.startswith("tinychar, ") and expected.count("tinychar") == 1
            if policy == "append":
                assert expected.startswith(before[result.caption_path])
    backups = list((tmp_path / ".lora_studio_backup").rglob("*.txt"))
    assert len(backups) >= 3  # every rewritten caption was backed up first


def test_empty_caption_counts_as_none_under_skip(taggers: dict[str, Tagger], tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=2, seed=3)
    data.caption_paths[0].write_text("  \n", encoding="utf-8")
    report = tag_folder(tmp_path, taggers["dynamic"], TaggerOptions(recursive=True))
    assert [r.status for r in report.results] == ["tagged", "skipped"]
    assert "1girl" in data.caption_paths[0].read_text(encoding="utf-8")


def test_cancel_after_the_first_batch_keeps_its_captions(taggers: dict[str, Tagger], tmp_path: Path) -> None:
    images = uncaptioned(tmp_path, count=7)
    tagger = copy.copy(taggers["dynamic"])
    model_run = tagger.predict

    def predict_then_cancel(batch: np.ndarray) -> np.ndarray:
        scores = model_run(batch)
        job.cancel()  # the user presses Cancel while the first batch runs
        return scores

    tagger.predict = predict_then_cancel  # type: ignore[method-assign]
    seen = []
    job = Job("tag", lambda control: tag_folder(tmp_path, tagger, TaggerOptions(recursive=True, batch_size=3),
                                                control, on_image=seen.append))
    with pytest.raises(JobCancelled):
        job.run_here()
    written = [p for p in images if p.with_suffix(".txt").exists()]
    # whole batches from the start: the first, and any that were already running beside it; none starts after
    batches = len(written) // 3
    assert written == images[:3 * batches] and 1 <= batches <= min(2, tagger.plan(3).model_runs)
    assert sorted(written) == sorted(r.image for r in seen) and all(r.status == "tagged" for r in seen)
    assert {p: read_caption(p.with_suffix(".txt")).text for p in written} == {r.image: r.caption for r in seen}
    snapshot = job.snapshot()
    assert snapshot.state == "cancelled" and (snapshot.done, snapshot.total) == (len(written), len(images))


def test_unreadable_images_are_reported_and_the_rest_tagged(taggers: dict[str, Tagger], tmp_path: Path) -> None:
    images = uncaptioned(tmp_path, count=3)
    corrupt = make_corrupt_files(images[0].parent)
    report = tag_folder(tmp_path, taggers["dynamic"], TaggerOptions(recursive=True, batch_size=2))
    assert [r.image for r in report.of("unreadable")] == [corrupt[0]]  # truncated: found when decoded
    assert "truncated" in report.of("unreadable")[0].error
    assert len(report.problems) == 2  # the empty file and the text file: found by the scan
    assert sorted(r.image for r in report.of("tagged")) == sorted(images)
    assert all(p.with_suffix(".txt").exists() for p in images) and not corrupt[0].with_suffix(".txt").exists()
    assert "tagged 5" in report.summary() and "unreadable 1" in report.summary()


def test_a_caption_changed_on_disk_is_not_overwritten(taggers: dict[str, Tagger], tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=2, seed=4)
    dataset = scan_dataset(tmp_path)
    data.caption_paths[0].write_text("edited meanwhile", encoding="utf-8")
    report = tag_folder(dataset, taggers["dynamic"], TaggerOptions(existing="overwrite"))
    assert [r.status for r in report.results] == ["failed", "tagged"]
    assert "changed on disk" in report.results[0].error
    assert data.caption_paths[0].read_text(encoding="utf-8") == "edited meanwhile"


def test_a_missing_provider_is_a_visible_warning(models: dict[str, Path]) -> None:
    files = resolve_model(str(models["dynamic"]))
    tagger = Tagger.load(files, providers=["cuda", "cpu"])
    assert tagger.provider_in_use == "CPUExecutionProvider"
    assert tagger.warnings == ("CUDAExecutionProvider requested but not available in this onnxruntime: "
                               "running on CPU",)
    auto = Tagger.load(files)
    assert auto.provider_in_use in ort.get_available_providers()


def test_tag_images_in_memory(taggers: dict[str, Tagger]) -> None:
    red = Image.new("RGB", (30, 30), (255, 0, 0))
    white = Image.new("RGBA", (30, 60), (0, 0, 0, 0))
    for tagger in taggers.values():
        red_tags, white_tags = tagger.tag_images([red, white], TaggerOptions())
        assert "red background" in red_tags and "hu tao (genshin impact)" in red_tags
        assert "white background" in white_tags and "red background" not in white_tags


# --- finding models -------------------------------------------------------------------------------------------


def test_hub_cache_at_the_pinned_commit_resolves_offline(tmp_path: Path) -> None:
    model = REGISTRY["wd-vit-tagger-v3"]
    snapshot = write_hub_layout(tmp_path, model.repo_id, model.revision)
    files = resolve_model("SmilingWolf/wd-vit-tagger-v3", cache_dir=tmp_path)
    assert (files.source, files.name) == ("hub cache", "wd-vit-tagger-v3")
    assert files.model_path == snapshot / "model.onnx" and files.tags_path == snapshot / "selected_tags.csv"
    assert Tagger.load(files).input_size == 448


def test_hub_cache_at_another_commit_is_not_used(tmp_path: Path) -> None:
    write_hub_layout(tmp_path, "SmilingWolf/wd-vit-tagger-v3", FAKE_COMMIT)  # "main" points at another commit
    with pytest.raises(TaggerModelError, match="not downloaded and the hub is offline.*commit 7f6b584"):
        resolve_model("wd-vit-tagger-v3", cache_dir=tmp_path)
    with pytest.raises(TaggerModelError, match="downloads are off"):
        resolve_model("wd-vit-tagger-v3", cache_dir=tmp_path, download=False)


def test_models_dir_comes_before_the_hub(models: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(models["fixed"], tmp_path / "wd-convnext-tagger-v3")
    files = resolve_model("wd-convnext-tagger-v3", models_dir=tmp_path, cache_dir=tmp_path / "empty")
    assert files.source == "models_dir" and files.model_path == tmp_path / "wd-convnext-tagger-v3" / "model.onnx"


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: None, "neither a folder nor a known model; known models: wd-v1-4-convnext-tagger-v2"),
    (lambda d: (d / "x").mkdir(), "model.onnx and selected_tags.csv missing"),
    (lambda d: ((d / "x").mkdir(), (d / "x" / "model.onnx").write_bytes(b"0")), "selected_tags.csv missing"),
    (lambda d: (d / "x").write_text("file"), "not a folder"),
])
def test_unusable_model_names_and_folders(make, message: str, tmp_path: Path) -> None:
    make(tmp_path)
    with pytest.raises(TaggerModelError, match=message.replace("(", r"\(")):
        resolve_model(str(tmp_path / "x"), cache_dir=tmp_path)


def test_files_that_are_not_a_wd14_tagger(models: dict[str, Path], tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "m"
    shutil.copytree(models["dynamic"], folder)
    files = resolve_model(str(folder))
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,5\n", encoding="utf-8")
    with pytest.raises(TaggerModelError, match="28 outputs but .* lists 1 tags"):
        Tagger.load(files)
    (folder / "selected_tags.csv").write_text("id,label\n1,a\n", encoding="utf-8")
    with pytest.raises(TaggerModelError, match="not a WD14 tag list"):
        Tagger.load(files)
    shutil.copy(models["dynamic"] / "selected_tags.csv", folder / "selected_tags.csv")
    (folder / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(TaggerModelError, match="cannot load it"):
        Tagger.load(files)
    nchw = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "nchw",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    model = helper.make_model(nchw, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(TaggerModelError, match="not a WD14 tagger"):
        Tagger.load(files)


def test_an_error_on_the_writer_thread_is_raised_not_lost(taggers: dict[str, Tagger], tmp_path: Path) -> None:
    uncaptioned(tmp_path, count=2)

    def broken(result):
        raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        tag_folder(tmp_path, taggers["dynamic"], TaggerOptions(recursive=True), on_image=broken)
