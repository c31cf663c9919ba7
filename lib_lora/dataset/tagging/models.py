"""Where a WD14 tagger comes from: the known models at pinned revisions, a local folder, or the hub cache.

A tagger is two files, `model.onnx` and `selected_tags.csv` (`shared/research/dataset.md` §1). `resolve_model`
finds them, in this order: a folder given by path; a registry name's subfolder of `models_dir`; the
huggingface_hub cache at the pinned commit; a download of that commit (only when `download` is true and the hub
is not offline). Revisions are commits, never `main`: the model cards ask users to pin, and a moved head would
silently change every caption.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import ModelLoadError

__all__ = [
    "DEFAULT_MODEL",
    "MAX_FIXED_BATCH",
    "MAX_INPUT_SIDE",
    "MAX_MODEL_BYTES",
    "MAX_TAGS_BYTES",
    "MODEL_FILE",
    "REGISTRY",
    "TAGS_FILE",
    "DownloadProgress",
    "TaggerFiles",
    "TaggerModel",
    "TaggerModelError",
    "check_file_size",
    "known_model",
    "resolve_model",
]

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
MAX_MODEL_BYTES = 4 * 1024**3
"""The largest model.onnx opened (the largest WD14 tagger, EVA02-Large v3, is about 1.3 GB)."""
MAX_TAGS_BYTES = 16 * 1024**2
"""The largest selected_tags.csv read (WD14's lists hold about 10,000 tags in about 300 kB)."""
MAX_INPUT_SIDE = 2048
"""The largest input side a model may ask for (WD14 takes 448): every image is resized to side × side floats."""
MAX_FIXED_BATCH = 256
"""The largest fixed batch a model may declare: a short last batch is padded to it."""

DownloadProgress = Callable[[str, int, "int | None"], None]
"""progress(message, bytes_done, bytes_total or None), called from a watcher thread while a file downloads."""


class TaggerModelError(ModelLoadError):
    """The tagger model is unknown, incomplete, not downloaded while offline, or not a WD14 model."""


@dataclass(frozen=True)
class TaggerModel:
    """One SmilingWolf WD14 tagger on the hub: which repository, which commit, which family and backbone."""

    name: str
    repo_id: str
    revision: str
    family: Literal["v2", "v3"]
    arch: str


def _model(name: str, revision: str, family: Literal["v2", "v3"], arch: str) -> TaggerModel:
    return TaggerModel(name, f"SmilingWolf/{name}", revision, family, arch)


# Commits as pinned by several public projects (looked up 2026-11; the v3 ones are the "v2.0" weights of Mar 2024).
# The v2 exports are fixed to batch 1 except swinv2, re-exported with a dynamic batch; the session says which.
REGISTRY: dict[str, TaggerModel] = {
    m.name: m
    for m in (
        _model("wd-v1-4-convnext-tagger-v2", "4b34d1b07bdd8e95494072648960b8a6adcbc0ff", "v2", "convnext"),
        _model("wd-v1-4-convnextv2-tagger-v2", "dbd4dbe553ee51feb3bc745b614fb762080e3912", "v2", "convnextv2"),
        _model("wd-v1-4-swinv2-tagger-v2", "cdb0c7fdc70646f0af29c6f80f8df564344a69b6", "v2", "swinv2"),
        _model("wd-v1-4-vit-tagger-v2", "1f3f3e8ae769634e31e1ef696df11ec37493e4f2", "v2", "vit"),
        _model("wd-convnext-tagger-v3", "d39e46de298d27340111b64965e20b8185c407e6", "v3", "convnext"),
        _model("wd-swinv2-tagger-v3", "627aef95638667ddcaa3ac8ae625e88ea5b02f51", "v3", "swinv2"),
        _model("wd-vit-tagger-v3", "7f6b584d0bd3f55c4531f14ba3d4761b2bccdc0f", "v3", "vit"),
        _model("wd-vit-large-tagger-v3", "ae469aa2e4706a3af08d3673cf73a11d1add314c", "v3", "vit-large"),
        _model("wd-eva02-large-tagger-v3", "b25b82a03f7282e41aa2f257a52c7583b710bd1c", "v3", "eva02-large"),
    )
}
DEFAULT_MODEL = "wd-vit-tagger-v3"
"""The fastest v3 model (SmilingWolf: ViT fastest, SwinV2 about 2x ConvNeXt)."""


@dataclass(frozen=True)
class TaggerFiles:
    """The two files of a tagger and where they were found ("folder", "models_dir", "hub cache", "download")."""

    model_path: Path
    tags_path: Path
    source: str
    name: str

    def describe(self) -> str:
        return f"{self.name} ({self.source}: {self.model_path.parent})"


def check_file_size(path: Path, limit: int) -> None:
    """TaggerModelError when the file at `path` is larger than `limit` bytes (checked before it is read)."""
    try:
        size = Path(path).stat().st_size
    except OSError as error:
        raise TaggerModelError(f"{path}: cannot read it: {error.strerror or error}") from error
    if size > limit:
        raise TaggerModelError(f"{path}: {size} bytes, more than the {limit} a WD14 tagger file may have")


def known_model(name: str) -> TaggerModel | None:
    """The registry entry for a name or a repo id (`wd-vit-tagger-v3`, `SmilingWolf/wd-vit-tagger-v3`), or None."""
    key = name.strip().removeprefix("SmilingWolf/")
    return REGISTRY.get(key)


def resolve_model(
    name_or_dir: str | Path,
    *,
    models_dir: Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    progress: DownloadProgress | None = None,
) -> TaggerFiles:
    """Find (or download at the pinned commit) a tagger's model.onnx + selected_tags.csv; TaggerModelError if not."""
    text = str(name_or_dir).strip()
    if not text:
        raise TaggerModelError(f"no tagger model given; known models: {', '.join(REGISTRY)}")
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder_files(path, source="folder", name=path.name)
    model = known_model(text)
    if model is None:
        if path.exists():
            raise TaggerModelError(f"{text}: not a folder (a tagger folder holds {MODEL_FILE} and {TAGS_FILE})")
        raise TaggerModelError(
            f"{text!r} is neither a folder nor a known model; known models: {', '.join(REGISTRY)}"
        )
    if models_dir is not None and (Path(models_dir) / model.name).is_dir():
        return _folder_files(Path(models_dir) / model.name, source="models_dir", name=model.name)
    cached = _from_hub(model, cache_dir, local_only=True, progress=None)
    if cached is not None:
        return cached
    if not download:
        raise TaggerModelError(_not_here(model, models_dir, "downloads are off"))
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise TaggerModelError(_not_here(model, models_dir, "the hub is offline (HF_HUB_OFFLINE is set)"))
    files = _from_hub(model, cache_dir, local_only=False, progress=progress)
    assert files is not None  # a failed download raises
    return files


def _folder_files(folder: Path, *, source: str, name: str) -> TaggerFiles:
    missing = [f for f in (MODEL_FILE, TAGS_FILE) if not (folder / f).is_file()]
    if missing:
        raise TaggerModelError(f"{folder}: not a tagger folder, {' and '.join(missing)} missing "
                               f"(a WD14 tagger folder holds {MODEL_FILE} and {TAGS_FILE})")
    return TaggerFiles(folder / MODEL_FILE, folder / TAGS_FILE, source, name)


def _not_here(model: TaggerModel, models_dir: Path | None, why: str) -> str:
    where = f" or in {Path(models_dir) / model.name}" if models_dir is not None else ""
    return (f"{model.name} is not downloaded and {why}: put {MODEL_FILE} and {TAGS_FILE} from "
            f"https://huggingface.co/{model.repo_id} (commit {model.revision[:7]}) in the hub cache{where}, "
            f"or give the folder that holds them")


def _from_hub(model: TaggerModel, cache_dir: Path | None, *, local_only: bool,
              progress: DownloadProgress | None) -> TaggerFiles | None:
    """Both files from the hub cache (local_only) or downloaded; None when local_only and one is missing."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    paths: list[Path] = []
    for filename in (TAGS_FILE, MODEL_FILE):  # the small file first: a bad network shows up in a second
        try:
            with _watch_download(model, filename, cache_dir, progress if not local_only else None):
                found = hf_hub_download(model.repo_id, filename, revision=model.revision, cache_dir=cache_dir,
                                        local_files_only=local_only)
        except LocalEntryNotFoundError:
            if local_only:
                return None
            raise TaggerModelError(_not_here(model, None, "the hub cannot be reached")) from None
        except (OSError, ValueError) as error:  # HTTP errors are OSErrors (requests); bad repo/revision ValueError
            raise TaggerModelError(f"cannot download {filename} of {model.repo_id}@{model.revision[:7]}: "
                                   f"{error}") from error
        paths.append(Path(found))
    return TaggerFiles(paths[1], paths[0], "hub cache" if local_only else "download", model.name)


@contextmanager
def _watch_download(model: TaggerModel, filename: str, cache_dir: Path | None,
                    progress: DownloadProgress | None) -> Iterator[None]:
    """Report a download's bytes by watching its `.incomplete` blob.

    hf_hub_download takes no progress callback (only its own tqdm on stderr), so a watcher thread polls the
    size of the partial file the hub writes; nothing of huggingface_hub is patched.
    """
    if progress is None:
        yield
        return
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    total: int | None = None
    try:
        total = get_hf_file_metadata(hf_hub_url(model.repo_id, filename, revision=model.revision)).size
    except Exception:  # the size is only for the bar; the download reports real errors
        total = None
    blobs = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{model.repo_id.replace('/', '--')}" / "blobs"
    message = f"downloading {model.name}/{filename}"
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            sizes = [p.stat().st_size for p in blobs.glob("*.incomplete") if p.is_file()]
            progress(message, max(sizes, default=0), total)

    watcher = threading.Thread(target=watch, name="lora-studio-download-watch", daemon=True)
    progress(message, 0, total)
    watcher.start()
    try:
        yield
        progress(message, total or 0, total)
    finally:
        done.set()
        watcher.join()
