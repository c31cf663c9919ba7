"""What a run sets on the host for its length and restores after: autocast, gradient checkpointing, clip skip.

Each is a context manager that undoes exactly what it did (also on errors), inside `host.training_mode()`,
which restores the rest.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.utils.checkpoint

from ..hosts.snapshot import instance_attributes

if TYPE_CHECKING:
    from ..hosts.base import Host

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# Blocks whose forward is recomputed in the backward pass: the transformer and resnet blocks of both layouts
# (diffusers BasicTransformerBlock/ResnetBlock2D, ldm BasicTransformerBlock/ResBlock). Wrapping these leaf-level
# blocks (never their parents) keeps checkpoints from nesting.
CHECKPOINTED_BLOCKS = frozenset({"BasicTransformerBlock", "ResnetBlock2D", "ResBlock"})


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: autocast dtype (None = off), a gradient scaler, the dtype the network trains in."""

    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool
    network_dtype: torch.dtype
    notes: tuple[str, ...] = ()

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def choose_precision(mixed_precision: str, *, full_fp16: bool, full_bf16: bool, host_dtype: torch.dtype,
                     device: torch.device) -> Precision:
    """The precision a run uses on `device` for a host whose weights are `host_dtype`.

    A half-precision host needs autocast even with mixed_precision "no" (fp32 LoRA weights meet fp16 activations);
    fp16 autocast on a device that cannot run it falls back to bf16; the gradient scaler is used for fp16 on CUDA
    unless the network itself is fp16 (full_fp16), which the scaler cannot unscale.
    """
    notes: list[str] = []
    dtype = _DTYPES.get(mixed_precision)
    if dtype is None and host_dtype in (torch.float16, torch.bfloat16):
        dtype = host_dtype
        notes.append(f"mixed_precision 'no' on a {str(host_dtype).removeprefix('torch.')} model: autocast to "
                     "the model's precision, LoRA weights in float32")
    if dtype is torch.float16 and not autocast_works(device, torch.float16):
        dtype = torch.bfloat16
        notes.append(f"fp16 autocast is not available on {device.type}; using bf16")
    network_dtype = torch.float32
    if full_fp16 or full_bf16:
        network_dtype = dtype or torch.float32
    scaler = dtype is torch.float16 and device.type == "cuda" and network_dtype is torch.float32
    return Precision(dtype, scaler, network_dtype, tuple(notes))


@functools.lru_cache(maxsize=8)
def autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a linear layer runs under autocast to `dtype` on `device` (CPU fp16 depends on the torch build)."""
    try:  # fixed tensors, no module: probing must not draw from the global RNG
        weight = torch.ones(4, 4, device=device)
        with torch.autocast(device_type=device.type, dtype=dtype):
            out = torch.nn.functional.linear(torch.ones(1, 4, device=device), weight)
        return out.dtype == dtype
    except (RuntimeError, ValueError, AssertionError):
        return False


@contextmanager
def gradient_checkpointing(unet: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Recompute each transformer/resnet block of `unet` in the backward pass (torch's non-reentrant checkpoint).

    Works by an instance-level `forward` on each block that calls the class's forward through
    `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` while grad is on: non-reentrant checkpointing
    gives gradients to parameters held outside the block (LoRA hooks), which the ldm/sgm `checkpoint` flags and
    reentrant checkpointing do not. Yields how many blocks were wrapped; the instance attributes are removed on
    exit. Blocks that already have an instance-level forward (someone else's patch) are left alone.
    """
    blocks = (module for module in unet.modules()
              if enabled and type(module).__name__ in CHECKPOINTED_BLOCKS and "forward" not in module.__dict__)
    with instance_attributes((block, "forward", _checkpointed(block.forward)) for block in blocks) as wrapped:
        yield wrapped


def _checkpointed(forward: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


@contextmanager
def clip_skip_set(host: Host, clip_skip: int | None) -> Iterator[str | None]:
    """Encode captions with `clip_skip` for the block where the host lets us choose it; yields a note otherwise.

    The diffusers host's `clip_skip` is set for the block (A1111's meaning); a WebUI host's is None: the WebUI's own
    setting applies (never changed here). SDXL always uses the penultimate layer, as sd-scripts does.
    """
    if clip_skip is None:
        yield None
        return
    if host.arch.name == "sdxl":
        yield "clip_skip is not used for SDXL (it always uses the penultimate layer)"
        return
    previous = host.clip_skip
    if previous is None:
        yield "clip_skip: the WebUI's own Clip skip setting applies"
        return
    host.clip_skip = clip_skip  # type: ignore[misc]
    try:
        yield None
    finally:
        host.clip_skip = previous  # type: ignore[misc]


@contextmanager
def preserved_global_rng() -> Iterator[None]:
    """The global random states of torch (CPU and CUDA), NumPy and Python as they were before the block."""
    saved = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             random.getstate(), np.random.get_state())
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        if saved[1] is not None:
            torch.cuda.set_rng_state_all(saved[1])
        random.setstate(saved[2])
        np.random.set_state(saved[3])


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed torch (CPU and CUDA), Python's `random` and NumPy for the block (dropout and anything else drawing
    from the global generators, as sd-scripts' set_seed does), and give the process its own states back after,
    so a run inside the WebUI leaves the WebUI's random state as it found it."""
    with preserved_global_rng():
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        yield
