"""Reading config values as TOML, the CLI's `--set` and the Train tab give them: booleans and numbers.

Every reader and check raises ConfigError naming the key, the value and what was expected. The range of each
numeric option is in bounds.py (OPTION_BOUNDS), whose readers build on `read_number`.
"""

from __future__ import annotations

import math

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
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, value, "must be a finite number")
    try:
        return kind(value)
    except OverflowError:  # an int too large for a float
        raise ConfigError(key, value, "is too large") from None


def check_number(key: str, value: object, *, minimum: float, exclusive: bool = False) -> None:
    """ConfigError unless `value` is a finite number at least (or, `exclusive`, above) `minimum`."""
    ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)
    if not ok or value < minimum or (exclusive and value == minimum):
        raise ConfigError(key, value, f"expected a number {'above' if exclusive else 'at least'} {minimum:g}")
