"""Reading a LoRA file's metadata back: JSON values decoded as A1111 does, and the model family it names."""

from __future__ import annotations

import json
from collections.abc import Mapping


def parse_metadata(metadata: Mapping[str, str]) -> dict[str, object]:
    """Decode values that are JSON objects or arrays (as A1111 does for "{…}"); leave every other value as is."""
    parsed: dict[str, object] = {}
    for key, value in metadata.items():
        parsed[key] = value
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                parsed[key] = json.loads(value)
            except (ValueError, RecursionError):
                pass
    return parsed


_MODELSPEC_ARCHS = (
    ("stable-diffusion-xl-v1-base", "sdxl"),
    ("stable-diffusion-v2", "sd2"),
    ("stable-diffusion-v1", "sd1"),
)


def arch_from_metadata(metadata: Mapping[str, object]) -> str | None:
    """sd1/sd2/sdxl from ss_base_model_version, modelspec.architecture or ss_v2 (in that order); None if unknown.

    Like A1111 (sdxl_* prefix, ss_v2 "True") and Forge (modelspec.architecture), but an unrecognised family name
    (flux, sd3, …) gives None instead of A1111's fallback to SD1.
    """
    version = str(metadata.get("ss_base_model_version") or "")
    if version:
        if version.startswith("sdxl_"):
            return "sdxl"
        if version.startswith("sd_v2"):
            return "sd2"
        if version.startswith("sd_v1"):
            return "sd1"
        return None
    architecture = str(metadata.get("modelspec.architecture") or "")
    if architecture:
        base = architecture.split("/", 1)[0]
        return next((name for prefix, name in _MODELSPEC_ARCHS if base.startswith(prefix)), None)
    v2 = str(metadata.get("ss_v2", "")).strip().lower()
    if v2 in ("true", "false"):
        return "sd2" if v2 == "true" else "sd1"
    return None
