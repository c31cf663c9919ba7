"""The prompt sets a slider learns: LECO's prompt settings, from the slider_* options or a LECO prompts file.

With the LoRA on, `target` must predict what the model without it predicts for
`neutral ± guidance_scale · (positive − unconditional)` (+ to enhance, − to erase). The slider_* options give one
set as "original → target": the original with the LoRA becomes the target without it (an empty target: the
neutral prompt, by default the empty one), i.e. target = neutral = unconditional = the original, positive = the
target, enhance. A prompts file is LECO's YAML list, read with PyYAML's safe loader (plain data only), with
LECO's defaults: positive = target, unconditional = "", neutral = unconditional, action erase, guidance 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bounds import OPTION_BOUNDS, read_bounded
from ..errors import ConfigError
from .config import MAX_TEXT_CHARS, ModeConfig

MAX_PROMPTS_FILE_BYTES = 1024 * 1024
"""The largest prompts file read (LECO's example is a few hundred bytes)."""
MAX_PROMPT_SETS = 256
ACTIONS = ("erase", "enhance")
_TEXT_KEYS = ("target", "positive", "unconditional", "neutral")
_IGNORED_KEYS = ("dynamic_resolution", "bucketing", "dynamic_crops")
"""LECO keys about its own image sampling; accepted and not used (the slider trains on noise)."""
_FILE_OPTION = "slider_prompts_file"


@dataclass(frozen=True)
class PromptSet:
    """One LECO prompt setting (see the module docstring); `resolution` (pixels per side) and `batch_size` None
    take the run's."""

    target: str
    positive: str
    unconditional: str
    neutral: str
    action: str = "erase"
    guidance_scale: float = 1.0
    resolution: int | None = None
    batch_size: int | None = None

    @property
    def sign(self) -> float:
        """+1 to enhance, −1 to erase."""
        return 1.0 if self.action == "enhance" else -1.0

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "positive": self.positive, "unconditional": self.unconditional,
                "neutral": self.neutral, "action": self.action, "guidance_scale": self.guidance_scale}


def prompt_sets(mode: ModeConfig) -> list[PromptSet]:
    """The sets of a run: the slider_* options' one (when slider_prompt is set), then the file's."""
    sets: list[PromptSet] = []
    if mode.slider_prompt is not None:
        original = mode.slider_prompt
        target = mode.slider_target if mode.slider_target is not None else (mode.slider_neutral or "")
        sets.append(PromptSet(target=original, positive=target, unconditional=original, neutral=original,
                              action="enhance", guidance_scale=mode.slider_guidance_scale,
                              resolution=mode.slider_resolution))
    if mode.slider_prompts_file is not None:
        sets.extend(read_prompts_file(mode.slider_prompts_file))
    return sets


def read_prompts_file(path: str | Path) -> list[PromptSet]:
    """A LECO prompts file's sets; ConfigError naming slider_prompts_file for anything it cannot use."""
    import yaml  # PyYAML ships with every WebUI and with huggingface_hub; only its safe loader is used

    path = Path(path).expanduser()
    data = read_bounded(path, option=_FILE_OPTION, limit=MAX_PROMPTS_FILE_BYTES,
                        hint="a prompts file is a short YAML list")
    try:
        entries = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(_FILE_OPTION, str(path), f"not a readable YAML file: {error}") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(_FILE_OPTION, str(path), "expected a YAML list of prompt settings (- target: …)")
    if len(entries) > MAX_PROMPT_SETS:
        raise ConfigError(_FILE_OPTION, str(path), f"{len(entries)} prompt settings; at most {MAX_PROMPT_SETS}")
    return [_prompt_set(entry, f"{_FILE_OPTION}[{index}]") for index, entry in enumerate(entries)]


def _prompt_set(entry: object, key: str) -> PromptSet:
    if not isinstance(entry, Mapping):
        raise ConfigError(key, entry, "expected a mapping with at least `target`")
    unknown = sorted(str(k) for k in entry if k not in (*_TEXT_KEYS, "action", "guidance_scale", "resolution",
                                                        "batch_size", *_IGNORED_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", entry[unknown[0]], "not a LECO prompt setting")
    if "target" not in entry:
        raise ConfigError(f"{key}.target", None, "every prompt setting needs a target")
    texts = {name: _text(f"{key}.{name}", entry[name]) for name in _TEXT_KEYS if entry.get(name) is not None}
    positive = texts.get("positive", texts["target"])
    unconditional = texts.get("unconditional", "")
    action = str(entry.get("action", "erase")).strip().lower()
    if action not in ACTIONS:
        raise ConfigError(f"{key}.action", entry.get("action"), f"expected one of {list(ACTIONS)}")
    return PromptSet(target=texts["target"], positive=positive, unconditional=unconditional,
                     neutral=texts.get("neutral", unconditional), action=action,
                     guidance_scale=float(_number(f"{key}.guidance_scale", entry.get("guidance_scale", 1.0),
                                                  "slider_guidance_scale")),
                     resolution=_optional_int(f"{key}.resolution", entry.get("resolution"), "slider_resolution"),
                     batch_size=_optional_int(f"{key}.batch_size", entry.get("batch_size"), "train_batch_size"))


def _text(key: str, value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # YAML reads `target: 1girl`-like words as text, but bare numbers as numbers
    if not isinstance(value, str):
        raise ConfigError(key, value, "expected text")
    if len(value) > MAX_TEXT_CHARS:
        raise ConfigError(key, value, f"{len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value


def _number(key: str, value: object, bounds_key: str) -> float:
    bounds = OPTION_BOUNDS[bounds_key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, f"expected a number {bounds.describe()}")
    bounds.check(key, value)
    return value


def _optional_int(key: str, value: object, bounds_key: str) -> int | None:
    if value is None:
        return None
    bounds = OPTION_BOUNDS[bounds_key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, value, f"expected a whole number {bounds.describe()}")
    bounds.check(key, value)
    if bounds_key == "slider_resolution" and value % 8:
        raise ConfigError(key, value, "must be a multiple of 8")
    return value
