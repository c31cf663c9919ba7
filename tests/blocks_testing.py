"""Helpers for the block-weight tests: random LoRA files limited to some blocks, and a renderer that records.

`write_lora(host, path, blocks=…)` writes a kohya LoRA for the host with modules only in `blocks` (by
`block_of_key`), with the metadata a trained one carries. `RecordingRenderer` passes every call to a real
LoraSession and keeps the prompts it rendered, so a test can tell that nothing was generated.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lib_lora.networks.files import save_lora_file
from lib_lora.networks.keys import build_target_index
from lib_lora.networks.metadata import LoraMetadata
from lib_lora.networks.random_files import random_lora_state_dict
from lib_lora.unet_blocks import block_of_key

FAST = {"steps": 2, "width": 64, "height": 64, "cfg_scale": 1.0}
"""Settings that keep a tiny-model render fast: 2 steps (1 saturates the tiny VAE's output), CFG 1 (diffusers then
skips the unconditional pass)."""


def write_lora(host: Any, path: Path, *, blocks: Iterable[str] | None = None, seed: int = 0, kind: str = "lora",
               strength: float = 1.0, tags: dict[str, int] | None = None) -> Path:
    """A random LoRA for `host` with modules only in `blocks` (all of kohya's targets when None)."""
    tensors = random_lora_state_dict(build_target_index(host), kind=kind, rank=4, seed=seed, strength=strength)
    if blocks is not None:
        wanted = set(blocks)
        tensors = {key: tensor for key, tensor in tensors.items() if block_of_key(key, host.arch) in wanted}
        if not tensors:
            raise ValueError(f"no module of the LoRA is in {sorted(wanted)}")
    metadata = LoraMetadata(arch=host.arch.name, network_dim=4, network_alpha=4, output_name=path.stem,
                            steps=100, epoch=2, tag_frequency={"1_test": tags or {"cat": 3, "blue eyes": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora_file(path, tensors, metadata.to_metadata())
    return path


class RecordingRenderer:
    """A LoraSession seen through a window: checks and generations pass through; generated prompts are kept."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.generated: list[str] = []

    def check(self, prompt: str) -> Any:
        return self.session.check(prompt)

    def generate(self, request: Any) -> Any:
        self.generated.append(request.prompt)
        return self.session.generate(request)


def tiny_workspace(root: Path) -> tuple[Any, Any]:
    """(StudioContext, BlockEditor) over the tiny diffusers model, on a workspace `root` whose Lora/ holds `part`
    (modules in BASE, IN04 and OUT05 only)."""
    from lib_lora.hosts.diffusers import load_diffusers_host
    from lib_lora.ui import StudioContext
    from lib_lora.ui.blocks.editor import BlockEditor

    host = load_diffusers_host("tiny")
    write_lora(host, root / "Lora" / "part.safetensors", blocks={"BASE", "IN04", "OUT05"})
    context = StudioContext.for_folder(lambda: host, root)
    return context, BlockEditor(lambda: context.presets_file)
