"""One writer for LoRA metadata: every file we write keeps exactly the keys and values it had, no module outside
lib_lora/networks/metadata/ writes a metadata key, and the records it renders from check their fields.

The tables at the end were captured from the code before the keys moved into the metadata records; values that
change from run to run (times, hashes, the session id, losses) are replaced by a placeholder but must still be there.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_run_helpers import make_pattern_dataset, tiny_config

from lib_lora.networks.files import read_header, save_lora_file, save_safetensors_file
from lib_lora.networks.metadata import (
    DYNAMIC,
    DatasetRecord,
    LoraMetadata,
    ModeRecord,
    NetworkRecord,
    TrainingRecord,
    run_file_metadata,
)
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.networks.tools import (
    bake_into_checkpoint,
    block_weight_lora_file,
    checkpoint_index,
    extract_lora_file,
    merge_lora_files,
    resize_lora_file,
)
from lib_lora.tiny.checkpoint import tiny_sd1_checkpoint_state_dict
from lib_lora.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {
    "ss_training_started_at": "<time>",
    "ss_training_finished_at": "<time>",
    "modelspec.date": "<date>",
    "ss_session_id": "<session>",
    "sshs_model_hash": "<hash>",
    "sshs_legacy_hash": "<hash>",
    "ss_validation_loss": "<loss>",
    "lora_studio_rounds_error": "<error>",
}
"""Keys whose value differs between runs (or torch versions): only their presence is compared."""
_HASH = re.compile(r"\b[0-9a-f]{64}\b")


def expected_table(common: dict[str, str], own: dict[str, str | None]) -> dict[str, str]:
    """`common` with `own`'s values over it (None: the key is not written)."""
    merged = {**common, **own}
    return {key: value for key, value in merged.items() if value is not None}


def normalised(metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` with volatile values replaced by their placeholder and file hashes inside JSON by <hash>."""
    return {key: VOLATILE.get(key, _HASH.sub("<hash>", value)) for key, value in metadata.items()}


# --- the files of the network tools --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny SD1 checkpoint, a copy with a LoRA baked in, and three LoRAs (one LoHa, one with training keys)."""
    folder = tmp_path_factory.mktemp("tools")
    tensors = tiny_sd1_checkpoint_state_dict(0)
    index = checkpoint_index(tensors, "sd1")
    paths = {"base": folder / "base.safetensors"}
    save_safetensors_file(paths["base"], tensors, {"format": "pt"})
    trained = LoraMetadata(arch="sd1", network_dim=4, network_alpha=2.0, output_name="trained", steps=120,
                           epoch=3, training_comment="from a run", network_args={"conv_dim": 2})
    for name, kind, rank, alpha, seed, metadata in (
        ("a", "lora", 4, 2.0, 1, trained),
        ("b", "lora", 2, None, 2, LoraMetadata(arch="sd1", network_dim=2, network_alpha=2.0)),
        ("loha", "loha", 4, 2.0, 3, LoraMetadata(arch="sd1", network_dim=4, network_alpha=2.0,
                                                 network_module="lycoris.kohya", network_args={"algo": "loha"})),
    ):
        paths[name] = folder / f"{name}.safetensors"
        state = random_lora_state_dict(index, kind=kind, rank=rank, alpha=alpha, seed=seed, roots=("unet", "te1"))
        save_lora_file(paths[name], state, metadata.to_metadata())
    paths["tuned"] = folder / "tuned.safetensors"
    bake_into_checkpoint(paths["base"], [(paths["b"], 1.0)], paths["tuned"])
    return paths


def _merge(inputs: dict[str, Path], out: Path) -> None:
    merge_lora_files([inputs["a"], inputs["b"]], [0.7, -0.3], out)


def _merge_svd(inputs: dict[str, Path], out: Path) -> None:
    merge_lora_files([inputs["a"], inputs["b"]], [1.0, 1.0], out, rank=3)


def _resize(inputs: dict[str, Path], out: Path) -> None:
    resize_lora_file(inputs["a"], out, rank=2)


def _resize_loha(inputs: dict[str, Path], out: Path) -> None:
    resize_lora_file(inputs["loha"], out, sv_ratio=4.0)


def _extract(inputs: dict[str, Path], out: Path) -> None:
    extract_lora_file(inputs["base"], inputs["tuned"], out, rank=2)


def _block_weights(inputs: dict[str, Path], out: Path) -> None:
    weights = {"BASE": 1.0, "IN01": 0.5, "IN02": 0.0, "OUT11": 0.25}
    block_weight_lora_file(inputs["a"], out, weights, strength=0.8, spec="a preset")


def _bake(inputs: dict[str, Path], out: Path) -> None:
    bake_into_checkpoint(inputs["tuned"], [(inputs["a"], 0.5)], out)


TOOLS: dict[str, Callable[[dict[str, Path], Path], None]] = {
    "merge": _merge, "merge_svd": _merge_svd, "resize": _resize, "resize_loha": _resize_loha, "extract": _extract,
    "block_weights": _block_weights, "bake": _bake,
}


@pytest.mark.hostcompat
@pytest.mark.parametrize("name", TOOLS)
def test_a_tool_writes_the_metadata_it_always_wrote(name: str, tool_inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / f"{name}.safetensors"
    TOOLS[name](tool_inputs, out)
    expected = BAKED if name == "bake" else expected_table(TOOL_COMMON, TOOL_OWN[name])
    assert normalised(read_header(out).metadata) == expected


# --- the files of training runs ------------------------------------------------------------------------------------


def _write_pair(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    original = np.full((64, 64, 3), 128, np.uint8)
    target = original.copy()
    target[:32, :32] = (230, 30, 30)
    paths = folder / "pair.png", folder / "pair_target.png"
    for path, pixels in zip(paths, (original, target)):
        Image.fromarray(pixels).save(path)
    return paths


def _run_config(tmp: Path, mode: str) -> TrainConfig:
    data = make_pattern_dataset(tmp / "data", count=2 if mode == "rounds" else 4, repeats=1 if mode == "rounds" else 2)
    common = {"max_train_steps": 2, "optimizer_args": ["foreach=True"]}
    if mode == "lora":
        return tiny_config(data, tmp / "out", training_comment="hello", activation_text="zq word",
                           network_dropout=0.1, scale_weight_norms=1.0, validation_split=0.25, validation_seed=11,
                           noise_offset=0.05, **common)
    if mode == "slider":
        return tiny_config(data, tmp / "out", training_mode="slider", slider_prompt="zqred", slider_target="",
                           train_data_dir=None, network_train_unet_only=True, **common)
    if mode == "difference":
        original, target = _write_pair(tmp / "pairs")
        return tiny_config(data, tmp / "out", training_mode="difference", difference_original=str(original),
                           difference_target=str(target), difference_caption="zqpair", difference_method="direct",
                           train_data_dir=None, network_train_unet_only=True, **common)
    rounds = ["learning_rate=1e-4,epochs=1,merge=0.7", "learning_rate=5e-5,epochs=1,merge=0.9"]
    values = {**tiny_config(data, tmp / "out").to_dict(), "training_mode": "rounds", "rounds": rounds,
              "rounds_rank": 3, "optimizer_args": ["foreach=True"]}
    values.pop("max_train_steps")
    return TrainConfig.from_dict(values)


MODES = ("lora", "slider", "difference", "rounds")


@pytest.fixture(scope="module")
def host() -> object:
    pytest.importorskip("diffusers")
    from lib_lora.hosts.diffusers import load_diffusers_host

    return load_diffusers_host("tiny")


@pytest.mark.parametrize("mode", MODES)
def test_a_training_run_writes_the_metadata_it_always_wrote(mode: str, host: object, tmp_path: Path) -> None:
    from lib_lora.train.loop import TrainRun

    result = TrainRun(_run_config(tmp_path, mode), host).run()
    assert result.output is not None
    assert normalised(read_header(result.output).metadata) == expected_table(RUN_COMMON, RUN_OWN[mode])


# --- no other writer ---------------------------------------------------------------------------------------------

PACKAGE = ROOT / "lib_lora" / "networks" / "metadata"


def own_keys() -> frozenset[str]:
    """Our own metadata keys: the lora_studio_* strings the metadata package names."""
    return frozenset(node.value for path in PACKAGE.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Constant) and str(node.value).startswith("lora_studio_"))


def key_writes(source: str, own: frozenset[str]) -> list[str]:
    """Where `source` writes a metadata key literal: a dict display's key, an item assigned, deleted, popped or set
    by default, a keyword of dict()/update() named like a key, or a key given a name of its own (`KEY = "ss_..."`)."""
    def is_key(text: object) -> bool:
        return isinstance(text, str) and (text.startswith(("ss_", "modelspec.")) or text in own)

    found = []
    for node in ast.walk(ast.parse(source)):
        candidates: list[ast.expr] = []
        if isinstance(node, ast.Dict):
            candidates = [key for key in node.keys if key is not None]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            candidates = [node.slice]
        elif isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            candidates = node.args[:1] if called in ("pop", "setdefault", "__setitem__") else []
            if called in ("dict", "update"):
                found += [f"{node.lineno}: {k.arg}=" for k in node.keywords if is_key(k.arg)]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            candidates = [node.value]
        found += [f"{c.lineno}: {c.value!r}" for c in candidates if isinstance(c, ast.Constant) and is_key(c.value)]
    return found


@pytest.mark.hostcompat
def test_only_the_metadata_package_writes_metadata_keys() -> None:
    own = own_keys()
    assert {"lora_studio_operation", "lora_studio_merge", "lora_studio_training_mode"} <= own
    writers = {}
    for path in sorted((ROOT / "lib_lora").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if PACKAGE in path.parents:
            continue
        writes = key_writes(path.read_text(encoding="utf-8"), own)
        if writes:
            writers[name] = writes
    assert writers == {}


@pytest.mark.hostcompat
@pytest.mark.parametrize(("source", "count"), [
    ('out = {"ss_network_dim": "4"}', 1),
    ('out["modelspec.title"] = "x"', 1),
    ('meta.pop("ss_network_args", None); meta.setdefault("lora_studio_merge", "{}")', 2),
    ('KEY = "lora_studio_operation"', 1),
    ("meta = dict(ss_steps='3'); meta.update(ss_epoch='1')", 2),
    ('Arch(name="sd1", ss_base_model_version="sd_v1")', 0),
    ('del meta["ss_v2"]', 1),
    ('value = meta.get("ss_steps"); shown = meta["ss_network_dim"]; keys = ("ss_v2", "ss_epoch")', 0),
    ('out = {"lora_studio_train_tab": 1, "elem_id": "lora_studio_operation"}', 0),
])
def test_the_writer_check_sees_writes_and_not_reads(source: str, count: int) -> None:
    assert len(key_writes(source, own_keys())) == count


# --- the records ---------------------------------------------------------------------------------------------------


@pytest.mark.hostcompat
def test_a_dataset_record_writes_what_a_run_s_data_wrote() -> None:
    record = DatasetRecord(
        num_train_images=6, num_reg_images=0, num_batches_per_epoch=3, batch_size=2,
        dataset_dirs={"2_zqpattern": {"n_repeats": 2, "img_count": 3}}, reg_dataset_dirs={},
        tag_frequency={"2_zqpattern": {"zqpattern": 3}},
        bucket_info={"buckets": {"0": {"resolution": [64, 64], "count": 6}}, "mean_img_ar_error": 0.0},
        enable_bucket=False, bucket_no_upscale=False, min_bucket_reso=256, max_bucket_reso=1024, shuffle_caption=False,
        keep_tokens=0, caption_dropout_rate=0.0, caption_dropout_every_n_epochs=0, caption_tag_dropout_rate=0.0,
        prior_loss_weight=1.0, flip_aug=False, color_aug=False, random_crop=False, cache_latents=True)
    written, lora_file = record.to_metadata(), expected_table(RUN_COMMON, RUN_OWN["lora"])
    assert written == {key: lora_file[key] for key in written}
    assert len(written) == 22 and "ss_batch_size_per_device" in written


@pytest.mark.hostcompat
@pytest.mark.parametrize(("build", "field"), [
    (lambda: NetworkRecord("networks.lora", 0, 1.0), "network_dim"),
    (lambda: NetworkRecord("networks.lora", "dynamic", 1.0), "network_dim"),
    (lambda: NetworkRecord("", 4, 1.0), "network_module"),
    (lambda: NetworkRecord("networks.lora", 4, float("inf")), "network_alpha"),
    (lambda: DatasetRecord(num_train_images=-1, num_batches_per_epoch=1), "num_train_images"),
    (lambda: DatasetRecord(num_train_images=1, num_batches_per_epoch=1, flip_aug="yes"), "flip_aug"),
    (lambda: DatasetRecord(num_train_images=1, num_batches_per_epoch=1, reg_dataset_dirs={"a": {}}),
     "reg_dataset_dirs"),
    (lambda: ModeRecord("lora"), "training_mode"),
    (lambda: ModeRecord("rounds", rounds_error=float("nan")), "rounds_error"),
    (lambda: dataclasses.replace(_training(), max_grad_norm="1.0"), "max_grad_norm"),
    (lambda: dataclasses.replace(_training(), full_fp16=1), "full_fp16"),
    (lambda: dataclasses.replace(_training(), timestep_range=(0.5, 1000)), "timestep_range"),
])
def test_records_refuse_bad_values_naming_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=f"`{re.escape(field)}"):
        build()


def _training() -> TrainingRecord:
    return TrainingRecord(
        full_fp16=False, fp8_base=False, fp8_base_unet=False, max_grad_norm=1.0, lr_scheduler_num_cycles=1,
        lr_scheduler_power=1.0,
        multires_noise_iterations=None, multires_noise_discount=0.3, adaptive_noise_scale=None,
        noise_offset_random_strength=False, loss_type="l2", huber_schedule="snr", huber_c=0.1, scale_weight_norms=None,
        total_batch_size=2, cache_text_encoder_outputs=False, network_train_unet_only=False,
        network_train_text_encoder_only=False, timestep_range=(0, 1000))


@pytest.mark.hostcompat
def test_each_part_of_a_run_file_writes_only_its_own_keys() -> None:
    run = LoraMetadata(arch="sd1", network_dim=4, network_alpha=4.0, training=_training())
    network = NetworkRecord("networks.lora", DYNAMIC, DYNAMIC).to_metadata()
    written = run_file_metadata(run, dataset=DatasetRecord(2, 1).to_metadata(), network=network)
    assert (written["ss_network_dim"], written["ss_network_alpha"]) == ("Dynamic", "Dynamic")
    assert written["modelspec.timestep_range"] == "0,1000" and "ss_scale_weight_norms" not in written
    with pytest.raises(ValueError, match="dataset metadata.*ss_network_dim"):
        run_file_metadata(run, dataset={"ss_network_dim": "8"}, network=network)
    with pytest.raises(ValueError, match="network metadata.*ss_steps"):
        run_file_metadata(run, dataset={}, network={**network, "ss_steps": "3"})


# --- the tables: what each file held before the keys moved (captured from that code) ------------------------------


RUN_COMMON: dict[str, str] = {
    "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.date": "<date>",
    "modelspec.implementation": "diffusers", "modelspec.prediction_type": "epsilon", "modelspec.resolution": "64x64",
    "modelspec.sai_model_spec": "1.0.0", "modelspec.timestep_range": "0,1000", "modelspec.title": "tinylora",
    "ss_base_model_version": "sd_v1", "ss_batch_size_per_device": "2", "ss_cache_text_encoder_outputs": "False",
    "ss_fp8_base": "False", "ss_fp8_base_unet": "False",  # added after the capture: sd-scripts writes them too
    "ss_full_fp16": "False", "ss_gradient_accumulation_steps": "1", "ss_gradient_checkpointing": "False",
    "ss_huber_c": "0.1", "ss_huber_schedule": "snr", "ss_learning_rate": "0.001", "ss_loss_type": "l2",
    "ss_lr_scheduler": "constant", "ss_lr_scheduler_num_cycles": "1", "ss_lr_scheduler_power": "1.0",
    "ss_lr_warmup_steps": "0", "ss_max_grad_norm": "1.0", "ss_max_train_steps": "2", "ss_mixed_precision": "no",
    "ss_multires_noise_discount": "0.3", "ss_network_module": "networks.lora",
    "ss_network_train_text_encoder_only": "False", "ss_noise_offset_random_strength": "False",
    "ss_optimizer": "torch.optim.AdamW(foreach=True)", "ss_output_name": "tinylora", "ss_resolution": "(64, 64)",
    "ss_sd_model_name": "tiny", "ss_session_id": "<session>", "ss_steps": "2", "ss_total_batch_size": "2",
    "ss_training_finished_at": "<time>", "ss_training_started_at": "<time>", "ss_v2": "False",
    "sshs_legacy_hash": "<hash>", "sshs_model_hash": "<hash>",
}
RUN_OWN: dict[str, dict[str, str | None]] = {
    "lora": {
        "modelspec.trigger_phrase": "zq word",
        "ss_bucket_info": '{"buckets": {"0": {"resolution": [64, 64], "count": 6}}, "mean_img_ar_error": 0.0}',
        "ss_bucket_no_upscale": "False", "ss_cache_latents": "True", "ss_caption_dropout_every_n_epochs": "0",
        "ss_caption_dropout_rate": "0.0", "ss_caption_tag_dropout_rate": "0.0", "ss_color_aug": "False",
        "ss_dataset_dirs": '{"2_zqpattern": {"n_repeats": 2, "img_count": 3}}', "ss_enable_bucket": "False",
        "ss_epoch": "0", "ss_flip_aug": "False", "ss_keep_tokens": "0", "ss_max_bucket_reso": "1024",
        "ss_min_bucket_reso": "256", "ss_network_alpha": "4.0", "ss_network_dim": "4", "ss_network_dropout": "0.1",
        "ss_network_train_unet_only": "False", "ss_noise_offset": "0.05", "ss_num_batches_per_epoch": "3",
        "ss_num_epochs": "1", "ss_num_reg_images": "0", "ss_num_train_images": "6", "ss_prior_loss_weight": "1.0",
        "ss_random_crop": "False", "ss_reg_dataset_dirs": "{}", "ss_scale_weight_norms": "1.0", "ss_seed": "1",
        "ss_shuffle_caption": "False", "ss_tag_frequency": '{"2_zqpattern": {"zqpattern": 3}}',
        "ss_training_comment": "hello", "ss_validation_loss": "<loss>", "ss_validation_seed": "11",
        "ss_validation_step": "2", "ss_validation_timesteps": "4",
    },
    "slider": {
        "lora_studio_slider_prompts": (
            '[{"target": "zqred", "positive": "", "unconditional": "zqred", "neutral": "zqred", '
            '"action": "enhance", "guidance_scale": 1.0}]'
        ),
        "lora_studio_training_mode": "slider", "ss_epoch": "2", "ss_network_alpha": "4.0", "ss_network_dim": "4",
        "ss_network_train_unet_only": "True", "ss_num_batches_per_epoch": "1", "ss_num_epochs": "2",
        "ss_num_train_images": "0", "ss_seed": "1",
    },
    "difference": {
        "lora_studio_difference_pairs": '[{"original": "pair.png", "target": "pair_target.png"}]',
        "lora_studio_training_mode": "difference", "ss_epoch": "2", "ss_network_alpha": "4.0", "ss_network_dim": "4",
        "ss_network_train_unet_only": "True", "ss_num_batches_per_epoch": "1", "ss_num_epochs": "2",
        "ss_num_train_images": "2", "ss_seed": "1",
    },
    "rounds": {
        "lora_studio_rounds": "learning_rate=0.0001,epochs=1,merge=0.7;learning_rate=5e-05,epochs=1,merge=0.9",
        "lora_studio_rounds_error": "<error>", "lora_studio_training_mode": "rounds",
        "modelspec.trigger_phrase": "zqpattern",
        "ss_bucket_info": '{"buckets": {"0": {"resolution": [64, 64], "count": 2}}, "mean_img_ar_error": 0.0}',
        "ss_bucket_no_upscale": "False", "ss_cache_latents": "True", "ss_caption_dropout_every_n_epochs": "0",
        "ss_caption_dropout_rate": "0.0", "ss_caption_tag_dropout_rate": "0.0", "ss_color_aug": "False",
        "ss_dataset_dirs": '{"1_zqpattern": {"n_repeats": 1, "img_count": 2}}', "ss_enable_bucket": "False",
        "ss_epoch": "2", "ss_flip_aug": "False", "ss_keep_tokens": "0", "ss_max_bucket_reso": "1024",
        "ss_min_bucket_reso": "256", "ss_network_alpha": "3.0", "ss_network_dim": "3",
        "ss_network_train_unet_only": "False", "ss_num_batches_per_epoch": "1", "ss_num_epochs": "2",
        "ss_num_reg_images": "0", "ss_num_train_images": "2", "ss_prior_loss_weight": "1.0", "ss_random_crop": "False",
        "ss_reg_dataset_dirs": "{}", "ss_seed": "3", "ss_shuffle_caption": "False",
        "ss_tag_frequency": '{"1_zqpattern": {"zqpattern": 2}}',
    },
}
TOOL_COMMON: dict[str, str] = {
    "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.implementation": "diffusers",
    "modelspec.prediction_type": "epsilon", "modelspec.resolution": "512x512", "modelspec.sai_model_spec": "1.0.0",
    "ss_base_model_version": "sd_v1", "ss_mixed_precision": "no", "ss_network_module": "networks.lora",
    "ss_resolution": "(512, 512)", "ss_v2": "False", "sshs_legacy_hash": "<hash>", "sshs_model_hash": "<hash>",
}
TOOL_OWN: dict[str, dict[str, str | None]] = {
    "merge": {
        "lora_studio_merge": (
            '{"method": "concat", "density": 1.0, "seed": 0, "rank": null, '
            '"sources": [{"name": "a.safetensors", "sshs_model_hash": "<hash>", "weight": 0.7}, '
            '{"name": "b.safetensors", "sshs_model_hash": "<hash>", "weight": -0.3}]}'
        ),
        "lora_studio_operation": "merged by LoRA Studio (concat) from a.safetensors × 0.7, b.safetensors × -0.3",
        "modelspec.merged_from": "a, b", "modelspec.title": "merge", "ss_network_alpha": "6.0", "ss_network_dim": "6",
        "ss_output_name": "merge",
        "ss_training_comment": "merged by LoRA Studio (concat) from a.safetensors × 0.7, b.safetensors × -0.3",
    },
    "merge_svd": {
        "lora_studio_merge": (
            '{"method": "svd", "density": 1.0, "seed": 0, "rank": 3, "sources": [{"name": "a.safetensors", '
            '"sshs_model_hash": "<hash>", "weight": 1.0}, {"name": "b.safetensors", '
            '"sshs_model_hash": "<hash>", "weight": 1.0}]}'
        ),
        "lora_studio_operation": "merged by LoRA Studio (svd) from a.safetensors × 1, b.safetensors × 1",
        "modelspec.merged_from": "a, b", "modelspec.title": "merge_svd", "ss_network_alpha": "3.0",
        "ss_network_dim": "3", "ss_output_name": "merge_svd",
        "ss_training_comment": "merged by LoRA Studio (svd) from a.safetensors × 1, b.safetensors × 1",
    },
    "resize": {
        "lora_studio_operation": "resized by LoRA Studio with rank 2 from lora rank 4", "modelspec.title": "trained",
        "ss_epoch": "3", "ss_network_alpha": "1.0", "ss_network_args": '{"conv_dim": 2}', "ss_network_dim": "2",
        "ss_output_name": "trained", "ss_steps": "120",
        "ss_training_comment": "resized by LoRA Studio with rank 2 from lora rank 4; from a run",
    },
    "resize_loha": {
        "lora_studio_operation": "resized by LoRA Studio with sv_ratio 4.0 from loha rank 4",
        "modelspec.title": "LoRA", "ss_network_alpha": "Dynamic", "ss_network_dim": "Dynamic",
        "ss_training_comment": "resized by LoRA Studio with sv_ratio 4.0 from loha rank 4",
    },
    "extract": {
        "lora_studio_operation": "extracted by LoRA Studio at rank 2 from tuned.safetensors minus base.safetensors",
        "modelspec.title": "extract", "ss_network_alpha": "2.0", "ss_network_dim": "2", "ss_output_name": "extract",
        "ss_sd_model_name": "base.safetensors",
        "ss_training_comment": "extracted by LoRA Studio at rank 2 from tuned.safetensors minus base.safetensors",
    },
    "block_weights": {
        "lora_studio_merge": (
            '{"method": "blocks", "blocks": "a preset", "strength": 0.8, "weights": {"BASE": 1.0, '
            '"IN01": 0.5, "IN02": 0.0, "OUT11": 0.25}, "sources": [{"name": "a.safetensors", '
            '"sshs_model_hash": "<hash>", "weight": 0.8}]}'
        ),
        "lora_studio_operation": "a preset at strength 0.8 baked in by LoRA Studio from a.safetensors",
        "modelspec.title": "trained", "ss_epoch": "3", "ss_network_alpha": "Dynamic",
        "ss_network_args": '{"conv_dim": 2}', "ss_network_dim": "4", "ss_output_name": "trained", "ss_steps": "120",
        "ss_training_comment": "a preset at strength 0.8 baked in by LoRA Studio from a.safetensors; from a run",
    },
}
BAKED: dict[str, str] = {
    "format": "pt",
    "lora_studio_baked": (
        '[{"name": "b.safetensors", "ratio": 1.0, "sshs_model_hash": "<hash>"}, '
        '{"name": "a.safetensors", "ratio": 0.5, "sshs_model_hash": "<hash>"}]'
    ),
    "lora_studio_operation": "LoRAs baked in by LoRA Studio: a.safetensors × 0.5",
}
