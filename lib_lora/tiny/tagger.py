"""A tiny ONNX model with the WD14 tagger contract, plus a fake huggingface_hub cache holding it.

Contract (as the SmilingWolf exports, `shared/research/dataset.md` §1): one input NHWC float32
`[batch, S, S, 3]`, BGR, raw 0-255; one output `[batch, N]` of sigmoid probabilities; `selected_tags.csv` with
`tag_id,name,category,count`, the 4 rating rows first. Batch is symbolic (v3) or fixed to 1 (old v2 exports).

The graph averages the image over a 4x4 grid of blocks (48 BGR means), multiplies by a weight matrix and
applies a sigmoid. Most tags get seeded random weights (image-dependent, deterministic for a seed); a few
follow fixed colour rules so tests can assert on them. With R, G, B the image's mean channels in [0, 1]
(after the official white padding):

- `red_background` = sigmoid(8 (R - (G + B) / 2) - 2); likewise `blue_background` (B) and `green_background` (G)
  - a plain red image scores 0.998, a plain blue or white one at most 0.12;
- `white_background` = sigmoid(8 (R + G + B) / 3 - 6): white 0.88, any pure primary colour <= 0.04;
- `hu_tao_(genshin_impact)` (character) = sigmoid(12 (R - (G + B) / 2) - 4): red 0.9997, white/blue < 0.02;
  `hatsune_miku` is the same on G;
- `1girl` and `solo` are constant 0.92 and 0.88; ratings are constant, `general` (0.82) wins the argmax.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

GRID = 4
"""The image is averaged over GRID x GRID blocks; input_size must be a multiple of it."""

RATING = 9
GENERAL = 0
CHARACTER = 4

FAKE_COMMIT = "7f6b5840000000000000000000000000000a11ce"
"""A 40-hex revision used for the fake hub cache (not a real commit of any repository)."""

RATING_TAGS = ("general", "sensitive", "questionable", "explicit")
GENERAL_TAGS = (
    "1girl",
    "solo",
    "long_hair",
    "short_hair",
    "blue_eyes",
    "red_eyes",
    "smile",
    "open_mouth",
    "looking_at_viewer",
    "simple_background",
    "red_background",
    "blue_background",
    "green_background",
    "white_background",
    "hair_ornament",
    "upper_body",
    "dress",
    "star_(symbol)",
    ":d",
    "^_^",
)
CHARACTER_TAGS = (
    "hu_tao_(genshin_impact)",
    "hatsune_miku",
    "kamado_nezuko",
    "lumine_(genshin_impact)",
)

_B, _G, _R = 0, 1, 2  # channel index in the BGR input

# tag -> (weights on mean B, G, R in [0, 1], bias): the documented rules above.
_RULES: dict[str, tuple[tuple[float, float, float], float]] = {
    "general": ((0.0, 0.0, 0.0), 1.5),
    "sensitive": ((0.0, 0.0, 0.0), -1.0),
    "questionable": ((0.0, 0.0, 0.0), -3.0),
    "explicit": ((0.0, 0.0, 0.0), -4.0),
    "1girl": ((0.0, 0.0, 0.0), 2.5),
    "solo": ((0.0, 0.0, 0.0), 2.0),
    "red_background": ((-4.0, -4.0, 8.0), -2.0),
    "blue_background": ((8.0, -4.0, -4.0), -2.0),
    "green_background": ((-4.0, 8.0, -4.0), -2.0),
    "white_background": ((8 / 3, 8 / 3, 8 / 3), -6.0),
    "hu_tao_(genshin_impact)": ((-6.0, -6.0, 12.0), -4.0),
    "hatsune_miku": ((-6.0, 12.0, -6.0), -4.0),
}


@dataclass(frozen=True)
class TinyTagger:
    """Where a tiny tagger was written and what it contains (tags[i] is output column i)."""

    directory: Path
    model_path: Path
    tags_path: Path
    tags: tuple[str, ...]
    categories: tuple[int, ...]
    input_name: str
    output_name: str
    input_size: int
    dynamic_batch: bool

    def tags_of(self, category: int) -> tuple[str, ...]:
        """The tag names of one category (RATING, GENERAL or CHARACTER), in output order."""
        return tuple(t for t, c in zip(self.tags, self.categories) if c == category)


def tag_table() -> list[tuple[int, str, int, int]]:
    """Rows (tag_id, name, category, count) of selected_tags.csv: ratings, then general, then character."""
    rows: list[tuple[int, str, int, int]] = []
    groups = (
        (RATING_TAGS, RATING, 9_999_990),
        (GENERAL_TAGS, GENERAL, 0),
        (CHARACTER_TAGS, CHARACTER, 1_000_000),
    )
    for names, category, first_id in groups:
        for i, name in enumerate(names):
            tag_id = first_id + i if category == RATING else first_id + 1_000 + 7_919 * (i + 1)
            count = 800_000 - 37_000 * i if category != CHARACTER else 9_000 - 1_500 * i
            rows.append((tag_id, name, category, count))
    return rows


def _weights(names: list[str], categories: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(W [GRID*GRID*3, N], b [N]) acting on raw 0-255 block means laid out (row, col, channel).

    Random characters get a lower bias, so on plain images only the rule characters pass 0.85.
    """
    blocks = GRID * GRID
    rng = np.random.default_rng(seed)
    random_w = rng.normal(0.0, 0.5, size=(blocks * 3, len(names)))
    random_b = rng.normal(-0.8, 0.5, size=len(names)) - 2.0 * (np.asarray(categories) == CHARACTER)
    weight = np.zeros((blocks * 3, len(names)))
    bias = np.zeros(len(names))
    for j, name in enumerate(names):
        if name in _RULES:
            channel_w, bias[j] = _RULES[name]
            weight[:, j] = np.tile(np.asarray(channel_w) / blocks, blocks)
        else:  # centred features: logits = (f - 0.5) @ w + b
            weight[:, j] = random_w[:, j]
            bias[j] = random_b[j] - 0.5 * random_w[:, j].sum()
    return (weight / 255.0).astype(np.float32), bias.astype(np.float32)


def build_model(
    names: list[str],
    categories: list[int],
    *,
    input_size: int,
    dynamic_batch: bool,
    input_name: str,
    output_name: str,
    seed: int,
) -> onnx.ModelProto:
    """The ONNX graph: Reshape to blocks, ReduceMean, MatMul, Add, Sigmoid (opset 17, IR version 8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if input_size <= 0 or input_size % GRID:
        raise ValueError(f"input_size must be a positive multiple of {GRID}, got {input_size}")
    cell = input_size // GRID
    weight, bias = _weights(names, categories, seed)
    batch: str | int = "batch_size" if dynamic_batch else 1
    inits = [
        numpy_helper.from_array(np.array([-1, GRID, cell, GRID, cell, 3], np.int64), "block_shape"),
        numpy_helper.from_array(np.array([-1, GRID * GRID * 3], np.int64), "feature_shape"),
        numpy_helper.from_array(weight, "tag_weight"),
        numpy_helper.from_array(bias, "tag_bias"),
    ]
    nodes = [
        helper.make_node("Reshape", [input_name, "block_shape"], ["blocks"], name="to_blocks"),
        helper.make_node("ReduceMean", ["blocks"], ["block_means"], axes=[2, 4], keepdims=0, name="pool"),
        helper.make_node("Reshape", ["block_means", "feature_shape"], ["features"], name="flatten"),
        helper.make_node("MatMul", ["features", "tag_weight"], ["logits_raw"], name="classifier"),
        helper.make_node("Add", ["logits_raw", "tag_bias"], ["logits"], name="classifier_bias"),
        helper.make_node("Sigmoid", ["logits"], [output_name], name="predictions"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_wd14_tagger",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, input_size, input_size, 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, len(names)])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lora_studio.tiny"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_wd14_tagger(
    directory: Path,
    *,
    input_size: int = 448,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "output",
    seed: int = 0,
) -> TinyTagger:
    """Write model.onnx and selected_tags.csv into directory (a hub repo root); same arguments, same bytes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = tag_table()
    names = [name for _, name, _, _ in rows]
    categories = [category for _, _, category, _ in rows]
    model = build_model(
        names,
        categories,
        input_size=input_size,
        dynamic_batch=dynamic_batch,
        input_name=input_name,
        output_name=output_name,
        seed=seed,
    )
    model_path = directory / "model.onnx"
    tags_path = directory / "selected_tags.csv"
    model_path.write_bytes(model.SerializeToString())
    with tags_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows(rows)
    return TinyTagger(
        directory=directory,
        model_path=model_path,
        tags_path=tags_path,
        tags=tuple(names),
        categories=tuple(categories),
        input_name=input_name,
        output_name=output_name,
        input_size=input_size,
        dynamic_batch=dynamic_batch,
    )


def _blob_name(path: Path) -> str:
    """The hub's etag for a file: sha256 for LFS files (model.onnx), the git blob sha1 for small text files."""
    data = path.read_bytes()
    if path.suffix in (".csv", ".json", ".md", ".txt"):
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return hashlib.sha256(data).hexdigest()


def write_hub_layout(
    cache_dir: Path,
    repo_id: str = "SmilingWolf/wd-vit-tagger-v3",
    revision: str = FAKE_COMMIT,
    *,
    refs: tuple[str, ...] = ("main",),
    input_size: int = 448,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "output",
    seed: int = 0,
) -> Path:
    """Put the tiny tagger into a huggingface_hub cache as `revision` (and each ref); return the snapshot dir.

    Layout as huggingface_hub writes it: `models--{org}--{name}/blobs/<etag>`, `snapshots/<commit>/<file>`
    (a relative symlink to the blob, or a copy where symlinks are unavailable), `refs/<ref>` holding the commit.
    `hf_hub_download(repo_id, "model.onnx", revision=..., cache_dir=cache_dir)` then resolves it offline.
    """
    if len(revision) != 40 or any(c not in "0123456789abcdef" for c in revision):
        raise ValueError(f"revision must be a 40-character lowercase hex commit, got {revision!r}")
    storage = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / revision
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=storage) as staging:
        tagger = write_tiny_wd14_tagger(
            Path(staging),
            input_size=input_size,
            dynamic_batch=dynamic_batch,
            input_name=input_name,
            output_name=output_name,
            seed=seed,
        )
        for source in (tagger.model_path, tagger.tags_path):
            blob = storage / "blobs" / _blob_name(source)
            os.replace(source, blob)
            _link_or_copy(blob, snapshot / source.name)
    (storage / "refs").mkdir(exist_ok=True)
    for ref in refs:
        ref_path = storage / "refs" / ref
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(revision)  # no trailing newline, as huggingface_hub writes it
    return snapshot


def _link_or_copy(blob: Path, pointer: Path) -> None:
    """Point pointer at blob with a relative symlink, as huggingface_hub does; copy if symlinks fail."""
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:
        shutil.copyfile(blob, pointer)
