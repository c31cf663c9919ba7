"""The checks the metadata records run on their fields: each raises ValueError naming the field and the bad value."""

from __future__ import annotations

import math
from typing import NoReturn


def invalid(name: str, expected: str, value: object) -> NoReturn:
    raise ValueError(f"`{name}` must be {expected}, got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        invalid(name, f"one of {list(choices)}", value)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int) -> None:
    if value is not None and not (is_int(value) and value >= minimum):
        invalid(name, f"an integer >= {minimum} or None", value)


def checked_float(name: str, value: object, *, fraction: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        invalid(name, "a finite number >= 0 or None", value)
    if fraction and value > 1:
        invalid(name, "between 0 and 1", value)
    return float(value)


def check_plain(name: str, value: object, kind: type | tuple[type, ...]) -> None:
    """`value` is None or of `kind`; numbers must be finite and a bool counts only where `kind` names bool.

    Unlike `checked_float` nothing is converted: these values are written exactly as the caller's config holds them.
    """
    if value is None:
        return
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        invalid(name, f"{' or '.join(k.__name__ for k in kinds)} or None", value)
    if not isinstance(value, kinds) or (isinstance(value, float) and not math.isfinite(value)):
        invalid(name, f"a finite {' or '.join(k.__name__ for k in kinds)} or None", value)


def checked_resolution(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) and v > 0 for v in value)):
        invalid("resolution", "(width, height) as two positive integers, or None", value)
    return (value[0], value[1])


def check_network_args(value: object) -> None:
    def plain(item: object) -> bool:
        return isinstance(item, (str, int, bool)) or (isinstance(item, float) and math.isfinite(item))

    if not isinstance(value, dict) or not all(isinstance(k, str) and plain(v) for k, v in value.items()):
        invalid("network_args", "a dict of name -> str/int/finite float/bool", value)


def check_dataset_dirs(value: object, name: str = "dataset_dirs") -> None:
    expected = 'a dict of folder -> {"n_repeats": int >= 1, "img_count": int >= 0}'
    if not isinstance(value, dict):
        invalid(name, expected, value)
    for folder, entry in value.items():
        ok = isinstance(folder, str) and isinstance(entry, dict) and set(entry) == {"n_repeats", "img_count"}
        if not (ok and is_int(entry["n_repeats"]) and entry["n_repeats"] >= 1 and is_int(entry["img_count"])):
            invalid(f"{name}[{folder!r}]", expected, entry)
        if entry["img_count"] < 0:
            invalid(f"{name}[{folder!r}]", expected, entry)


def check_tag_frequency(value: object) -> None:
    expected = "a dict of folder -> {tag: count >= 0}"
    if not isinstance(value, dict):
        invalid("tag_frequency", expected, value)
    for folder, counts in value.items():
        if not (isinstance(folder, str) and isinstance(counts, dict)):
            invalid(f"tag_frequency[{folder!r}]", expected, counts)
        for tag, count in counts.items():
            if not (isinstance(tag, str) and is_int(count) and count >= 0):
                invalid(f"tag_frequency[{folder!r}][{tag!r}]", "a count >= 0", count)
