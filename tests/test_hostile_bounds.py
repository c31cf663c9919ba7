"""Hostile sizes: no input makes us allocate without bound. A compressed pickle is bounded by what it unpacks to
before torch reads it, every other file reader by its size, every numeric training option by its range, and a
run that cannot fit the device's memory is refused before anything is read.

The place for the next hostile-size case: a row in one of the tables below. Cases that would allocate gigabytes
without their fix run in a child process under RLIMIT_AS, so a regression fails instead of eating the machine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lib_lora.dataset.tagging import models as tagger_models
from lib_lora.dataset.tagging.models import TaggerModelError
from lib_lora.dataset.tagging.tagger import TagLabels
from lib_lora.errors import BlockWeightError, LoraFormatError, LoraStudioError
from lib_lora.networks import pickle_limits
from lib_lora.networks.files import MAX_LORA_BYTES, load_lora_file, save_safetensors_file
from lib_lora.train import config as train_config
from lib_lora.train.bounds import NETWORK_ARG_BOUNDS, OPTION_BOUNDS, bounds_of
from lib_lora.train.config import PARTS, TRAIN_HELP, TrainConfig
from lib_lora.train.errors import ConfigError, TrainingError
from lib_lora.train.latent_cache import LatentCache, LatentKey
from lib_lora.train.network.config import NetworkArgs

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3

# --- compressed pickles -------------------------------------------------------------------------------------------


def _zip(members: list[tuple[str, int, int, bytes, int]]) -> bytes:
    """A zip of (name, method, crc, stored bytes, unpacked size) members, written field by field so a member can
    claim any unpacked size (zipfile cannot write a deflate stream it did not make)."""
    out, directory = io.BytesIO(), []
    for name, method, crc, data, size in members:
        offset, encoded = out.tell(), name.encode()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
                              len(encoded), 0) + encoded + data)
        directory.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                                     len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    start, listing = out.tell(), b"".join(directory)
    out.write(listing + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(listing),
                                    start, 0))
    return out.getvalue()


def write_bomb(path: Path, unpacked: int) -> Path:
    """A torch.save file whose one storage is a real deflate stream of `unpacked` zero bytes (about 1/1000 of
    it on disk: 3 GiB in 3 MB). Each 1 MiB block is flushed to a byte boundary with a fresh dictionary, so the
    compressed block repeats and the bomb costs milliseconds to make."""
    saved = io.BytesIO()
    torch.save({"lora_unet_x.alpha": torch.zeros(4)}, saved)
    members = []
    with zipfile.ZipFile(io.BytesIO(saved.getvalue())) as archive:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename.endswith("/data/0"):
                deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
                block = deflate.compress(bytes(1 << 20)) + deflate.flush(zlib.Z_FULL_FLUSH)
                stream = block * (unpacked >> 20) + deflate.flush(zlib.Z_FINISH)
                members.append((info.filename, zipfile.ZIP_DEFLATED, 0, stream, unpacked))
            else:
                members.append((info.filename, zipfile.ZIP_STORED, zlib.crc32(data), data, len(data)))
    path.write_bytes(_zip(members))
    return path


def write_expanded_view(path: Path) -> Path:
    """A 4-byte storage seen as a [2**31] tensor (stride 0): torch.save keeps the view, so loading it is cheap and
    every pass over its values (isfinite, a copy to the GPU) allocates the full 2**31 elements."""
    torch.save({"lora_unet_x.alpha": torch.zeros(1).expand(2**31)}, path)
    return path


CHILD = """
import json, re, resource, sys
from pathlib import Path
from lib_lora.networks.files import load_lora_file
from lib_lora.train import resume_state as state

size = int(re.search(r"VmSize:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
limit = size + (1 << 30)  # one GiB past what the interpreter and torch already map
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
readers = {"lora file": load_lora_file, "training state": state._load}
results = {}
for case, path, reader in json.loads(sys.argv[1]):
    try:
        readers[reader](Path(path))
        results[case] = ["loaded", ""]
    except BaseException as error:
        results[case] = [type(error).__name__, str(error)]
print(json.dumps(results))
"""

MEMORY_CASES: list[tuple[str, Callable[[Path], Path], str, str]] = [
    ("3 GiB storage in a 3 MB .pt", lambda d: write_bomb(d / "bomb.pt", 3 * GIB), "lora file", "unpacks to"),
    ("3 GiB storage in a resume state", lambda d: write_bomb(d / "optimizer.bin", 3 * GIB), "training state",
     "unpacks to"),
    ("2**31-element view of 4 bytes", lambda d: write_expanded_view(d / "view.pt"), "lora file",
     "zero or overlapping strides"),
]


def test_compressed_and_expanded_pickles_are_refused_before_they_allocate(tmp_path: Path) -> None:
    cases = [(case, str(make(tmp_path)), reader) for case, make, reader, _ in MEMORY_CASES]
    assert (tmp_path / "bomb.pt").stat().st_size < 4_000_000
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert child.returncode == 0, child.stderr[-2000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    for case, _, _, fragment in MEMORY_CASES:
        kind, message = results[case]
        assert kind == "LoraFormatError" and fragment in message, f"{case}: {kind}: {message[:500]}"
        assert len(message) < 500
    assert time.perf_counter() - started < 60


def _saved(path: Path) -> Path:
    torch.save({"lora_unet_x.alpha": torch.ones(()), "lora_unet_x.lora_down.weight": torch.ones(2, 4)}, path)
    return path


PICKLE_LIMITS: list[tuple[str, dict[str, int], Callable[[Path], Path], str]] = [
    ("more members than allowed", {"MAX_MEMBERS": 3}, _saved, "members, more than the 3 allowed"),
    ("a directory over its limit", {"MAX_DIRECTORY_BYTES": 100}, _saved, "directory is"),
    ("a pickle part over its limit", {"MAX_PICKLE_BYTES": 50}, _saved, "its pickle unpacks to"),
    ("PyTorch's pre-1.6 format", {},
     lambda p: torch.save({"a": torch.ones(2)}, p, _use_new_zipfile_serialization=False) or p, "not a zip"),
    ("a plain pickle", {}, lambda p: p.write_bytes(b"\x80\x02}q\x00.") and p, "not a zip"),
    ("a zip without its end record", {}, lambda p: p.write_bytes(_saved(p).read_bytes()[:-22]) and p,
     "no end record"),
]


@pytest.mark.parametrize(("what", "limits", "make", "fragment"), PICKLE_LIMITS,
                         ids=[what for what, *_ in PICKLE_LIMITS])
def test_pickle_limits_are_checked_from_the_zip_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          what: str, limits: dict[str, int],
                                                          make: Callable[[Path], Path], fragment: str) -> None:
    path = make(tmp_path / "a.pt")
    assert load_lora_file(_saved(tmp_path / "fine.pt")).tensors  # the same kind of file, within the limits
    for name, value in limits.items():
        monkeypatch.setattr(pickle_limits, name, value)
    with pytest.raises(LoraFormatError, match=fragment) as caught:
        load_lora_file(path)
    assert caught.value.path == path


def test_a_pickle_that_unpacks_past_the_callers_limit_is_refused_and_the_limit_is_the_callers(tmp_path: Path) -> None:
    path = write_bomb(tmp_path / "bomb.pt", 64 << 20)  # 64 MiB: loadable when the caller allows it
    with pytest.raises(LoraFormatError, match=f"more than the {32 << 20} allowed"):
        load_lora_file(path, max_bytes=32 << 20)
    with pytest.raises(LoraFormatError, match="not a readable PyTorch file"):  # read, then torch finds no CRC
        load_lora_file(path, max_bytes=MAX_LORA_BYTES)


# --- other readers of files -------------------------------------------------------------------------------------


def _latent_key(**changes: Any) -> LatentKey:
    key = LatentKey(image="0" * 32, bucket=(64, 64), resized=(64, 64), offset=(0, 0), flipped=False, vae="v")
    return dataclasses.replace(key, **changes)


def _planted_latent(folder: Path, key: LatentKey, shape: tuple[int, ...], *, tensors: int = 1) -> None:
    from lib_lora.train.latent_cache import CACHE_FORMAT

    extra = {f"{key.digest}/more{index}": torch.zeros(1) for index in range(tensors - 1)}
    save_safetensors_file(folder / "latents-planted.safetensors",
                          {f"{key.digest}/latents": torch.zeros(shape), **extra}, {"format": CACHE_FORMAT})


@pytest.mark.parametrize(("what", "shape", "tensors"), [
    ("a latent 64 times the key's area", (4, 64, 64), 1),
    ("more channels than any VAE", (64, 8, 8), 1),
    ("a second tensor beside it", (4, 8, 8), 2),
    ("a flat tensor", (256,), 1),
])
def test_a_planted_latent_cache_file_is_not_loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, what: str,
                                                   shape: tuple[int, ...], tensors: int) -> None:
    from lib_lora.train import cache_shards

    key = _latent_key()
    _planted_latent(tmp_path, key, shape, tensors=tensors)
    opened: list[str] = []
    real_open = cache_shards.safe_open
    monkeypatch.setattr(cache_shards, "safe_open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    assert LatentCache(tmp_path).get(key) is None
    assert opened == [], f"{what}: the tensor was loaded before its size was checked"
    _planted_latent(tmp_path, key, (4, 8, 8))
    assert LatentCache(tmp_path).get(key).shape == (4, 8, 8)  # the right file still loads


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    from lib_lora.tiny.tagger import write_tiny_wd14_tagger

    return write_tiny_wd14_tagger(tmp_path_factory.mktemp("tagger") / "tiny", input_size=64).directory


def test_tagger_files_over_their_limits_are_refused_before_reading(monkeypatch: pytest.MonkeyPatch,
                                                                   tiny_tagger: Path) -> None:
    pytest.importorskip("onnxruntime")
    from lib_lora.dataset.tagging import tagger
    from lib_lora.dataset.tagging.tagger import Tagger

    files = tagger_models.resolve_model(str(tiny_tagger))
    assert Tagger.load(files).input_size == 64
    monkeypatch.setattr(tagger, "MAX_TAGS_BYTES", 100)
    with pytest.raises(TaggerModelError, match="more than the 100"):
        TagLabels.from_csv(files.tags_path)
    monkeypatch.setattr(tagger, "MAX_TAGS_BYTES", tagger_models.MAX_TAGS_BYTES)
    monkeypatch.setattr(tagger, "MAX_MODEL_BYTES", 100)
    with pytest.raises(TaggerModelError, match="more than the 100"):
        Tagger.load(files)


@pytest.mark.parametrize(("what", "options"), [
    ("an input side of 4096 (200 MB of floats per image)", {"input_size": 4096}),
    ("a fixed batch of 100000", {"input_size": 64, "batch": 100_000}),
])
def test_a_tagger_asking_for_huge_inputs_is_refused_when_loaded(tmp_path: Path, what: str,
                                                                options: dict[str, int]) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from lib_lora.dataset.tagging.tagger import Tagger
    from lib_lora.tiny.tagger import write_tiny_wd14_tagger

    batch = options.pop("batch", None)
    tiny = write_tiny_wd14_tagger(tmp_path / "big", dynamic_batch=batch is None, **options)
    if batch is not None:
        model = onnx.load(str(tiny.model_path))
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = batch
        onnx.save(model, str(tiny.model_path))
    with pytest.raises(TaggerModelError, match="larger than a tagger's"):
        Tagger.load(tagger_models.resolve_model(str(tiny.directory)))


BIG_TEXT_FILES: list[tuple[str, str, Callable[[Path], object]]] = [
    ("training config", "MAX_CONFIG_BYTES", lambda p: TrainConfig.from_toml(p)),
    ("block-weight preset file", "MAX_PRESET_FILE_BYTES", lambda p: _presets().PresetBook.from_file(p)),
    ("user preset file", "MAX_PRESET_FILE_BYTES", lambda p: _userpresets().read_user_text(p)),
]


def _presets() -> Any:
    from lib_lora.blocks import presets

    return presets


def _userpresets() -> Any:
    from lib_lora.blocks import userpresets

    return userpresets


@pytest.mark.parametrize(("what", "limit", "read"), BIG_TEXT_FILES, ids=[what for what, *_ in BIG_TEXT_FILES])
def test_text_files_over_their_limit_are_refused_having_read_only_the_limit(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, what: str, limit: str, read: Callable[[Path], object]) -> None:
    module = train_config if limit == "MAX_CONFIG_BYTES" else _presets()
    monkeypatch.setattr(module, limit, 1000)
    path = tmp_path / "big.txt"
    path.write_text("# comment line\n" * 100, encoding="utf-8")
    with pytest.raises((ConfigError, BlockWeightError), match="larger than"):
        read(path)


# --- numeric training options -----------------------------------------------------------------------------------


def _numeric_fields() -> list[str]:
    """Every int/float field (or tuple of them) of the four config parts, found from the annotations."""
    names = []
    for _, part in PARTS:
        for item in dataclasses.fields(part):
            kind = str(item.type)
            if ("int" in kind or "float" in kind) and "dict" not in kind:
                names.append(item.name)
    return names


def test_every_numeric_option_has_bounds_and_its_help_shows_them() -> None:
    numeric = _numeric_fields()
    assert len(numeric) > 30 and "resolution" in numeric and "learning_rate" in numeric
    assert sorted(numeric) == sorted(OPTION_BOUNDS), "an option without bounds, or bounds without an option"
    for name in numeric:
        bounds = OPTION_BOUNDS[name]
        assert bounds.high < float("inf") and f"Range: {bounds.describe()}" in TRAIN_HELP[name]
    typed_args = [item.name for item in dataclasses.fields(NetworkArgs) if "int" in str(item.type)
                  or "float" in str(item.type) or item.name.endswith("_lr_weight")]
    assert sorted(typed_args) == sorted(NETWORK_ARG_BOUNDS)


# the options that need another set for their bound to be the first thing checked
CONTEXT: dict[str, dict[str, Any]] = {"lr_warmup_steps": {"lr_scheduler": "constant_with_warmup"}}
# values past the top that are otherwise valid (multiples of 8 where those are required)
PAST_TOP: dict[str, Any] = {"resolution": "4104", "bucket_reso_steps": 520}


def _past_top(name: str) -> Any:
    bounds = bounds_of(name)
    if name in PAST_TOP:
        return PAST_TOP[name]
    if bounds.high_open:
        return bounds.high
    return int(bounds.high) + 1 if bounds.integer else bounds.high * 2 + 1


@pytest.mark.parametrize("name", sorted(OPTION_BOUNDS))
def test_every_numeric_option_refuses_a_value_past_its_top_naming_the_range(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({name: _past_top(name), **CONTEXT.get(name, {})})
    assert caught.value.key == name
    assert OPTION_BOUNDS[name].describe() in str(caught.value)


@pytest.mark.parametrize("name", sorted(NETWORK_ARG_BOUNDS))
def test_every_numeric_network_arg_refuses_a_value_past_its_top(name: str) -> None:
    module = "lycoris.kohya" if name == "factor" else "networks.lora"
    value = _past_top(f"network_args.{name}")
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({"network_module": module, "network_args": [f"{name}={value}"]})
    assert caught.value.key == f"network_args.{name}"
    assert NETWORK_ARG_BOUNDS[name].describe() in str(caught.value)


@pytest.mark.parametrize(("values", "fragment"), [
    ({"resolution": "100000"}, "resolution = '100000': each side: must be at least 8 and at most 4096"),
    ({"resolution": "4096,100000"}, "at most 4096"),
    ({"max_train_steps": 10**400}, "max_train_steps = 1000"),
    ({"network_dim": "1e300"}, "network_dim"),
    ({"noise_offset": "inf"}, "must be a finite number"),
    ({"train_batch_size": 100_000}, "at most 256"),
    ({"gradient_accumulation_steps": 2**62}, "at most 1024"),
])
def test_absurd_values_are_one_short_config_error(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(values)
    assert fragment in str(caught.value) and len(str(caught.value)) < 400


def test_tops_are_accepted() -> None:
    config = TrainConfig.from_dict({"resolution": "4096", "max_train_steps": 1_000_000, "network_dim": 1024,
                                    "train_batch_size": 256, "learning_rate": 10, "enable_bucket": True,
                                    "max_bucket_reso": 4096, "min_bucket_reso": 256})
    assert config.resolution == (4096, 4096) and config.network_dim == 1024


def test_the_command_line_refuses_resolution_100000_before_loading_a_model(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    from lib_lora.cli.main import main

    (tmp_path / "cfg.toml").write_text('pretrained_model_name_or_path = "tiny"\noutput_dir = "out"\n',
                                       encoding="utf-8")
    started = time.perf_counter()
    code = main(["train", str(tmp_path / "cfg.toml"), "--set", "resolution='100000'"], out=io.StringIO())
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lora-studio: error:")]
    assert code == 2 and len(lines) == 1 and "resolution" in lines[0] and "4096" in lines[0]
    assert time.perf_counter() - started < 5


# --- the memory preflight ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host
    from lib_lora.tiny.images import generate_dataset

    data = tmp_path_factory.mktemp("data")
    generate_dataset(data, count=2, repeats=1, sizes=((64, 64),))
    return load_diffusers_host("tiny"), data


def _config(data: Path, out: Path, **values: Any) -> TrainConfig:
    return TrainConfig.from_dict({"pretrained_model_name_or_path": "tiny", "train_data_dir": str(data),
                                  "output_dir": str(out), "caption_extension": ".txt", "resolution": "64",
                                  "network_dim": 4, "max_train_steps": 1, "seed": 1, **values})


@pytest.mark.parametrize(("what", "values", "advice"), [
    ("activations", {"train_batch_size": 64}, "lower resolution (now 64,64) or train_batch_size (now 64), or "
                                              "turn on gradient_checkpointing"),
    ("encoding images", {"resolution": "4096", "vae_batch_size": 256, "gradient_checkpointing": True},
     "lower resolution (now 4096,4096) or vae_batch_size (now 256)"),
    ("the network", {"network_dim": 1024, "train_batch_size": 1, "gradient_checkpointing": True},
     "lower network_dim (now 1024)"),
])
def test_the_preflight_refusal_says_the_estimate_what_is_free_and_what_to_lower(
        tiny_run: tuple[Any, Path], tmp_path: Path, what: str, values: dict[str, Any], advice: str) -> None:
    from lib_lora.train.vram import check_fits

    host, data = tiny_run
    config = _config(data, tmp_path, **values)
    estimate = check_fits(config, host, available=(1 << 50, "of RAM available"))  # fits a large machine
    with pytest.raises(TrainingError) as caught:
        check_fits(config, host, available=(estimate.peak - 1, "of RAM available"))
    message = str(caught.value)
    assert message.startswith("this run needs about ") and "(estimate, ±30%" in message, message
    assert "of RAM available" in message and advice in message, f"{what}: {message}"


def test_a_run_that_cannot_fit_is_refused_before_any_image_is_read(monkeypatch: pytest.MonkeyPatch,
                                                                   tiny_run: tuple[Any, Path], tmp_path: Path) -> None:
    from lib_lora.train import data as train_data
    from lib_lora.train import vram
    from lib_lora.train.loop import TrainRun

    host, data = tiny_run
    prepared: list[bool] = []
    monkeypatch.setattr(train_data.TrainData, "prepare", lambda self, control=None: prepared.append(True))
    monkeypatch.setattr(vram, "available_memory", lambda device: (1 << 20, "of RAM available"))
    refusal = r"needs about .* MiB more memory .* and only 1\.0 MiB of RAM available; lower "
    with pytest.raises(TrainingError, match=refusal):
        TrainRun(_config(data, tmp_path), host).run()
    assert prepared == []
    assert not list(tmp_path.glob("*.safetensors"))


def test_available_memory_is_known_on_the_cpu() -> None:
    from lib_lora.train.vram import available_memory

    found = available_memory(torch.device("cpu"))
    assert found is not None and 0 < found[0] < 1 << 50 and found[1] == "of RAM available"


def test_errors_in_this_file_are_core_errors() -> None:
    assert issubclass(ConfigError, LoraStudioError) and issubclass(TrainingError, LoraStudioError)
