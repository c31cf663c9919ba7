"""The tiny WD14-contract ONNX tagger: loads in onnxruntime, follows the I/O contract, resolves from a hub cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from lib_lora.tiny.images import generate_dataset
from lib_lora.tiny.tagger import (
    CHARACTER,
    FAKE_COMMIT,
    GENERAL,
    RATING,
    RATING_TAGS,
    TinyTagger,
    write_hub_layout,
    write_tiny_wd14_tagger,
)

pytestmark = pytest.mark.hostcompat

ort = pytest.importorskip("onnxruntime")


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """The official recipe: alpha onto white, pad square (white, centred), BICUBIC resize, float32, RGB -> BGR."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def run(tagger: TinyTagger, images: list[Image.Image]) -> np.ndarray:
    sess = session(tagger.model_path)
    inp = sess.get_inputs()[0]
    size = inp.shape[1]
    batch = np.stack([prepare(im, size) for im in images])
    return sess.run(None, {inp.name: batch})[0]


def scores(tagger: TinyTagger, row: np.ndarray) -> dict[str, float]:
    return dict(zip(tagger.tags, row.tolist()))


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> TinyTagger:
    return write_tiny_wd14_tagger(tmp_path_factory.mktemp("tagger"))


def test_files_and_session_contract(tagger: TinyTagger) -> None:
    assert sorted(p.name for p in tagger.directory.iterdir()) == ["model.onnx", "selected_tags.csv"]
    sess = session(tagger.model_path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("input", "output")
    assert inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [448, 448, 3]
    assert out.shape[1] == len(tagger.tags)
    model = onnx.load(str(tagger.model_path))
    assert model.ir_version == 8 and [o.version for o in model.opset_import] == [17]


def test_batch_of_two_images_gives_probabilities_that_differ(tagger: TinyTagger, tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, count=2, seed=3)
    out = run(tagger, [Image.open(p) for p in data.images])
    assert out.shape == (2, len(tagger.tags)) and out.dtype == np.float32
    assert ((out > 0) & (out < 1)).all()
    assert np.abs(out[0] - out[1]).max() > 0.05


def test_colour_rules(tagger: TinyTagger) -> None:
    red, blue, white = (Image.new("RGB", (300, 200), c) for c in ((255, 0, 0), (0, 0, 255), (255, 255, 255)))
    red_s, blue_s, white_s = (scores(tagger, row) for row in run(tagger, [red, blue, white]))
    assert red_s["red_background"] > 0.35 > blue_s["red_background"]
    assert blue_s["blue_background"] > 0.35 > red_s["blue_background"]
    assert white_s["white_background"] > 0.35 > max(red_s["white_background"], blue_s["white_background"])
    assert (
        red_s["hu_tao_(genshin_impact)"]
        > 0.85
        > max(blue_s["hu_tao_(genshin_impact)"], white_s["hu_tao_(genshin_impact)"])
    )
    for s in (red_s, blue_s, white_s):
        assert max(RATING_TAGS, key=s.__getitem__) == "general"
        assert s["1girl"] > 0.35 and s["solo"] > 0.35
        others = [
            t for t in tagger.tags_of(CHARACTER) if t not in ("hu_tao_(genshin_impact)", "hatsune_miku")
        ]
        assert all(s[t] < 0.85 for t in others)


def test_transparent_pixels_count_as_white(tagger: TinyTagger) -> None:
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    out = run(tagger, [clear, white])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_csv_header_categories_and_order(tagger: TinyTagger) -> None:
    with tagger.tags_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["tag_id", "name", "category", "count"]
    assert [r["name"] for r in rows] == list(tagger.tags)
    assert [r["name"] for r in rows[:4]] == list(RATING_TAGS)
    assert {int(r["category"]) for r in rows} == {RATING, GENERAL, CHARACTER}
    assert all(int(r["category"]) == RATING for r in rows[:4])
    assert len(tagger.tags_of(GENERAL)) >= 15 and len(tagger.tags_of(CHARACTER)) >= 3
    assert "hu_tao_(genshin_impact)" in tagger.tags_of(CHARACTER)
    assert {"1girl", "long_hair", "star_(symbol)", "^_^"} <= set(tagger.tags_of(GENERAL))
    assert len({r["tag_id"] for r in rows}) == len(rows)


def test_fixed_batch_and_tf_style_names(tmp_path: Path) -> None:
    tagger = write_tiny_wd14_tagger(
        tmp_path,
        dynamic_batch=False,
        input_name="input_1:0",
        output_name="predictions_sigmoid",
        input_size=224,
    )
    sess = session(tagger.model_path)
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    assert (inp.name, out.name) == ("input_1:0", "predictions_sigmoid")
    assert inp.shape == [1, 224, 224, 3] and out.shape == [1, len(tagger.tags)]
    result = run(tagger, [Image.new("RGB", (50, 80), (255, 0, 0))])
    assert scores(tagger, result[0])["red_background"] > 0.35


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_tiny_wd14_tagger(tmp_path / "a", seed=1)
    b = write_tiny_wd14_tagger(tmp_path / "b", seed=1)
    c = write_tiny_wd14_tagger(tmp_path / "c", seed=2)
    assert a.model_path.read_bytes() == b.model_path.read_bytes() != c.model_path.read_bytes()
    assert a.tags_path.read_bytes() == c.tags_path.read_bytes()


def test_bad_input_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        write_tiny_wd14_tagger(tmp_path, input_size=450)


@pytest.mark.parametrize("revision", [FAKE_COMMIT, "main"])
def test_hub_layout_resolves_offline(tmp_path: Path, revision: str) -> None:
    from huggingface_hub import hf_hub_download

    repo_id = "SmilingWolf/wd-vit-tagger-v3"
    snapshot = write_hub_layout(tmp_path, repo_id)
    assert snapshot == tmp_path / "models--SmilingWolf--wd-vit-tagger-v3" / "snapshots" / FAKE_COMMIT
    assert (tmp_path / "models--SmilingWolf--wd-vit-tagger-v3" / "refs" / "main").read_text() == FAKE_COMMIT
    model = hf_hub_download(
        repo_id, "model.onnx", revision=revision, cache_dir=tmp_path, local_files_only=True
    )
    tags = hf_hub_download(
        repo_id, "selected_tags.csv", revision=revision, cache_dir=tmp_path, local_files_only=True
    )
    assert Path(model) == snapshot / "model.onnx" and Path(tags) == snapshot / "selected_tags.csv"
    reference = write_tiny_wd14_tagger(tmp_path / "reference")
    assert Path(model).read_bytes() == reference.model_path.read_bytes()
    assert Path(tags).read_bytes() == reference.tags_path.read_bytes()
    assert session(Path(model)).get_inputs()[0].shape[1] == 448
    assert not list((tmp_path / "models--SmilingWolf--wd-vit-tagger-v3").glob("tmp*"))


def test_hub_layout_rejects_a_non_commit_revision(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="40-character"):
        write_hub_layout(tmp_path, revision="v2.0")
