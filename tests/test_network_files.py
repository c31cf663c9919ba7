"""LoRA files: validated reading, hostile inputs, atomic writing, A1111's hash, ss_*/modelspec metadata."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import struct
import time
import tracemalloc
from pathlib import Path
from typing import BinaryIO

import pytest
import safetensors.torch
import torch

from lib_lora.errors import LoraFormatError
from lib_lora.networks.files import (
    LEGACY_HASH_KEY,
    MAX_HEADER_BYTES,
    MODEL_HASH_KEY,
    addnet_hash,
    load_lora_file,
    read_header,
    save_lora_file,
    short_hash,
)
from lib_lora.networks.metadata import LoraMetadata, arch_from_metadata, parse_metadata

pytestmark = pytest.mark.hostcompat


def _tensors(dtype: torch.dtype = torch.float32, rank: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(rank, 32, generator=g).to(dtype),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, rank, generator=g).to(dtype),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(float(rank)),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(rank, 16, generator=g).to(dtype),
    }


def _raw_safetensors(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    encoded = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
    return path


def _data_section(blob: bytes) -> bytes:
    return blob[8 + struct.unpack("<Q", blob[:8])[0] :]


# --- round trip and hashes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_keeps_tensors_and_metadata(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = _tensors(dtype)
    metadata = {"ss_network_dim": "4", "ss_output_name": "chara ✓", "modelspec.title": "chara"}
    path = tmp_path / "chara.safetensors"
    digest = save_lora_file(path, tensors, metadata)

    loaded = load_lora_file(path)
    assert loaded.path == path
    assert loaded.tensors.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert loaded.tensors[key].dtype == tensor.dtype
        assert torch.equal(loaded.tensors[key], tensor), key
    assert loaded.metadata == {**metadata, MODEL_HASH_KEY: digest, LEGACY_HASH_KEY: loaded.metadata[LEGACY_HASH_KEY]}
    assert safetensors.torch.load_file(path).keys() == tensors.keys()  # the installed safetensors reads it too


def test_save_takes_views_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    tensors = {"t": base.t(), "v": base[2:4], "grad": torch.ones(3, requires_grad=True)}
    save_lora_file(tmp_path / "v.safetensors", tensors, {})
    loaded = load_lora_file(tmp_path / "v.safetensors").tensors
    assert all(torch.equal(loaded[k], t.detach()) for k, t in tensors.items())


def test_hash_is_a1111s_addnet_hash_of_the_written_file(tmp_path: Path) -> None:
    tensors = _tensors(torch.float16)
    path = tmp_path / "a.safetensors"
    digest = save_lora_file(path, tensors, {"ss_network_dim": "4"})

    blob = path.read_bytes()
    assert digest == addnet_hash(path) == hashlib.sha256(_data_section(blob)).hexdigest()
    assert read_header(path).metadata[MODEL_HASH_KEY] == digest
    # same data section as the safetensors library writes for these tensors, so the same hash as sd-scripts'
    assert _data_section(blob) == _data_section(safetensors.torch.save(tensors))
    assert short_hash(digest) == digest[:12]


def test_hash_does_not_depend_on_metadata(tmp_path: Path) -> None:
    tensors = _tensors()
    first = save_lora_file(tmp_path / "a.safetensors", tensors, {})
    second = save_lora_file(tmp_path / "b.safetensors", tensors, {"ss_output_name": "x" * 1000, "note": "é"})
    assert first == second == addnet_hash(tmp_path / "a.safetensors") == addnet_hash(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() != (tmp_path / "b.safetensors").read_bytes()


def test_legacy_hash_follows_sd_scripts_recipe(tmp_path: Path) -> None:
    tensors = {"big": torch.arange(400_000, dtype=torch.float32), "small": torch.ones(3, dtype=torch.float16)}
    path = tmp_path / "big.safetensors"
    save_lora_file(path, tensors, {"ss_seed": "1", "modelspec.title": "t"})
    blob = path.read_bytes()
    header = json.loads(blob[8 : 8 + struct.unpack("<Q", blob[:8])[0]])
    # the same file with only the ss_* metadata, written out by hand
    header["__metadata__"] = {"ss_seed": "1"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    training_only = struct.pack("<Q", len(encoded)) + encoded + _data_section(blob)
    assert safetensors.torch.load(training_only).keys() == tensors.keys()
    expected = hashlib.sha256(training_only[0x100000:0x110000]).hexdigest()[:8]
    assert read_header(path).metadata[LEGACY_HASH_KEY] == expected

    # metadata outside ss_* does not change it; the ss_* metadata does (it shifts the bytes at 1 MiB)
    save_lora_file(tmp_path / "b.safetensors", tensors, {"ss_seed": "1", "modelspec.title": "other"})
    save_lora_file(tmp_path / "c.safetensors", tensors, {"ss_seed": "1", "ss_output_name": "longer name"})
    assert read_header(tmp_path / "b.safetensors").metadata[LEGACY_HASH_KEY] == expected
    assert read_header(tmp_path / "c.safetensors").metadata[LEGACY_HASH_KEY] != expected


def test_given_hash_keys_are_replaced(tmp_path: Path) -> None:
    digest = save_lora_file(tmp_path / "a.safetensors", _tensors(), {MODEL_HASH_KEY: "stale", LEGACY_HASH_KEY: "x"})
    assert read_header(tmp_path / "a.safetensors").metadata[MODEL_HASH_KEY] == digest


def test_load_moves_to_the_requested_device(tmp_path: Path) -> None:
    save_lora_file(tmp_path / "a.safetensors", _tensors(), {})
    loaded = load_lora_file(tmp_path / "a.safetensors", device="meta")
    assert all(t.device.type == "meta" for t in loaded.tensors.values())


# --- atomic writes ----------------------------------------------------------------------------------------------


def _fail(*args: object, **kwargs: object) -> None:
    raise OSError("injected failure")


@pytest.mark.parametrize("where", ["replace", "fsync", "write"])
def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "keep.safetensors"
    save_lora_file(path, _tensors(), {"ss_output_name": "old"})
    before = path.read_bytes()
    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FailsOnSecondWrite(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, where, _fail)

    with pytest.raises(OSError, match="injected failure"):
        save_lora_file(path, _tensors(rank=8), {"ss_output_name": "new"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]


class _FailsOnSecondWrite:
    """A file whose second write fails: the header is on disk, the data is not."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.writes = file, 0

    def write(self, chunk: bytes) -> int:
        self.writes += 1
        if self.writes == 2:
            raise OSError("injected failure")
        return self.file.write(chunk)

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)

    def __enter__(self) -> _FailsOnSecondWrite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def test_failed_write_to_a_new_target_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "replace", _fail)
    with pytest.raises(OSError, match="injected failure"):
        save_lora_file(tmp_path / "new.safetensors", _tensors(), {})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_write_onto_a_directory_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(OSError):
        save_lora_file(tmp_path / "dir.safetensors", _tensors(), {})
    assert [p.name for p in tmp_path.iterdir()] == ["dir.safetensors"]


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"a": torch.tensor([1.0, float("nan")])}, {}, "NaN"),
        ({"a": torch.tensor([float("inf")])}, {}, "infinite"),
        ({"a": [1.0]}, {}, "not a tensor"),
        ({"a": torch.ones(1, dtype=torch.complex64)}, {}, "unsupported dtype"),
        ({}, {}, "no tensors"),
        ({"a": torch.ones(1)}, {"ss_network_dim": 4}, "not a string"),
    ],
)
def test_save_refuses_what_load_would_refuse(tmp_path: Path, tensors: dict, metadata: dict, message: str) -> None:
    with pytest.raises(LoraFormatError, match=message):
        save_lora_file(tmp_path / "a.safetensors", tensors, metadata)
    assert list(tmp_path.iterdir()) == []


def test_save_wants_safetensors(tmp_path: Path) -> None:
    with pytest.raises(LoraFormatError, match=r"\.safetensors"):
        save_lora_file(tmp_path / "a.pt", _tensors(), {})


# --- hostile and broken files -----------------------------------------------------------------------------------


def test_header_bomb_is_refused_fast_without_allocating(tmp_path: Path) -> None:
    path = _raw_safetensors(tmp_path / "bomb.safetensors", b"{}", length=2**40)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        for reader in (read_header, load_lora_file):
            with pytest.raises(LoraFormatError, match="limit") as caught:
                reader(path)
            assert caught.value.path == path
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.1
    assert peak < 1024 * 1024


@pytest.mark.parametrize(
    ("header", "data", "length", "message", "key"),
    [
        (b"{}", b"", 1000, "larger than", None),
        (b"\xff\xfe{}", b"", None, "not UTF-8", None),
        (b"{not json", b"", None, "not valid JSON", None),
        (b"[" * 50_000 + b"]" * 50_000, b"", None, "not valid JSON", None),
        (b'{"a": 1, "a": 2}', b"", None, "duplicate", None),
        ([1, 2], b"", None, "not an object", None),
        ({"a": [1]}, b"", None, "not an object", "a"),
        ({"__metadata__": {"ss_seed": 1}}, b"", None, "not a string", "ss_seed"),
        ({"__metadata__": ["x"]}, b"", None, "__metadata__", None),
        ({"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "unknown dtype", "a"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, None, "needs 8 bytes", "a"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "non-negative", "a"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, None, "ordered", "a"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4, None, "two integers", "a"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 2, None, "truncated", "a"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "unused bytes", "a"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 6, None, "belong to none", None),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            b"\0" * 8,
            None,
            "overlap",
            "b",
        ),
    ],
)
def test_broken_headers_are_named_errors(
    tmp_path: Path, header: object, data: bytes, length: int | None, message: str, key: str | None
) -> None:
    path = _raw_safetensors(tmp_path / "bad.safetensors", header, data, length=length)
    for reader in (read_header, load_lora_file):
        with pytest.raises(LoraFormatError, match=message) as caught:
            reader(path)
        assert caught.value.path == path
        assert caught.value.key == key
        assert str(path) in str(caught.value)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_lora_file(path, _tensors(), {})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(LoraFormatError, match="truncated"):
        load_lora_file(path)


def test_header_is_checked_before_safetensors_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors as library

    opened = []
    monkeypatch.setattr(library, "safe_open", lambda *a, **k: opened.append(a))
    path = _raw_safetensors(tmp_path / "bad.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    with pytest.raises(LoraFormatError):
        load_lora_file(path)
    assert opened == []


@pytest.mark.parametrize("name", ["empty.safetensors", "empty.pt"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(LoraFormatError, match="empty"):
        load_lora_file(tmp_path / name)


def test_short_file_header(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(LoraFormatError, match="8 length bytes"):
        read_header(tmp_path / "a.safetensors")


def test_file_with_no_tensors(tmp_path: Path) -> None:
    with pytest.raises(LoraFormatError, match="no tensors"):
        load_lora_file(_raw_safetensors(tmp_path / "none.safetensors", {"__metadata__": {"a": "b"}}))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_finite_values_are_refused_naming_the_key(tmp_path: Path, bad: float, suffix: str) -> None:
    tensors = {"ok": torch.ones(2), "lora_unet_x.lora_up.weight": torch.tensor([[0.0, bad]], dtype=torch.float16)}
    path = tmp_path / f"bad{suffix}"
    if suffix == ".pt":
        torch.save(tensors, path)
    else:
        path.write_bytes(safetensors.torch.save(tensors))
    with pytest.raises(LoraFormatError, match="NaN" if bad != bad else "infinite") as caught:
        load_lora_file(path)
    assert caught.value.key == "lora_unet_x.lora_up.weight"


def test_size_cap(tmp_path: Path) -> None:
    save_lora_file(tmp_path / "a.safetensors", _tensors(), {})
    with pytest.raises(LoraFormatError, match="more than the 100 allowed"):
        load_lora_file(tmp_path / "a.safetensors", max_bytes=100)


def test_missing_directory_and_wrong_extension(tmp_path: Path) -> None:
    with pytest.raises(LoraFormatError, match="no such file"):
        load_lora_file(tmp_path / "missing.safetensors")
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(LoraFormatError, match="directory"):
        load_lora_file(tmp_path / "folder.safetensors")
    with pytest.raises(LoraFormatError, match="directory"):
        read_header(tmp_path / "folder.safetensors")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(LoraFormatError, match="unsupported file type '.txt'"):
        load_lora_file(tmp_path / "notes.txt")


def test_addnet_hash_refuses_non_safetensors(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(struct.pack("<Q", 99) + b"{}")
    with pytest.raises(LoraFormatError, match="header length"):
        addnet_hash(tmp_path / "a.safetensors")


# --- pickles ----------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file: the code a malicious .pt would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Payload(control)))  # the payload is live: plain unpickling runs it
    assert control.exists()

    marker = tmp_path / "marker"
    payload = {"lora_unet_x.alpha": torch.ones(()), "evil": _Payload(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(LoraFormatError, match="pickled code is never run") as caught:
        load_lora_file(path)
    assert caught.value.path == path
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin"])
def test_plain_tensor_pickles_load(tmp_path: Path, suffix: str) -> None:
    tensors = _tensors(torch.float16)
    torch.save(tensors, tmp_path / f"a{suffix}")
    loaded = load_lora_file(tmp_path / f"a{suffix}")
    assert loaded.metadata == {}
    assert all(torch.equal(loaded.tensors[k], t) for k, t in tensors.items())


def test_state_dict_wrapper_loads(tmp_path: Path) -> None:
    torch.save({"state_dict": {"a": torch.ones(2)}, "epoch": 3}, tmp_path / "a.ckpt")
    assert load_lora_file(tmp_path / "a.ckpt").tensors.keys() == {"a"}


@pytest.mark.parametrize(
    ("payload", "message", "key"),
    [
        ({"a": torch.ones(1), "step": 5}, "not a tensor", "step"),
        ({"nested": {"a": torch.ones(1)}}, "not a tensor", "nested"),
        ([torch.ones(1)], "dict of tensors", None),
        ({1: torch.ones(1)}, "strings", None),
    ],
)
def test_pickles_of_other_things_are_refused(tmp_path: Path, payload: object, message: str, key: str | None) -> None:
    torch.save(payload, tmp_path / "a.pt")
    with pytest.raises(LoraFormatError, match=message) as caught:
        load_lora_file(tmp_path / "a.pt")
    assert caught.value.key == key


def test_garbage_pickle_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "a.pt").write_bytes(b"this is not a torch file at all")
    with pytest.raises(LoraFormatError, match="not a readable PyTorch file"):
        load_lora_file(tmp_path / "a.pt")


# --- metadata ---------------------------------------------------------------------------------------------------


def _metadata(**changes: object) -> LoraMetadata:
    base = LoraMetadata(
        arch="sd1",
        network_dim=16,
        network_alpha=8,
        network_args={"conv_dim": "4", "conv_alpha": "1"},
        output_name="my_char",
        steps=1200,
        epochs=10,
        optimizer="torch.optim.adamw.AdamW",
        learning_rate=1e-4,
        unet_lr=1e-4,
        text_encoder_lr=5e-5,
        seed=42,
        clip_skip=2,
        mixed_precision="bf16",
        noise_offset=0.05,
        dataset_dirs={"10_my_char": {"n_repeats": 10, "img_count": 25}},
        tag_frequency={"10_my_char": {"1girl": 25, "smile": 12}},
        training_started_at=1_700_000_000.25,
        training_finished_at=1_700_003_600.5,
    )
    return dataclasses.replace(base, **changes)


def test_to_metadata_writes_sd_scripts_encodings() -> None:
    meta = _metadata().to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "16"
    assert meta["ss_network_alpha"] == "8.0"
    assert meta["ss_learning_rate"] == "0.0001"
    assert meta["ss_text_encoder_lr"] == "5e-05"
    assert meta["ss_v2"] == "False"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_num_train_images"] == "250"
    assert meta["ss_training_started_at"] == "1700000000.25"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1"}
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.title"] == "my_char"
    assert meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.date"] == "2023-11-14T23:13:20+00:00"
    assert meta["modelspec.encoder_layer"] == "2"
    assert "ss_sd_model_name" not in meta and "ss_min_snr_gamma" not in meta  # unset fields are left out


def test_sdxl_modelspec_and_resolution() -> None:
    meta = _metadata(arch="sdxl", resolution=(1024, 768), output_name="").to_metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_resolution"] == "(1024, 768)"
    assert meta["modelspec.resolution"] == "1024x768"
    assert meta["modelspec.title"].startswith("LoRA@2023-11-14")
    assert "ss_output_name" not in meta


def test_json_fields_round_trip_through_a_file(tmp_path: Path) -> None:
    built = _metadata()
    save_lora_file(tmp_path / "a.safetensors", _tensors(), built.to_metadata())
    parsed = parse_metadata(load_lora_file(tmp_path / "a.safetensors").metadata)
    assert parsed["ss_tag_frequency"] == built.tag_frequency
    assert parsed["ss_dataset_dirs"] == built.dataset_dirs
    assert parsed["ss_network_args"] == built.network_args
    assert parsed["ss_network_dim"] == "16"  # plain values stay strings, as A1111 leaves them


def test_parse_metadata_decodes_only_json_objects_and_arrays() -> None:
    parsed = parse_metadata({"d": '{"a": 1}', "l": "[1, 2]", "broken": "{nope", "n": "1.5", "s": "(512, 512)"})
    assert parsed == {"d": {"a": 1}, "l": [1, 2], "broken": "{nope", "n": "1.5", "s": "(512, 512)"}


@pytest.mark.parametrize(
    ("changes", "field", "shown"),
    [
        ({"arch": "sd3"}, "arch", "'sd3'"),
        ({"network_dim": 0}, "network_dim", "0"),
        ({"network_dim": True}, "network_dim", "True"),
        ({"network_alpha": -1.0}, "network_alpha", "-1.0"),
        ({"network_alpha": float("nan")}, "network_alpha", "nan"),
        ({"learning_rate": "1e-4"}, "learning_rate", "'1e-4'"),
        ({"network_dropout": 1.5}, "network_dropout", "1.5"),
        ({"mixed_precision": "fp8"}, "mixed_precision", "'fp8'"),
        ({"prediction_type": "x0"}, "prediction_type", "'x0'"),
        ({"steps": -1}, "steps", "-1"),
        ({"seed": 1.5}, "seed", "1.5"),
        ({"clip_skip": 0}, "clip_skip", "0"),
        ({"resolution": (512,)}, "resolution", "(512,)"),
        ({"resolution": (512, 0)}, "resolution", "(512, 0)"),
        ({"network_module": ""}, "network_module", "''"),
        ({"optimizer": 3}, "optimizer", "3"),
        ({"shuffle_caption": "yes"}, "shuffle_caption", "'yes'"),
        ({"network_args": {"conv_dim": [4]}}, "network_args", "{'conv_dim': [4]}"),
        (
            {"dataset_dirs": {"10_x": {"n_repeats": 0, "img_count": 3}}},
            "dataset_dirs['10_x']",
            "{'n_repeats': 0, 'img_count': 3}",
        ),
        ({"dataset_dirs": {"10_x": {"img_count": 3}}}, "dataset_dirs['10_x']", "{'img_count': 3}"),
        ({"tag_frequency": {"10_x": {"tag": -1}}}, "tag_frequency['10_x']['tag']", "-1"),
        ({"tag_frequency": ["tag"]}, "tag_frequency", "['tag']"),
        ({"training_finished_at": 1.0}, "training_finished_at", "1.0"),
    ],
)
def test_metadata_validation_names_the_field_and_value(changes: dict, field: str, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        _metadata(**changes)
    assert f"`{field}`" in str(caught.value)
    assert f"got {shown}" in str(caught.value)


def test_resolution_list_is_accepted_as_a_tuple() -> None:
    assert _metadata(resolution=[640, 512]).resolution == (640, 512)


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_arch_detection_reads_back_what_we_write(arch: str) -> None:
    meta = _metadata(arch=arch).to_metadata()
    assert arch_from_metadata(meta) == arch
    assert arch_from_metadata(parse_metadata(meta)) == arch
    only_modelspec = {k: v for k, v in meta.items() if k.startswith("modelspec.")}
    assert arch_from_metadata(only_modelspec) == arch


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"ss_base_model_version": "sdxl_base_v0-9"}, "sdxl"),
        ({"ss_base_model_version": "sd_v2_v"}, "sd2"),
        ({"ss_v2": "True", "ss_network_dim": "4"}, "sd2"),
        ({"ss_v2": "False"}, "sd1"),
        ({"modelspec.architecture": "stable-diffusion-v2-512/lora"}, "sd2"),
        ({"modelspec.architecture": "flux-1-dev/lora"}, None),
        ({"ss_base_model_version": "flux1"}, None),
        ({"ss_network_dim": "4"}, None),
        ({}, None),
    ],
)
def test_arch_detection_cases(metadata: dict, expected: str | None) -> None:
    assert arch_from_metadata(metadata) == expected


def test_max_header_constant_is_a_sane_bound() -> None:
    assert 1024 * 1024 <= MAX_HEADER_BYTES <= 100_000_000  # safetensors itself refuses headers over 100 MB
