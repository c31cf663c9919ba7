"""`fp8_base` / `fp8_base_unet` (sd-scripts' options): the frozen base weights stored in float8 for a run, and put
back exactly after.

- Which layers: every Linear and zero-padded Conv2d of the UNet; with `fp8_base` also of the text encoders (an
  open_clip attention's `out_proj` stays: the attention reads that weight itself). Norms, embeddings, biases and
  the VAE stay as they are.
- A layer the host already stores in float8 (A1111's "FP8 weight" setting, Neo's fp8 checkpoints) is used as it is.
  On Forge, whose loaded tensors the WebUI itself holds, only those are used (its own float8 setting does the rest).
- Any other layer's weight becomes float8_e4m3fn (saturated at its largest value) in the same Parameter. The
  original tensor is set aside where it costs the device nothing: an accelerator's weights move to CPU memory, a
  CPU's are written to an anonymous temporary file. On exit the original bytes come back (same dtype, shape and
  values; never a cast back from float8), also when the run fails or is stopped.
- Each such layer computes by casting its weight, one layer at a time, to the autocast dtype (else the input's
  dtype), and keeps only the float8 weight for the backward pass (`hosts.recast`): no full-precision copy. This is
  an instance forward, removed on exit; a layer someone else already gave one is left alone.
- On A1111 the built-in Lora merges lazily, in each layer's class-level forward, which the instance forward skips:
  layers a generation left with a LoRA merged get their base weights back first (`builtin_lora_settled`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import torch
from torch import Tensor, nn

from ..hosts.a1111_training import builtin_lora_settled
from ..hosts.recast import FP8, recast, recastable
from ..hosts.snapshot import instance_attributes, unique_modules
from .errors import TrainingError

STORAGE = torch.float8_e4m3fn
"""The dtype fp8_base stores weights in (sd-scripts' choice)."""
_HOLDS_ITS_WEIGHTS = ("forge-neo", "forge")
"""Host kinds whose training mode trains on aliases of tensors the WebUI keeps (Neo's inference tensors): storing
the aliases in float8 would add memory, not save it, so only the host's own float8 layers are used."""


@dataclass
class Fp8Report:
    """What `fp8_stored` did: layers converted (and their weight bytes before and after), layers used as stored."""

    converted: int = 0
    reused: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    device: str = ""
    aside: str = ""
    """Where the originals wait: "CPU memory" or "a temporary file"."""
    unconverted: str = ""
    """Why layers were not converted (a host that holds its loaded weights itself), or ""."""

    @property
    def saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def note(self) -> str:
        """One line for the run's notes: what was stored in float8 and the memory it saved."""
        parts = []
        if self.converted:
            parts.append(f"{self.converted} layers stored in float8 for the run on {self.device} "
                         f"({_gb(self.bytes_before)} → {_gb(self.bytes_after)}, {_gb(self.saved)} saved; the "
                         f"original weights wait in {self.aside} and come back after)")
        if self.reused:
            parts.append(f"{self.reused} layers already stored in float8 by the host, used as they are")
        if self.unconverted:
            parts.append(self.unconverted)
        return "fp8_base: " + ("; ".join(parts) if parts else "no layer to store in float8")


def _gb(count: int) -> str:
    return f"{count / 2**30:.2f} GB"


class _Spill:
    """Original CPU weights set aside in an anonymous temporary file (deleted when closed, or when the process
    ends), read back byte for byte. Written one layer at a time, so setting aside never needs more memory than
    the largest layer; safetensors would want every tensor of the file at once."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None

    def put(self, tensor: Tensor) -> int:
        """Write `tensor`'s bytes (contiguous, CPU); returns their offset."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="lora-studio-fp8-")
        offset = self._file.seek(0, 2)
        self._file.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        return offset

    def take(self, offset: int, like: _Aside) -> Tensor:
        """The tensor written at `offset`, rebuilt with `like`'s dtype and shape."""
        assert self._file is not None
        out = torch.empty(like.shape, dtype=like.dtype)
        self._file.seek(offset)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        if self._file.readinto(view) != len(view):
            raise TrainingError("fp8_base: the temporary file of the original weights was cut short")
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class _Aside:
    """One weight stored in float8: its Parameter, and the original (a tensor, or an offset in the spill file)."""

    param: nn.Parameter
    dtype: torch.dtype
    shape: torch.Size
    device: torch.device
    original: Tensor | None = None
    offset: int | None = field(default=None)

    def restore(self, spill: _Spill) -> None:
        original = self.original if self.offset is None else spill.take(self.offset, self)
        self.param.data = original.to(self.device) if original.device != self.device else original


def _set_aside(param: nn.Parameter, spill: _Spill) -> _Aside:
    """Store `param` in float8; the original is kept in CPU memory (accelerator) or the spill file (CPU, contiguous).
    Nothing is changed when writing the original fails."""
    data = param.data
    record = _Aside(param, data.dtype, data.shape, data.device)
    limit = torch.finfo(STORAGE).max
    stored = data.clamp(-limit, limit).to(STORAGE)  # e4m3fn has no infinity: beyond its range a cast gives NaN
    if data.device.type != "cpu":
        record.original = data.to("cpu")
    elif data.is_contiguous():
        try:
            record.offset = spill.put(data)
        except OSError as error:
            raise TrainingError(f"fp8_base: could not set the original weights aside in a temporary file "
                                f"({error}); free disk space in {tempfile.gettempdir()} or turn fp8_base off") \
                from None
    else:
        record.original = data
    param.data = stored
    return record


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The autocast dtype on x's device when autocast is on, else x's dtype."""
    device = x.device.type
    try:
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    except (TypeError, AttributeError):  # torch < 2.4: per-device functions
        if device == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        if device == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return x.dtype


def _stored_forward(layer: nn.Module) -> Any:
    """An instance forward: the layer computed in the compute dtype from its float8 weight, cast per call."""
    def forward(x: Tensor) -> Tensor:
        return recast(layer, x.to(_compute_dtype(x)))

    return forward


def fp8_layers(roots: Sequence[nn.Module]) -> list[nn.Module]:
    """The layers of `roots` fp8_base stores in float8 (module docstring), each once: with an instance forward
    only when already in float8 (Neo's own cast, kept)."""
    attention_owned = {id(m.out_proj) for m in unique_modules(roots) if isinstance(m, nn.MultiheadAttention)}
    return [m for m in unique_modules(roots) if recastable(m) and id(m) not in attention_owned
            and ("forward" not in m.__dict__ or m.weight.dtype in FP8)
            and not getattr(m, "weight_function", None) and not getattr(m, "bias_function", None)]


@contextmanager
def fp8_stored(roots: Sequence[nn.Module], *, unconverted: str = "") -> Iterator[Fp8Report]:
    """The layers of `roots` stored in float8 for the block (module docstring); restored exactly on exit. With
    `unconverted` (the reason) only layers already in float8 are used and no other is converted."""
    report = Fp8Report(unconverted=unconverted)
    layers = fp8_layers(roots)
    builtin_lora_settled(layers)
    spill = _Spill()
    aside: list[_Aside] = []
    seen: set[int] = set()
    with ExitStack() as stack:
        stack.callback(spill.close)
        stack.callback(_restore_all, aside, spill)
        with torch.no_grad():
            for layer in layers:
                weight = layer.weight
                if weight.dtype in FP8:
                    report.reused += 1
                elif id(weight) not in seen and not unconverted:
                    seen.add(id(weight))
                    report.bytes_before += weight.numel() * weight.element_size()
                    aside.append(_set_aside(weight, spill))
                    report.bytes_after += weight.numel()
                    report.converted += 1
                    report.device = str(weight.device)
        report.aside = "a temporary file" if any(a.offset is not None for a in aside) else "CPU memory"
        stack.enter_context(instance_attributes((layer, "forward", _stored_forward(layer)) for layer in layers
                                                if "forward" not in layer.__dict__ and layer.weight.dtype in FP8))
        yield report


def _restore_all(aside: list[_Aside], spill: _Spill) -> None:
    """Put every original back (last set aside first)."""
    with torch.no_grad():
        for record in reversed(aside):
            record.restore(spill)


@contextmanager
def fp8_base_stored(host: Any, *, fp8_base: bool, fp8_base_unet: bool) -> Iterator[Fp8Report | None]:
    """`fp8_stored` on the host's UNet (both options) and text encoders (fp8_base); None when both are off."""
    if not (fp8_base or fp8_base_unet):
        yield None
        return
    roots = [host.unet] + (list(host.text_encoders) if fp8_base and not fp8_base_unet else [])
    unconverted = ""
    if getattr(host, "kind", None) in _HOLDS_ITS_WEIGHTS:  # setting a copy of Forge's tensors aside frees nothing
        name = getattr(host, "host_name", "Forge")
        unconverted = (f"{name} holds the loaded weights itself, so other layers stay as loaded: set its "
                       "“Diffusion in Low Bits” to a float8 choice to train on a float8 base")
    with fp8_stored(roots, unconverted=unconverted) as report:
        yield report
