"""Sample images during training: sd-scripts' prompt files, rendered through the host with the network attached.

Prompt files are read as sd-scripts reads them: `.txt` (one prompt per line, `#` lines skipped, inline options
`--n` negative prompt, `--w`/`--h` size, `--d` seed, `--l` CFG scale, `--s` steps, `--ss` sampler), `.toml`
(`[prompt]` defaults and `[[prompt.subset]]` entries) or `.json` (a list of prompt strings or dicts with the keys
prompt, negative_prompt, width, height, seed, scale, sample_steps). The sampler is the host's own: `--ss` is read
and reported, not applied.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic import write_atomically
from ..hosts.base import GenerationRequest
from .errors import ConfigError, TrainingError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (A1111's): the same parser from PyPI
    import tomli as tomllib

if TYPE_CHECKING:
    from PIL import Image

    from ..hosts.base import Host

SAMPLE_FOLDER = "sample"
DEFAULT_STEPS = 30
DEFAULT_SCALE = 7.5
MAX_STEPS = 1000
PROMPT_FILE_SUFFIXES = (".txt", ".toml", ".json")

# inline option -> (field, converter); the longer names first so "ss" is not read as "s"
_LINE_OPTIONS: tuple[tuple[str, str, type], ...] = (
    ("ss", "sampler", str),
    ("n", "negative_prompt", str),
    ("w", "width", int),
    ("h", "height", int),
    ("d", "seed", int),
    ("l", "scale", float),
    ("s", "sample_steps", int),
    ("g", "guidance", float),
)
_DICT_KEYS = {"prompt", "negative_prompt", "width", "height", "seed", "scale", "sample_steps", "sampler",
              "sample_sampler", "guidance", "enum"}


@dataclass(frozen=True)
class SamplePrompt:
    """One sample image to render: prompt, negative prompt, size, seed (None: derived from the run), CFG, steps."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    scale: float = DEFAULT_SCALE
    sample_steps: int = DEFAULT_STEPS
    sampler: str | None = None

    def request(self, *, index: int, run_seed: int, default_size: tuple[int, int]) -> GenerationRequest:
        """The host request: missing size from the training resolution (width, height), sizes cut to multiples of 8
        (at least 64), a missing seed as run_seed + index so every sampling point of a run is comparable."""
        width = _size(self.width if self.width is not None else default_size[0])
        height = _size(self.height if self.height is not None else default_size[1])
        seed = self.seed if self.seed is not None else run_seed + index
        return GenerationRequest(prompt=self.prompt, negative_prompt=self.negative_prompt, steps=self.sample_steps,
                                 cfg_scale=self.scale, width=width, height=height, seed=seed)


def _size(value: int) -> int:
    return max(64, value - value % 8)


def parse_prompt_line(line: str, *, where: str = "sample_prompts") -> SamplePrompt:
    """One `.txt` line: the prompt, then ` --x value` options; an unknown option or a bad value is a ConfigError."""
    parts = re.split(r"\s+--(?=[A-Za-z]+\s)", " " + line.strip())
    prompt = parts[0].strip()
    values: dict[str, Any] = {}
    for part in parts[1:]:
        name, _, raw = part.strip().partition(" ")
        raw = raw.strip()
        for option, field, convert in _LINE_OPTIONS:
            if name.lower() == option:
                try:
                    values[field] = convert(raw)
                except ValueError:
                    raise ConfigError(where, line, f"--{option} needs a {convert.__name__}, got {raw!r}") from None
                break
        else:
            known = ", ".join(f"--{o}" for o, _, _ in _LINE_OPTIONS)
            raise ConfigError(where, line, f"unknown option --{name} (known: {known})")
    return _prompt_from_values(prompt, values, where=where, raw=line)


def _prompt_from_values(prompt: str, values: Mapping[str, Any], *, where: str, raw: object) -> SamplePrompt:
    if not prompt:
        raise ConfigError(where, raw, "the prompt is empty")
    steps = int(values.get("sample_steps", DEFAULT_STEPS))
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(where, raw, f"sample steps must be 1..{MAX_STEPS}, got {steps}")
    for key in ("width", "height"):
        if values.get(key) is not None and int(values[key]) < 8:
            raise ConfigError(where, raw, f"{key} must be at least 8, got {values[key]}")
    seed = values.get("seed")
    return SamplePrompt(
        prompt=prompt,
        negative_prompt=str(values.get("negative_prompt") or ""),
        width=None if values.get("width") is None else int(values["width"]),
        height=None if values.get("height") is None else int(values["height"]),
        seed=None if seed is None else int(seed),
        scale=float(values.get("scale", DEFAULT_SCALE)),
        sample_steps=steps,
        sampler=values.get("sampler") or values.get("sample_sampler"),
    )


def parse_prompt_text(text: str, *, where: str = "sample_prompts") -> list[SamplePrompt]:
    """The prompts of a `.txt` prompt file: one per non-empty line, `#` comment lines skipped."""
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            prompts.append(parse_prompt_line(line, where=f"{where} line {number}"))
    return prompts


def _from_dict(entry: object, *, where: str) -> SamplePrompt:
    if isinstance(entry, str):
        return parse_prompt_line(entry, where=where)
    if not isinstance(entry, Mapping):
        raise ConfigError(where, entry, "each prompt must be a string or a table/object")
    unknown = sorted(set(entry) - _DICT_KEYS)
    if unknown:
        raise ConfigError(where, dict(entry), f"unknown key(s) {unknown}; known: {sorted(_DICT_KEYS - {'enum'})}")
    try:
        return _prompt_from_values(str(entry.get("prompt") or "").strip(), entry, where=where, raw=dict(entry))
    except (TypeError, ValueError) as error:
        raise ConfigError(where, dict(entry), str(error)) from None


def load_sample_prompts(path: str | Path) -> list[SamplePrompt]:
    """Read a prompt file (.txt, .toml, .json) as sd-scripts does; ConfigError names the file, entry and problem."""
    path = Path(path)
    where = f"sample_prompts ({path.name})"
    if path.suffix.lower() not in PROMPT_FILE_SUFFIXES:
        raise ConfigError("sample_prompts", str(path), f"expected a {', '.join(PROMPT_FILE_SUFFIXES)} file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("sample_prompts", str(path), f"cannot read it: {error.strerror or error}") from None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        prompts = parse_prompt_text(text, where=where)
    elif suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError("sample_prompts", str(path), f"not valid TOML: {error}") from None
        table = data.get("prompt")
        if not isinstance(table, dict) or not isinstance(table.get("subset"), list):
            raise ConfigError("sample_prompts", str(path), "a TOML prompt file needs [prompt] and [[prompt.subset]]")
        defaults = {k: v for k, v in table.items() if k != "subset"}
        prompts = [_from_dict({**defaults, **subset} if isinstance(subset, dict) else subset,
                              where=f"{where} subset {i + 1}") for i, subset in enumerate(table["subset"])]
    else:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigError("sample_prompts", str(path), f"not valid JSON: {error}") from None
        if not isinstance(data, list):
            raise ConfigError("sample_prompts", str(path), "a JSON prompt file holds a list of prompts")
        prompts = [_from_dict(entry, where=f"{where} entry {i + 1}") for i, entry in enumerate(data)]
    if not prompts:
        raise ConfigError("sample_prompts", str(path), "the file holds no prompt")
    return prompts


def sample_path(output_dir: Path, output_name: str, step: int, index: int) -> Path:
    """Where sample `index` at `step` goes: <output_dir>/sample/<output_name>_<step:06d>_<index:02d>.png."""
    return Path(output_dir) / SAMPLE_FOLDER / f"{output_name}_{step:06d}_{index:02d}.png"


def render_samples(
    host: Host,
    prompts: Sequence[SamplePrompt],
    *,
    modules: Sequence[torch.nn.Module] = (),
    output_dir: Path,
    output_name: str,
    step: int,
    run_seed: int,
    default_size: tuple[int, int],
) -> list[Path]:
    """Render `prompts` through `host.generate` and save PNGs; `modules` (the network) are put in eval mode
    meanwhile and the global RNG states are restored afterwards, so sampling does not change the training run."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    paths = []
    try:
        for module in modules:
            module.eval()
        for index, prompt in enumerate(prompts):
            request = prompt.request(index=index, run_seed=run_seed, default_size=default_size)
            with torch.no_grad():
                try:
                    image = host.generate(request)
                except (RuntimeError, ValueError) as error:
                    raise TrainingError(f"sample {index + 1} ({prompt.prompt!r}) failed: {error}") from error
            path = sample_path(output_dir, output_name, step, index)
            save_sample_png(image, path, _parameters_text(request, step))
            paths.append(path)
    finally:
        for module, mode in modes:
            module.training = mode
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    return paths


def _parameters_text(request: GenerationRequest, step: int) -> str:
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(f"Steps: {request.steps}, CFG scale: {request.cfg_scale:g}, Seed: {request.seed}, "
                 f"Size: {request.width}x{request.height}, Training step: {step}")
    return "\n".join(lines)


def save_sample_png(image: Image.Image, path: Path, parameters: str) -> None:
    """Write a PNG with an A1111-style `parameters` text chunk, atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG", pnginfo=info)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, [encoded.getbuffer()])
    except OSError as error:
        raise TrainingError(f"cannot write sample {path}: {error.strerror or error}") from error
