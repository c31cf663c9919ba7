"""What training on Forge Neo's loaded model sets aside for the length of a run, and puts back exactly after.

`held_for_training(host)`, in order (undone in reverse on exit, also on errors and stops):
1. Refuse a 4-bit or GGUF base (`refuse_low_bits`): no LoRA can be trained on it here.
2. Remember the engine's `forge_objects` (the object and its parts), `forge_objects_after_applying_lora` and
   `current_lora_hash`: the LoRAs active before the run are patches on those patchers.
3. Put the unpatched patchers (`forge_objects_original`) in their place and reset `current_lora_hash`, then load
   them (`host.load_unpatched`; on Neo `load_models_gpu(..., force_full_load=True)`): Forge restores its backups of
   every weight a LoRA was merged into (the base is the checkpoint's own again, no copy made) and puts UNet and
   text encoders wholly on their device. A generation inside the run (a sample image) finds them loaded and
   applies no LoRA of its own.
4. Hold them there (`forge_neo_guards.memory_held`) and refuse model switches (`forge_neo_guards.switches_refused`).
5. Make Neo's inference-mode weights usable by autograd without copying them (`inference_weights_aliased`; torch
   allows no flag change on the originals), capture every flag and hook (`state.preserved_state`), let layers
   stored in another dtype than the computation's (fp8; bf16 on a CPU; on a CPU also the text encoders, which Neo
   stores in fp16 by default) recompute their cast in the backward pass (`recast_in_backward`), give the norms
   before Neo's in-place residual adds a copy of their input (`inplace_residuals_made_safe`), and freeze
   everything.
On exit the remembered objects and hash come back; Neo merges the LoRAs again at the next generation, because the
patchers it then loads differ from the ones left loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import HostError
from .forge_neo_guards import memory_held, switches_refused
from .recast import FP8, recast, recastable
from .snapshot import freeze_for_training, instance_attributes, preserved_state, unique_modules

if TYPE_CHECKING:
    from .forge_neo import ForgeNeoHost



@dataclass
class EngineState:
    """The engine attributes a run replaces: which patchers are current, and which LoRAs Neo believes applied."""

    forge_objects: Any
    parts: dict[str, Any]
    after_lora: Any
    lora_hash: Any

    @classmethod
    def capture(cls, engine: Any) -> EngineState:
        objects = engine.forge_objects
        return cls(objects, dict(vars(objects)), engine.forge_objects_after_applying_lora, engine.current_lora_hash)

    def restore(self, engine: Any) -> None:
        for name, value in self.parts.items():
            setattr(self.forge_objects, name, value)
        engine.forge_objects = self.forge_objects
        engine.forge_objects_after_applying_lora = self.after_lora
        engine.current_lora_hash = self.lora_hash


def _quantized_kind(module: torch.nn.Module) -> str | None:
    """nf4/fp4/gguf when `module` stores its weights quantized (Neo's `storage_dtype` string, or its parameters:
    GGUF and bitsandbytes tensors, Neo's mixed-precision `QuantizedTensor`, integer storage)."""
    storage = getattr(module, "storage_dtype", None)
    if isinstance(storage, str):
        return storage
    for param in module.parameters():
        if getattr(param, "gguf_cls", None) is not None:
            return "gguf"
        if getattr(param, "bnb_quantized", None) is not None or type(param).__name__ == "QuantizedTensor":
            return "4-bit"
        if not (param.is_floating_point() or param.dtype in FP8):
            return f"{str(param.dtype).removeprefix('torch.')} (quantized)"
    return None


def refuse_low_bits(host: ForgeNeoHost) -> None:
    """HostError naming the setting to change when the UNet or a text encoder is stored quantized (nf4/fp4/GGUF)."""
    kind = _quantized_kind(host.unet)
    if kind is not None:
        raise HostError(f"the loaded UNet is stored as {kind}; LoRA Studio cannot train on a 4-bit or GGUF base. "
                        f"Set {host.host_name}'s “Diffusion in Low Bits” to Automatic or a float8 choice (or choose "
                        "a checkpoint that is not GGUF / NF4), then start the run again")
    for encoder in host.text_encoders:
        kind = _quantized_kind(encoder)
        if kind is not None:
            raise HostError(f"a text encoder is stored as {kind}; LoRA Studio cannot train on it. Remove the "
                            f"quantized text encoder from {host.host_name}'s “VAE / Text Encoder” choice, then "
                            "start the run again")


def settle_pending_unload() -> None:
    """Do now what Neo's next generation would: after a model-setting change it unloads every model once
    (`processing.need_global_unload`). Inside a run that unload is refused, so it happens before the run."""
    processing = sys.modules.get("modules.processing")
    if processing is None or not getattr(processing, "need_global_unload", False):
        return
    memory_management = sys.modules.get("backend.memory_management")
    if memory_management is not None:
        memory_management.unload_all_models()
    processing.need_global_unload = False
    base = getattr(processing, "StableDiffusionProcessing", None)
    if base is not None:
        base.cached_c, base.cached_uc = [None, None, None], [None, None, None]


def load_fully(patchers: list[Any]) -> None:
    """Load `patchers` with Neo's memory manager, wholly on their device; HostError when Neo left part offloaded."""
    memory_management = sys.modules.get("backend.memory_management")
    if memory_management is None:
        raise HostError("Forge's `backend.memory_management` is not loaded; training needs the WebUI's backend")
    memory_management.load_models_gpu(patchers, force_full_load=True)
    for patcher in patchers:
        model = patcher.model
        if getattr(model, "model_lowvram", False) or getattr(model, "current_weight_patches_uuid", None) \
                != patcher.patches_uuid or patcher.backup:
            raise HostError(f"Forge did not load {type(model).__name__} wholly and unpatched onto "
                            f"{patcher.load_device}; free memory (or use a smaller model) and start the run again")


def _alias(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (not inference) tensor on `tensor`'s own storage: same memory, same values, nothing copied."""
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(alias, requires_grad=tensor.requires_grad)
    return alias


@contextmanager
def inference_weights_aliased(roots: Iterable[torch.nn.Module]) -> Iterator[int]:
    """Neo loads models under `torch.inference_mode()`, so its weights are inference tensors, which autograd
    refuses to save for backward. For the block each such parameter or buffer is replaced in its module by an alias
    on the same storage (no copy, same data_ptr); the original objects are put back on exit. Yields the count."""
    swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    aliases: dict[int, torch.Tensor] = {}
    try:
        with torch.inference_mode(False):
            for module in unique_modules(roots):
                for store in (module._parameters, module._buffers):
                    for name, tensor in list(store.items()):
                        if tensor is None or not tensor.is_inference():
                            continue
                        store[name] = aliases.setdefault(id(tensor), _alias(tensor))
                        swapped.append((store, name, tensor))
        yield len(aliases)
    finally:
        for store, name, tensor in reversed(swapped):
            store[name] = tensor


def _recast_forward(module: torch.nn.Module) -> Any:
    """An instance forward for a manual-cast layer: Neo's cast per layer, without keeping the cast copy."""
    plain = type(module).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad) or getattr(module, "weight_function", None) \
                or getattr(module, "bias_function", None) or module.weight.device != x.device:
            return plain(module, x)
        out = recast(module, x)
        return out.clone() if out._is_view() else out  # Neo adds into it in place; autograd forbids that on a view

    return forward


@contextmanager
def recast_in_backward(root: torch.nn.Module, computation: torch.dtype) -> Iterator[int]:
    """Linear / plain Conv2d layers of `root` (the UNet, a text encoder) stored in another dtype than `computation`
    (fp8, or bf16 / fp16 computed in fp32 on a CPU: Neo casts each as it runs) keep only their stored weight in the
    autograd graph: the backward pass casts again instead of holding every layer's cast copy until then (a second,
    full-precision model). Instance forwards, removed on exit (`preserved_state` also restores them)."""
    layers = [m for m in root.modules() if recastable(m) and m.weight.dtype != computation
              and m.weight.is_floating_point() and "forward" not in m.__dict__]
    with instance_attributes((layer, "forward", _recast_forward(layer)) for layer in layers) as recast:
        yield recast


def _needs_copy(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()


def _clone_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A forward pre-hook: the module gets a copy of its first input when autograd tracks it."""
    return (args[0].clone(), *args[1:]) if args and _needs_copy(args[0]) else None


def _input_copied(block: torch.nn.Module) -> Any:
    """An instance `_forward` for a transformer block: the class's `_forward` on a copy of x (tracked by autograd),
    so the block's in-place residual adds never write into its caller's tensor (which a gradient checkpoint keeps
    to run the block again in the backward pass)."""
    plain = type(block)._forward

    def _forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        return plain(block, x.clone() if _needs_copy(x) else x, *args, **kwargs)

    return _forward


@contextmanager
def inplace_residuals_made_safe(unet: torch.nn.Module) -> Iterator[int]:
    """Neo's `BasicTransformerBlock._forward` adds its residuals in place (`x += n`): into its own input, and after
    `norm1(x)` / `norm2(x)` saved x for the backward pass. Autograd refuses both once a LoRA before them needs
    gradients. For the block each such transformer block runs on a copy of its input and those two norms get a copy
    of theirs (activations are copied, never weights); all is removed on exit. Yields how many blocks."""
    blocks = [block for block in unet.modules() if type(block).__name__ == "BasicTransformerBlock"
              and callable(getattr(type(block), "_forward", None)) and "_forward" not in block.__dict__]
    handles = [block.get_submodule(name).register_forward_pre_hook(_clone_input)
               for block in blocks for name in ("norm1", "norm2") if isinstance(getattr(block, name, None),
                                                                                 torch.nn.Module)]
    try:
        with instance_attributes((block, "_forward", _input_copied(block)) for block in blocks) as copied:
            yield copied
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def held_for_training(host: ForgeNeoHost) -> Iterator[None]:
    """Hold the loaded model for a run as the module docstring says; every step is undone on exit."""
    refuse_low_bits(host)
    engine = host.sd_model
    saved = EngineState.capture(engine)
    with ExitStack() as stack:
        stack.callback(saved.restore, engine)
        settle_pending_unload()
        original = engine.forge_objects_original
        engine.forge_objects = original.shallow_copy()
        engine.forge_objects_after_applying_lora = original.shallow_copy()
        engine.current_lora_hash = str([])
        patchers = [original.unet, original.clip.patcher]
        host.load_unpatched(patchers)
        stack.enter_context(memory_held(patchers, host.host_name, host.carries_other_patches))
        stack.enter_context(switches_refused(host.host_name))
        roots = host.state_roots()
        stack.enter_context(inference_weights_aliased(roots))  # first: the originals' flags are never touched
        stack.enter_context(preserved_state(roots))
        for root in (host.unet, *host.text_encoders):  # Neo stores text encoders in fp16 unless told otherwise
            stack.enter_context(recast_in_backward(root, host.dtype))
        stack.enter_context(inplace_residuals_made_safe(host.unet))
        freeze_for_training(roots)
        yield
