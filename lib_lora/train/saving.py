"""Writing what a run learned: the LoRA file with sd-scripts' metadata, its Lora-card sidecars, rotation of saves.

File names follow sd-scripts: `<name>.safetensors` at the end, `<name>-000005.safetensors` per epoch,
`<name>-step00001000.safetensors` per step (and a stop: what was learned so far). Beside the final file (and a
stop's) go A1111's card files: `<name>.json` (activation text, preferred weight, sd version, notes) and
`<name>.preview.png` (the last sample). Every write is atomic; a card file replaced is backed up first. A LoRA that
cannot be written where asked is written under a safe name beside it, else in the temp folder (`save_or_rescue`).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic import write_atomically
from ..backups import back_up, backup_stamp
from ..errors import LoraStudioError
from ..networks.files import save_lora_file
from ..networks.metadata import LoraMetadata, TrainingRecord, run_file_metadata
from .errors import TrainingError

if TYPE_CHECKING:
    from ..hosts.base import Host
    from .config import TrainConfig

SAVE_DTYPES = {None: None, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SD_VERSIONS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
"""Our family names → the `sd version` values A1111's Lora card uses."""
_STEP_FILE = re.compile(r"-step(\d{8})")
_EPOCH_FILE = re.compile(r"-(\d{6})")


def epoch_name(name: str, epoch: int) -> str:
    return f"{name}-{epoch:06d}"


def step_name(name: str, step: int) -> str:
    return f"{name}-step{step:08d}"


def lora_path(folder: Path, stem: str) -> Path:
    return Path(folder) / f"{stem}.safetensors"


@dataclass
class RunFacts:
    """What the metadata records about the run besides the config: where it stands and where it ran."""

    arch: str
    prediction_type: str
    model_name: str
    seed: int
    session_id: int
    started_at: float
    total_steps: int
    total_epochs: int
    optimizer: str
    data_metadata: dict[str, str] = field(default_factory=dict)
    """The data source's own keys, rendered by networks.metadata (DatasetRecord, and a mode's ModeRecord)."""
    network_metadata: dict[str, str] = field(default_factory=dict)
    """The trained network's own keys, rendered by networks.metadata (NetworkRecord, and a mode's ModeRecord)."""
    activation_text: str | None = None
    validation_loss: float | None = None
    """The latest validation loss (validation_run.py sets it before each save), and where it was measured."""
    validation_step: int | None = None
    validation_seed: int | None = None
    validation_timesteps: int | None = None


def build_metadata(config: TrainConfig, facts: RunFacts, *, step: int, epoch: int,
                   finished: bool) -> dict[str, str]:
    """The ss_* and modelspec.* strings of a save at `step`/`epoch` (sd-scripts' names and encodings), with the data
    source's and the network's own keys (`run_file_metadata`)."""
    run, data, opt = config.run, config.data, config.optimizer
    try:
        record = LoraMetadata(
            arch=facts.arch,
            network_dim=config.network.network_dim,
            network_alpha=float(config.network.network_alpha),
            network_module=config.network.network_module,
            network_dropout=config.network.network_dropout,
            output_name=run.output_name,
            sd_model_name=facts.model_name,
            resolution=tuple(data.resolution),
            prediction_type="v" if facts.prediction_type == "v_prediction" else "epsilon",
            steps=step,
            max_train_steps=facts.total_steps,
            epochs=facts.total_epochs,
            epoch=epoch,
            batch_size=data.train_batch_size,
            gradient_accumulation_steps=run.gradient_accumulation_steps,
            gradient_checkpointing=run.gradient_checkpointing,
            optimizer=facts.optimizer,
            learning_rate=opt.learning_rate,
            unet_lr=opt.unet_lr,
            text_encoder_lr=opt.text_encoder_lr,
            lr_scheduler=opt.lr_scheduler,
            lr_warmup_steps=_warmup_steps(opt.lr_warmup_steps, facts.total_steps),
            seed=facts.seed,
            mixed_precision=run.mixed_precision,
            clip_skip=run.clip_skip,
            noise_offset=run.noise_offset,
            min_snr_gamma=run.min_snr_gamma,
            training_started_at=facts.started_at,
            training_finished_at=time.time() if finished else None,
            session_id=facts.session_id,
            training_comment=run.training_comment,
            trigger_phrase=facts.activation_text,
            validation_loss=facts.validation_loss,
            validation_step=facts.validation_step,
            validation_seed=facts.validation_seed if facts.validation_loss is not None else None,
            validation_timesteps=facts.validation_timesteps if facts.validation_loss is not None else None,
            training=training_record(config),
        )
        return run_file_metadata(record, dataset=facts.data_metadata, network=facts.network_metadata)
    except ValueError as error:
        raise TrainingError(f"cannot write the metadata: {error}") from error


def training_record(config: TrainConfig) -> TrainingRecord:
    """The run's sd-scripts keys that LoraMetadata's own fields do not cover, as its config holds them."""
    run, opt, network = config.run, config.optimizer, config.network
    return TrainingRecord(
        full_fp16=run.full_fp16,
        fp8_base=run.fp8_base,
        fp8_base_unet=run.fp8_base_unet,
        max_grad_norm=opt.max_grad_norm,
        lr_scheduler_num_cycles=opt.lr_scheduler_num_cycles,
        lr_scheduler_power=opt.lr_scheduler_power,
        multires_noise_iterations=run.multires_noise_iterations,
        multires_noise_discount=run.multires_noise_discount,
        adaptive_noise_scale=run.adaptive_noise_scale,
        noise_offset_random_strength=run.noise_offset_random_strength,
        loss_type=run.loss_type,
        huber_schedule=run.huber_schedule,
        huber_c=run.huber_c,
        scale_weight_norms=network.scale_weight_norms,
        total_batch_size=config.data.train_batch_size * run.gradient_accumulation_steps,
        cache_text_encoder_outputs=run.cache_text_encoder_outputs,
        network_train_unet_only=network.network_train_unet_only,
        network_train_text_encoder_only=network.network_train_text_encoder_only,
        timestep_range=tuple(run.timestep_range),
    )


def _warmup_steps(value: float, total: int) -> int:
    return int(value * total) if 0 < value < 1 else int(value)


def save_network_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write the LoRA atomically (folder created); TrainingError naming the file when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_lora_file(path, tensors, metadata)
    except OSError as error:
        raise TrainingError(f"cannot write {path}: {error.strerror or error}") from error
    except LoraStudioError as error:
        raise TrainingError(f"cannot write {path}: {error}") from error
    return path


RESCUE_NAME_BYTES = 40
"""The most bytes of the output name a rescue file keeps (ASCII letters, digits, - and _ only)."""


def rescue_paths(path: Path) -> list[Path]:
    """Where a LoRA that cannot be written at `path` goes instead, in order: a short safe name beside it, then the
    same name in the system's temp folder."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:RESCUE_NAME_BYTES].strip("_") or "lora"
    name = f"{safe}-rescued-{backup_stamp()}.safetensors"
    candidates = [path.parent / name, Path(tempfile.gettempdir()) / name]
    return list(dict.fromkeys(candidates))


def save_or_rescue(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], *,
                   refused: str | None = None) -> tuple[Path | None, str | None]:
    """Write the LoRA at `path`, else at the first of `rescue_paths` that takes it: (where it went, or None when
    nowhere would; None, or what went wrong in user words). `refused`: do not try `path`, for this reason."""
    if refused is None:
        try:
            return save_network_file(path, tensors, metadata), None
        except LoraStudioError as error:
            refused = str(error)
    tried = []
    for candidate in rescue_paths(path):
        try:
            save_network_file(candidate, tensors, metadata)
        except LoraStudioError:
            tried.append(str(candidate.parent))
            continue
        return candidate, f"not written to {path} ({refused}); the weights were saved to {candidate} instead"
    return None, (f"not written to {path} ({refused}), nor in {' or '.join(tried)}: the weights are only in memory "
                  "and are lost when this program ends")


def card_sidecar(arch: str, *, activation_text: str | None, preferred_weight: float, notes: str | None,
                 description: str | None = None, existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `<name>.json` A1111's Lora card reads; fields the user already set (and we do not) are kept."""
    card: dict[str, Any] = dict(existing or {})
    card["sd version"] = SD_VERSIONS.get(arch, "Unknown")
    card["preferred weight"] = preferred_weight
    for key, value in (("activation text", activation_text), ("notes", notes), ("description", description)):
        if value:
            card[key] = value
        else:
            card.setdefault(key, "")
    card.setdefault("negative text", "")
    return card


def write_card_files(lora_file: Path, card: Mapping[str, Any], preview: Path | None, *,
                     stamp: str | None = None) -> tuple[list[Path], list[Path]]:
    """Write `<name>.json` and, from the last sample, `<name>.preview.png` beside `lora_file`, atomically, each
    file replaced backed up first (under time `stamp`); returns (the files written, their backups)."""
    written: list[Path] = []
    backups: list[Path] = []
    stamp = stamp or backup_stamp()
    sidecar = lora_file.with_suffix(".json")
    try:
        contents = [(sidecar, json.dumps(card, indent=4, ensure_ascii=False).encode("utf-8"))]
        if preview is not None and preview.is_file():
            contents.append((lora_file.with_name(lora_file.stem + ".preview.png"), preview.read_bytes()))
        for target, data in contents:
            backup = back_up(target, stamp=stamp)
            backups += [backup] if backup is not None else []
            write_atomically(target, [data])
            written.append(target)
    except OSError as error:
        raise TrainingError(f"cannot write the LoRA card files beside {lora_file}: {error.strerror or error}") \
            from error
    return written, backups


def read_sidecar(lora_file: Path) -> dict[str, Any]:
    """The existing `<name>.json` (empty when there is none or it is not a JSON object)."""
    try:
        data = json.loads(lora_file.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def rotate_step_saves(folder: Path, name: str, *, current_step: int, keep_last_n_steps: int) -> list[Path]:
    """Delete `<name>-stepN` saves (and their states) with N <= current_step - keep_last_n_steps."""
    return _rotate(folder, name, _STEP_FILE, lambda n: n <= current_step - keep_last_n_steps)


def rotate_epoch_saves(folder: Path, name: str, *, current_epoch: int, keep_last_n: int,
                       every_n_epochs: int) -> list[Path]:
    """Keep only the last `keep_last_n` epoch saves (taken every `every_n_epochs`) and their states."""
    return _rotate(folder, name, _EPOCH_FILE, lambda n: n <= current_epoch - keep_last_n * every_n_epochs)


def _rotate(folder: Path, name: str, pattern: re.Pattern[str], old: Any) -> list[Path]:
    """Delete the saves `<name><suffix>.safetensors` and states `<name><suffix>-state/` whose number is old."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(".safetensors"):
            stem = path.name[: -len(".safetensors")]
        elif path.is_dir() and path.name.endswith("-state"):
            stem = path.name[: -len("-state")]
        else:
            continue
        match = pattern.fullmatch(stem[len(name):]) if stem.startswith(name) else None
        if match is None or not old(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # a save that cannot be deleted stays; training goes on
                continue
        removed.append(path)
    return removed


def default_activation_text(dataset_dirs_json: str | None) -> str | None:
    """The class name of the first `<repeats>_<name>` training folder (sd-scripts' instance token)."""
    if not dataset_dirs_json:
        return None
    try:
        folders = json.loads(dataset_dirs_json)
    except ValueError:
        return None
    for folder in folders:
        repeats, sep, name = str(folder).partition("_")
        if sep and repeats.isdigit() and name.strip():
            return name.strip()
    return None


def host_model_name(host: Host) -> str:
    try:
        return host.info().model_name
    except Exception:  # a host that cannot describe itself still trains; the name is only metadata
        return "unknown"
