"""Reading config values as TOML, the CLI's `--set` and the Train tab give them: booleans and numbers, and
range checks for the readers of each config section.

Every reader and check raises ConfigError naming the key, the value and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .errors import ConfigError

BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def read_bool(key: str, value: object) -> bool:
    """A boolean from True/False, 0/1 or the words in BOOL_WORDS."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise ConfigError(key, value, "expected true or false")


def read_number(key: str, value: object, kind: type) -> int | float:
    """A finite int or float (`kind`) from a number or its text; "3.0" is the int 3, "3.5" is not an int."""
    noun = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(key, value, f"expected {noun}, not a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(key, value, f"expected {noun}") from None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(key, value, f"expected {noun}")
    if not math.isfinite(value):
        raise ConfigError(key, value, "must be a finite number")
    return kind(value)


def check_number(key: str, value: object, *, minimum: float, exclusive: bool = False) -> None:
    """ConfigError unless `value` is a finite number at least (or, `exclusive`, above) `minimum`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (exclusive and value == minimum):
        raise ConfigError(key, value, f"expected a number {'above' if exclusive else 'at least'} {minimum:g}")


def int_range(low: int, high: int | None = None, *, optional: bool = False) -> Callable[[str, object], int | None]:
    """A reader of whole numbers from `low` to `high` (None: no upper bound); `optional` takes None or "" as unset."""
    def check(key: str, value: object) -> int | None:
        if _unset(key, value, optional):
            return None
        number = int(read_number(key, value, int))
        if number < low or (high is not None and number > high):
            raise ConfigError(key, value, f"must be between {low} and {high}" if high is not None
                              else f"must be at least {low}")
        return number

    return check


def float_range(low: float, high: float | None = None, *, optional: bool = False,
                exclusive_low: bool = False) -> Callable[[str, object], float | None]:
    """A reader of numbers from `low` (or above it, `exclusive_low`) to `high`; `optional` as int_range."""
    def check(key: str, value: object) -> float | None:
        if _unset(key, value, optional):
            return None
        number = float(read_number(key, value, float))
        too_low = number <= low if exclusive_low else number < low
        if too_low or (high is not None and number > high):
            bound = f"greater than {low}" if exclusive_low else f"at least {low}"
            raise ConfigError(key, value, f"must be {bound}" + (f" and at most {high}" if high is not None else ""))
        return number

    return check


def _unset(key: str, value: object, optional: bool) -> bool:
    """True for an unset value (None, or "" when `optional`) of an optional setting; ConfigError "must be set" for
    None where the setting is required; False for a value to read."""
    if value is None or (optional and value == ""):
        if optional:
            return True
        raise ConfigError(key, value, "must be set")
    return False
