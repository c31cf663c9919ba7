"""diffusers' `load_lora_weights`, run for real on a pipeline of meta-device models (no weights, no memory).

The pipeline has the family's real structure, at the widths the file's factors fit (tiny or full size, see
`_candidates`), so the load checks the file's shapes as well as its names. A key is applied when the layer it names
(in any spelling `keys.TargetIndex` knows, or a diffusers/PEFT dotted path) got a LoRA layer whose factors its
`load_state_dict` did not leave missing; an alpha when its module was. diffusers' and PEFT's warnings are caught
as notes, never printed; an error fails every key with its message. Needs diffusers and PEFT (the standalone
environment): `available()` says.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ...wording import shorten
from ..keys import TargetIndex, build_target_index_for
from ..matching import module_of
from .report import UNKNOWN_MODULE, UNKNOWN_SUFFIX, KeyFailure, LoaderReport, account, refuse_all

NAME = "diffusers"
TITLE = "diffusers"
ADAPTER = "loader_check"
_ROOTS = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}
_DOWN = re.compile(r"\.(?:lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight$|_lora\.down\.weight$")


def available() -> bool:
    """Whether diffusers and PEFT can be imported (the check is skipped where they cannot)."""
    try:
        import diffusers  # noqa: F401
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def _candidates(arch: str) -> tuple[tuple[dict[str, Any], list[Any]], ...]:
    """(UNet config, text-encoder configs) of the family at full size, then tiny (the test models)."""
    from transformers import CLIPTextConfig

    from ...tiny.clip import tiny_clip_config
    from ...tiny.diffusers_models import TINY_SD1_UNET, TINY_SDXL_UNET
    from ...tiny.full_size import CLIP_BIGG_CONFIG, CLIP_L_CONFIG, SD15_UNET_CONFIG, SDXL_UNET_CONFIG

    if arch == "sd1":
        return ((SD15_UNET_CONFIG, [CLIPTextConfig(**CLIP_L_CONFIG)]), (TINY_SD1_UNET, [tiny_clip_config()]))
    return ((SDXL_UNET_CONFIG, [CLIPTextConfig(**CLIP_L_CONFIG), CLIPTextConfig(**CLIP_BIGG_CONFIG)]),
            (TINY_SDXL_UNET, [tiny_clip_config(), tiny_clip_config(hidden_act="gelu")]))


def _pipeline(arch: str, unet_config: dict[str, Any], te_configs: list[Any]) -> Any:
    """A pipeline of meta-device UNet and text encoders (no VAE, tokenizer or scheduler: loading needs none)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
        encoders = [CLIPTextModel(te_configs[0])]
        if arch == "sdxl":
            encoders.append(CLIPTextModelWithProjection(te_configs[1]))
    if arch == "sd1":
        return StableDiffusionPipeline(vae=None, text_encoder=encoders[0], tokenizer=None, unet=unet, scheduler=None,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return StableDiffusionXLPipeline(vae=None, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=None, add_watermarker=False)


def _index(pipe: Any, arch: str) -> TargetIndex:
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if arch == "sdxl" else [])
    return build_target_index_for(pipe.unet, "diffusers", encoders, arch)


def _layer(key: str, index: TargetIndex) -> tuple[str, str] | None:
    """(root, module path) of the layer a key names: a kohya name in any spelling, or a dotted diffusers path."""
    target = index.lookup(key)
    if target is not None:
        return target.root, target.module_path
    head, _, path = module_of(key).partition(".")
    root = _ROOTS.get(head)
    return (root, path.replace(".processor.", ".").removesuffix("_lora")) if root and path else None


def _fits(tensors: Mapping[str, torch.Tensor], pipe: Any, arch: str) -> int:
    """How many down factors have the input width of the layer they name in this pipeline."""
    index = _index(pipe, arch)
    modules = {root: dict(model.named_modules()) for root, model in _models(pipe)}
    count = 0
    for key, tensor in tensors.items():
        place = _layer(key, index) if _DOWN.search(key) and tensor.dim() >= 2 else None
        module = modules.get(place[0], {}).get(place[1]) if place else None
        weight = getattr(module, "weight", None)
        count += int(isinstance(weight, torch.Tensor) and weight.dim() >= 2 and weight.shape[1] == tensor.shape[1])
    return count


def _models(pipe: Any) -> Iterator[tuple[str, torch.nn.Module]]:
    for attribute, root in _ROOTS.items():
        model = getattr(pipe, attribute, None)
        if model is not None:
            yield root, model


@contextlib.contextmanager
def _caught(notes: list[str]) -> Iterator[None]:
    """diffusers' and PEFT's log records and warnings go into `notes` instead of the console."""
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(shorten(" ".join(record.getMessage().split()), 300))

    logger = logging.getLogger("diffusers")
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [Collect(logging.WARNING)], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        notes.extend(shorten(" ".join(str(w.message).split()), 300) for w in caught)
    finally:
        logger.handlers, logger.propagate = handlers, propagate


@contextlib.contextmanager
def _missing_keys(pipe: Any) -> Iterator[dict[str, set[str]]]:
    """{root: parameters its `load_state_dict` left missing}, for each model the load reached (torch's public
    post-hook: the LoRA factors themselves end on the meta device with their base layers, so only this tells)."""
    missing: dict[str, set[str]] = {}

    def hook(root: str) -> Any:
        return lambda module, incompatible: missing.setdefault(root, set()).update(incompatible.missing_keys)

    handles = [model.register_load_state_dict_post_hook(hook(root)) for root, model in _models(pipe)]
    try:
        yield missing
    finally:
        for handle in handles:
            handle.remove()


def _loaded_layers(pipe: Any, missing: Mapping[str, set[str]]) -> set[tuple[str, str]]:
    """(root, path) of every layer that got a LoRA of the check's adapter whose factors were loaded."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = set()
    for root, model in _models(pipe):
        if root not in missing:
            continue
        for path, module in model.named_modules():
            if isinstance(module, BaseTunerLayer) and ADAPTER in getattr(module, "lora_A", {}):
                factors = {f"{path}.{name}.{ADAPTER}.weight" for name in ("lora_A", "lora_B")}
                if not factors & missing[root]:
                    found.add((root, path))
    return found


def check(tensors: Mapping[str, torch.Tensor], arch: str) -> LoaderReport:
    """What `load_lora_weights` applies of these tensors on a `arch` (sd1 or sdxl) pipeline of fitting width."""
    keys = list(tensors)
    pipes = [_pipeline(arch, unet, encoders) for unet, encoders in _candidates(arch)]
    pipe = max(pipes, key=lambda p: _fits(tensors, p, arch))  # the first (full size) on a tie
    index = _index(pipe, arch)
    notes: list[str] = []
    try:
        with _caught(notes), _missing_keys(pipe) as missing:
            pipe.load_lora_weights({k: v.detach().clone() for k, v in tensors.items()}, adapter_name=ADAPTER)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError) as error:
        return refuse_all(NAME, TITLE, arch, keys, f"load_lora_weights raised {type(error).__name__}: "
                                                  f"{shorten(str(error), 300)}", notes)
    loaded = _loaded_layers(pipe, missing)
    failures: dict[str, KeyFailure] = {}
    for key in keys:
        place = _layer(key, index)
        if place is None or place not in loaded:
            where = f"no LoRA layer on {place[0]} {place[1]}" if place else "no layer of the model has this name"
            failures[key] = KeyFailure(key, UNKNOWN_MODULE, where)
        elif key.endswith(".dora_scale"):
            failures[key] = KeyFailure(key, UNKNOWN_SUFFIX, "diffusers drops DoRA scales of kohya files")
    return account(NAME, TITLE, arch, keys, failures, notes)
