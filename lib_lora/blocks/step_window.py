"""Which sampling steps a `<lora:…:start=…:stop=…>` tag's UNet part is applied in (LBW's A1111 meaning).

Integers are 1-based step numbers: `start=N` applies the UNet part from the N-th step on, `stop=N` removes it
from the N-th step on (`start=0`/`1` = from the first step). Floats in [0, 1] are fractions of the steps:
`start=0.5` of 20 steps = from the 11th step (0-based index 10). The text-encoder part is never gated: the
conditioning is computed before sampling.
"""

from __future__ import annotations

from .syntax import LoraCall


def _first_index(value: int | float, steps: int) -> int:
    """The 0-based step index a start/stop value points at."""
    if isinstance(value, float):
        return round(value * steps)
    return max(value - 1, 0)


def active_steps(call: LoraCall, steps: int) -> range:
    """The 0-based step indices, out of `steps`, in which the call's UNet part is applied (may be empty)."""
    first = 0 if call.start is None else _first_index(call.start, steps)
    end = steps if call.stop is None else _first_index(call.stop, steps)
    return range(min(first, steps), max(min(end, steps), min(first, steps)))


def is_gated(call: LoraCall) -> bool:
    """Whether the call has a step window at all."""
    return call.start is not None or call.stop is not None


def never_closes(call: LoraCall) -> bool:
    """Whether the UNet part is applied in every step whatever their number (`start=0`/`1`/`0.0`, no `stop=`)."""
    return call.stop is None and (call.start is None or _first_index(call.start, 1_000_000) == 0)
