"""RunConfig: how a training run goes (length, precision, noise, saving, samples), under sd-scripts' option names.

The data, network and optimizer options live in DataConfig, NetworkConfig and OptimizerConfig; TrainConfig
(config.py) puts the four together. Values from a TOML file, a form or `--set key=value` are coerced ("true",
"1e-4", "100") and checked; a bad one raises ConfigError naming the option. Each field's help text and its TOML
section live in the field's metadata; RUN_HELP collects the help so the command line and the Train tab agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .bounds import number_option
from .errors import ConfigError
from .noise import HUBER_SCHEDULES, LOSS_TYPES, NUM_TIMESTEPS
from .values import read_bool

MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp16", "bf16")
SAVE_FORMATS = ("safetensors",)
MAX_TEXT_CHARS = 65536
"""The longest text option (comments, notes, paths): they are written into the LoRA file's metadata."""


def _option(default: Any, section: str, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text, "section": section})


@dataclass
class RunConfig:
    """Run options; see RUN_HELP for each one's meaning."""

    # model
    pretrained_model_name_or_path: str | None = _option(None, "model_arguments", (
        "The model to train on: 'tiny' (built-in random SD1), 'tiny-sdxl', a diffusers folder or a .safetensors "
        "checkpoint. In the WebUI the loaded model is used and this is ignored."))
    v_parameterization: bool = _option(False, "model_arguments", (
        "The model predicts v (SD2 768-v and v-pred finetunes). In the WebUI the loaded model says which it is; "
        "a mismatch is an error."))
    clip_skip: int | None = _option(None, "model_arguments", (
        "Use the text encoder's n-th layer from the end (2 for most anime models); SD1/SD2 only. In the WebUI "
        "the WebUI's own Clip skip setting applies."))
    # length and precision
    max_train_steps: int = _option(1600, "training_arguments", "Number of optimizer steps to train.")
    max_train_epochs: int | None = _option(None, "training_arguments", (
        "Number of epochs to train; overrides max_train_steps when set."))
    gradient_accumulation_steps: int = _option(1, "training_arguments", (
        "Batches whose gradients are summed before each optimizer step (a larger effective batch)."))
    mixed_precision: str = _option("no", "training_arguments", (
        "Compute in fp16 or bf16 under autocast while the LoRA weights stay fp32 ('no' = the model's own "
        "precision)."))
    full_fp16: bool = _option(False, "training_arguments", (
        "Keep the LoRA weights and gradients in fp16 too (less memory; practitioners report it can stop SDXL "
        "learning). Needs mixed_precision = fp16."))
    full_bf16: bool = _option(False, "training_arguments", (
        "Keep the LoRA weights and gradients in bf16 too. Needs mixed_precision = bf16."))
    gradient_checkpointing: bool = _option(False, "training_arguments", (
        "Recompute activations in the backward pass instead of keeping them: much less memory, about 20-30% "
        "slower."))
    fp8_base: bool = _option(False, "training_arguments", (
        "Store the frozen UNet and text encoders in float8 for the run (each layer is cast to the compute precision "
        "as it runs): about half the memory of an fp16 model, at some precision. A model the WebUI already keeps "
        "in fp8 is used as it is; otherwise the original weights come back unchanged after the run."))
    fp8_base_unet: bool = _option(False, "training_arguments", (
        "As fp8_base, for the UNet only: the text encoders keep their precision."))
    seed: int | None = _option(None, "training_arguments", (
        "Seed of the run (network init, data order, noise); a random one is chosen and recorded when unset."))
    cache_text_encoder_outputs: bool = _option(False, "training_arguments", (
        "Encode every caption once before training (needs network_train_unet_only and fixed captions: no "
        "shuffle or dropout)."))
    cache_text_encoder_outputs_to_disk: bool = _option(False, "training_arguments", (
        "Also keep the cached text-encoder outputs on disk, beside the cached latents, read batch by batch "
        "instead of held in memory and reused by later runs while captions and text encoder are unchanged "
        "(turns cache_text_encoder_outputs on)."))
    # noise and loss
    noise_offset: float | None = _option(None, "training_arguments", (
        "Add a per-channel constant to the noise (about 0.05-0.1) so the model learns very dark and very "
        "bright images."))
    noise_offset_random_strength: bool = _option(False, "training_arguments", (
        "Use a random strength between 0 and noise_offset for each image."))
    adaptive_noise_scale: float | None = _option(None, "training_arguments", (
        "Add |mean of the latent| × this to noise_offset (needs noise_offset)."))
    multires_noise_iterations: int | None = _option(None, "training_arguments", (
        "Pyramid (multi-resolution) noise levels, 6-10 typical."))
    multires_noise_discount: float = _option(0.3, "training_arguments", (
        "Weight decay of each coarser pyramid-noise level."))
    min_snr_gamma: float | None = _option(None, "training_arguments", (
        "Min-SNR weighting of the loss over timesteps; 5 is the recommended value."))
    min_timestep: int | None = _option(None, "training_arguments", "Smallest timestep trained (0-999; default 0).")
    max_timestep: int | None = _option(None, "training_arguments", (
        "Timesteps trained are below this (1-1000; default 1000)."))
    loss_type: str = _option("l2", "training_arguments", (
        "Loss function: l2 (mean squared error), l1, huber or smooth_l1."))
    huber_schedule: str = _option("snr", "training_arguments", (
        "How the Huber threshold varies with the timestep: constant, exponential or snr."))
    huber_c: float = _option(0.1, "training_arguments", "The Huber threshold (or its floor with a schedule).")
    # saving
    output_dir: str | None = _option(None, "saving_arguments", (
        "Folder the LoRA is written to. In the WebUI and the app: the LoRA folder."))
    output_name: str = _option("last", "saving_arguments", (
        "File name of the LoRA without extension; also its name in <lora:name:1>."))
    save_model_as: str = _option("safetensors", "saving_arguments", (
        "File format; only safetensors is written (pickles can run code when loaded)."))
    save_precision: str | None = _option(None, "saving_arguments", (
        "Precision of the saved weights: float, fp16 or bf16 (default: float)."))
    save_every_n_epochs: int | None = _option(None, "saving_arguments", "Also save a LoRA every n epochs.")
    save_every_n_steps: int | None = _option(None, "saving_arguments", "Also save a LoRA every n steps.")
    save_last_n_epochs: int | None = _option(None, "saving_arguments", (
        "Keep only the last n epoch saves (older ones are deleted)."))
    save_last_n_steps: int | None = _option(None, "saving_arguments", (
        "Keep only the step saves of the last n steps (older ones are deleted)."))
    save_state: bool = _option(False, "saving_arguments", (
        "With every save, also write a state folder (weights, optimizer, scheduler, step, RNG) to resume from."))
    save_state_on_train_end: bool = _option(False, "saving_arguments", "Write a state folder when training ends.")
    save_on_cancel: bool = _option(True, "saving_arguments", (
        "When a run is stopped, save what was learned so far (and its state when save_state is on)."))
    resume: str | None = _option(None, "saving_arguments", (
        "A state folder written by save_state: continue that run from where it stopped."))
    training_comment: str | None = _option(None, "saving_arguments", "Comment stored in the file's metadata.")
    # the Lora card (name.json beside the file, as A1111 reads it)
    activation_text: str | None = _option(None, "saving_arguments", (
        "Trigger words shown on the LoRA card and added to the prompt when it is clicked (default: the name of "
        "the first <repeats>_<name> training folder)."))
    preferred_weight: float = _option(1.0, "saving_arguments", "The weight the LoRA card inserts (<lora:name:w>).")
    notes: str | None = _option(None, "saving_arguments", "Notes shown on the LoRA card.")
    # samples
    sample_prompts: str | None = _option(None, "sample_prompt_arguments", (
        "A prompt file (.txt, .toml or .json in sd-scripts' format, --n --w --h --d --l --s options) for sample "
        "images; the last sample becomes the LoRA's preview."))
    sample_every_n_steps: int | None = _option(None, "sample_prompt_arguments", "Render samples every n steps.")
    sample_every_n_epochs: int | None = _option(None, "sample_prompt_arguments", "Render samples every n epochs.")
    sample_at_first: bool = _option(False, "sample_prompt_arguments", "Render samples before the first step.")

    def __post_init__(self) -> None:
        for item in fields(self):
            setattr(self, item.name, _COERCE[item.name](item.name, getattr(self, item.name)))
        self._check_consistency()

    def _check_consistency(self) -> None:
        if self.cache_text_encoder_outputs_to_disk:
            self.cache_text_encoder_outputs = True  # sd-scripts: caching to disk implies caching
        if self.full_fp16 and self.full_bf16:
            raise ConfigError("full_bf16", True, "full_fp16 and full_bf16 cannot both be on")
        for key, precision in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
            if getattr(self, key) and self.mixed_precision != precision:
                raise ConfigError(key, True, f"needs mixed_precision = {precision!r} (it is "
                                             f"{self.mixed_precision!r})")
        low = 0 if self.min_timestep is None else self.min_timestep
        high = NUM_TIMESTEPS if self.max_timestep is None else self.max_timestep
        if low >= high:
            raise ConfigError("max_timestep", high, f"must be greater than min_timestep ({low})")
        if self.adaptive_noise_scale is not None and self.noise_offset is None:
            raise ConfigError("adaptive_noise_scale", self.adaptive_noise_scale, "needs noise_offset")
        for key in ("sample_every_n_steps", "sample_every_n_epochs", "sample_at_first"):
            if getattr(self, key) and self.sample_prompts is None:
                raise ConfigError(key, getattr(self, key), "needs sample_prompts (a prompt file)")

    @property
    def timestep_range(self) -> tuple[int, int]:
        """[min, max) of the timesteps trained."""
        return (self.min_timestep or 0, NUM_TIMESTEPS if self.max_timestep is None else self.max_timestep)


# --- coercion: one checker per field, applied by name -------------------------------------------------------------


def _choice(choices: tuple[str, ...], *, optional: bool = False) -> Callable[[str, object], str | None]:
    def check(key: str, value: object) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ConfigError(key, value, f"expected one of {list(choices)}")

    return check


def _optional_text(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(key, value, "expected text")
    if len(value) > MAX_TEXT_CHARS:
        raise ConfigError(key, value, f"{len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value if value.strip() else None


def _optional_path(key: str, value: object) -> str | None:
    if value is not None and hasattr(value, "__fspath__"):
        value = str(value)
    return _optional_text(key, value)


def _output_name(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, value, "expected a file name")
    name = value.strip()
    if any(c in name for c in '/\\:*?"<>|') or name.startswith(".") or name.lower().endswith(".safetensors"):
        raise ConfigError(key, value, "expected a plain file name without folder, extension or any of "
                                      '/ \\ : * ? " < > |')
    return name


def _mixed_precision(key: str, value: object) -> str:
    if value is None:
        return "no"
    return _choice(MIXED_PRECISIONS)(key, value)  # type: ignore[return-value]


def _save_precision(key: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() in ("fp32", "float32"):
        return "float"
    return _choice(SAVE_PRECISIONS)(key, value)


def _save_format(key: str, value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in ("ckpt", "pt"):
        raise ConfigError(key, value, "only safetensors is written: ckpt/pt files are pickles that can run code "
                                      "when loaded")
    return _choice(SAVE_FORMATS)(key, value)  # type: ignore[return-value]


_COERCE: dict[str, Callable[[str, Any], Any]] = {
    "pretrained_model_name_or_path": _optional_path,
    "v_parameterization": read_bool,
    "clip_skip": number_option(optional=True),
    "max_train_steps": number_option(),
    "max_train_epochs": number_option(optional=True),
    "gradient_accumulation_steps": number_option(),
    "mixed_precision": _mixed_precision,
    "full_fp16": read_bool,
    "full_bf16": read_bool,
    "gradient_checkpointing": read_bool,
    "fp8_base": read_bool,
    "fp8_base_unet": read_bool,
    "seed": number_option(optional=True),
    "cache_text_encoder_outputs": read_bool,
    "cache_text_encoder_outputs_to_disk": read_bool,
    "noise_offset": number_option(optional=True),
    "noise_offset_random_strength": read_bool,
    "adaptive_noise_scale": number_option(optional=True),
    "multires_noise_iterations": number_option(optional=True),
    "multires_noise_discount": number_option(),
    "min_snr_gamma": number_option(optional=True),
    "min_timestep": number_option(optional=True),
    "max_timestep": number_option(optional=True),
    "loss_type": _choice(LOSS_TYPES),
    "huber_schedule": _choice(HUBER_SCHEDULES),
    "huber_c": number_option(),
    "output_dir": _optional_path,
    "output_name": _output_name,
    "save_model_as": _save_format,
    "save_precision": _save_precision,
    "save_every_n_epochs": number_option(optional=True),
    "save_every_n_steps": number_option(optional=True),
    "save_last_n_epochs": number_option(optional=True),
    "save_last_n_steps": number_option(optional=True),
    "save_state": read_bool,
    "save_state_on_train_end": read_bool,
    "save_on_cancel": read_bool,
    "resume": _optional_path,
    "training_comment": _optional_text,
    "activation_text": _optional_text,
    "preferred_weight": number_option(),
    "notes": _optional_text,
    "sample_prompts": _optional_path,
    "sample_every_n_steps": number_option(optional=True),
    "sample_every_n_epochs": number_option(optional=True),
    "sample_at_first": read_bool,
}

RUN_HELP: dict[str, str] = {item.name: item.metadata["help"] for item in fields(RunConfig)}
"""Option name → one-line help, shown by the command line and the Train tab alike."""

RUN_SECTIONS: dict[str, str] = {item.name: item.metadata["section"] for item in fields(RunConfig)}
"""Option name → the sd-scripts config-file section it is written under."""
