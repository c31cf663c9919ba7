"""What the tabs need from where they run (WebUI or standalone): the model, the folders, the one GPU gate.

Folders are callables so the WebUI's settings are read when the user acts, not when the UI is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..jobs import GpuGate
from .model_panel import HostProvider

Folders = Callable[[], Sequence[Path]]
Folder = Callable[[], Path]


@dataclass
class StudioContext:
    """The host provider and folders every tab reads; `gpu` is shared by generation, grids and training.

    - `lora_dirs`: where LoRAs are found by name (A1111: the built-in Lora's folder);
    - `trained_dir`: where trained LoRAs are written (by default the first LoRA folder);
    - `data_roots`: the only folders the Dataset tab may open (and training read);
    - `tagger_dir`: WD14 models, one subfolder each;
    - `work_dir`: our own files: user presets (`presets.txt`), grids, training states.
    """

    host_provider: HostProvider
    lora_dirs: Folders
    trained_dir: Folder
    data_roots: Folders
    tagger_dir: Folder
    work_dir: Folder
    standalone: bool = False
    gpu: GpuGate = field(default_factory=GpuGate)

    @property
    def presets_file(self) -> Path:
        """The user's preset file (LBW's `NAME:v1,...` lines), read and written by the Block Weight tab."""
        return self.work_dir() / "presets.txt"

    @classmethod
    def for_folder(cls, host_provider: HostProvider, root: Path, *, standalone: bool = True,
                   lora_dirs: Sequence[Path] = (), data_roots: Sequence[Path] = ()) -> StudioContext:
        """Everything under one workspace `root`: `Lora/`, `datasets/`, `tagger/`, `lora_studio/` (created on use).

        Extra LoRA folders and data roots are searched after the workspace's own.
        """
        root = Path(root)
        loras = [root / "Lora", *map(Path, lora_dirs)]
        roots = [root / "datasets", *map(Path, data_roots)]

        def ensure(path: Path) -> Path:
            path.mkdir(parents=True, exist_ok=True)
            return path

        return cls(
            host_provider=host_provider,
            lora_dirs=lambda: [ensure(loras[0]), *loras[1:]],
            trained_dir=lambda: ensure(loras[0]),
            data_roots=lambda: [ensure(roots[0]), *roots[1:]],
            tagger_dir=lambda: ensure(root / "tagger"),
            work_dir=lambda: ensure(root / "lora_studio"),
            standalone=standalone,
        )
