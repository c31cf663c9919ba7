"""The demo job: the whole LoRA loop end to end on the embedded default (tiny model, generated dataset).

Dataset → tag with the tiny WD14-contract ONNX tagger and a trigger word → train a LoRA in-process on the
loaded model (character recipe, scaled down) → render with and without it → a block-weight grid of presets ×
strengths → check the model's weights are bit-identical to before. Everything is written under one folder laid
out as the standalone app's workspace (`Lora/`, `datasets/`, `tagger/`, `lora_studio/`), so
`python -m lib_lora serve --workspace <folder>` (what `make demo` does next) shows it all in the tabs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .blocks.apply import LoraLibrary
from .blocks.grid import Axis, GridSpec, new_output_path, plan_grid, run_grid
from .blocks.presets import PresetBook
from .blocks.session import LoraSession
from .dataset.tagging.models import resolve_model
from .dataset.tagging.run import tag_folder
from .dataset.tagging.tagger import Tagger, TaggerOptions
from .hosts.base import GenerationRequest, Host
from .hosts.diffusers import load_diffusers_host
from .jobs import Job
from .networks.tools.info import network_info
from .pnginfo import save_png
from .tiny.images import GeneratedDataset, generate_dataset
from .tiny.tagger import write_tiny_wd14_tagger
from .train.config import TrainConfig
from .train.loop import TrainRun
from .train.recipes import RECIPES

DEMO_RECIPE = "character-sd1"
# The recipe's values, scaled to the tiny model: 64 px, a few dozen steps, AdamW (no optional package needed).
DEMO_OVERRIDES: dict[str, object] = {
    "resolution": "64", "max_train_steps": 60, "train_batch_size": 2, "network_dim": 4, "network_alpha": 4,
    "optimizer_type": "AdamW", "optimizer_args": [], "learning_rate": 1e-3, "seed": 1,
}
GRID_X = "preset: NONE, ALL, CHAR, NCNF"
GRID_Y = "strength: 0.5, 1"
SIZE = 64
STEPS = 6


@dataclass
class DemoReport:
    """What the demo did and where it wrote it."""

    model: str
    output_dir: Path
    done: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)


_Step = Callable[..., None]
"""Records one finished step: `step(message, *paths_written)`."""


def run_demo(output_dir: Path, *, model: str = "tiny", log: Callable[[str], None] = lambda _: None,
             host: Host | None = None) -> DemoReport:
    """Run the loop on `host` (loaded from `model` when None), writing under `output_dir`; returns the report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = DemoReport(model=model, output_dir=output_dir)

    def step(message: str, *paths: Path) -> None:
        report.done.append(message)
        report.outputs.extend(paths)
        log(message)

    if host is None:
        started = time.perf_counter()
        host = load_diffusers_host(model)
        step(f"loaded model {model!r} in {time.perf_counter() - started:.1f}s")
    step(f"using {host.info().as_text()}")
    base = {name: tensor.clone() for name, tensor in host.unet.state_dict().items()}

    dataset = _tagged_dataset(output_dir, step)
    lora = _trained_lora(output_dir, host, model, dataset, step)
    session = _render_with_lora(output_dir, host, model, lora, f"{dataset.trigger}, portrait", step)

    session.unmerge()
    exact = all(torch.equal(tensor, base[name]) for name, tensor in host.unet.state_dict().items())
    step(f"unmerged: the model's UNet weights are {'bit-identical' if exact else 'CHANGED'} to before the demo")
    return report


def _tagged_dataset(output_dir: Path, step: _Step) -> GeneratedDataset:
    """Generate the dataset under `datasets/` and tag it with the tiny tagger, trigger word first."""
    dataset = generate_dataset(output_dir / "datasets", count=8, repeats=5)
    step(f"generated {len(dataset.images)} images with captions in {dataset.folder}", dataset.folder)

    tagger_dir = write_tiny_wd14_tagger(output_dir / "tagger" / "tiny-wd14").directory
    tagger = Tagger.load(resolve_model(tagger_dir))
    options = TaggerOptions(trigger=(dataset.trigger,), existing="overwrite")
    tagged = tag_folder(dataset.folder, tagger, options)
    first = dataset.caption_paths[0].read_text(encoding="utf-8").strip()
    step(f"tagged them with the tiny WD14-contract model on {tagged.provider}, trigger word {dataset.trigger!r} "
         f"first ({tagged.summary()}); e.g. {dataset.caption_paths[0].name}: {first!r}")
    return dataset


def _trained_lora(output_dir: Path, host: Host, model: str, dataset: GeneratedDataset, step: _Step) -> Path:
    """Train the scaled-down demo recipe into `Lora/` on the loaded model and read the file back; its path."""
    lora_dir = output_dir / "Lora"
    recipe = RECIPES[DEMO_RECIPE]
    config = TrainConfig.from_dict({
        **recipe.values, **DEMO_OVERRIDES, "pretrained_model_name_or_path": model,
        "train_data_dir": str(output_dir / "datasets"), "output_dir": str(lora_dir),
        "output_name": f"{dataset.trigger}_demo", "caption_extension": ".txt",
    })
    result = TrainRun(config, host).run()
    step(f"trained {recipe.title!r} (scaled down: {config.max_train_steps} steps at {SIZE}px, blocks "
         f"IN04-IN07/OUT03-OUT06) on the loaded model: {result.summary()}", *result.saved)
    lora = result.output
    assert lora is not None
    info = network_info(lora)
    step(f"read it back: {info.format}, {len(info.modules)} modules, family {info.arch}, "
         f"{len(info.top_tags(None))} tags in its metadata (python -m lib_lora lora info {lora})")
    return lora


def _render_with_lora(output_dir: Path, host: Host, model: str, lora: Path, prompt: str,
                      step: _Step) -> LoraSession:
    """Render `prompt` without and with `lora`, then its block-weight grid; the session, still merged."""
    session = LoraSession(host, LoraLibrary([output_dir / "Lora"]), PresetBook.builtin(), model_name=model)
    samples = output_dir / "samples"
    for name, text in (("without_lora", prompt), ("with_lora", f"<lora:{lora.stem}:1> {prompt}")):
        generated = session.generate(GenerationRequest(prompt=text, steps=STEPS, width=SIZE, height=SIZE, seed=0))
        path = save_png(generated.image, samples / f"{name}.png", generated.parameters)
        step(f"rendered {text!r} -> {path}", path)

    spec = GridSpec(prompt=prompt, x=Axis.parse(GRID_X), y=Axis.parse(GRID_Y), lora=lora.stem, seed=0,
                    steps=STEPS, width=SIZE, height=SIZE)
    grid_path = new_output_path(output_dir / "lora_studio" / "grids", "xy")
    plan = plan_grid(spec)
    grid = Job("demo grid", lambda control: run_grid(plan, session, control, model_name=model,
                                                    save_to=grid_path)).run_here()
    step(f"block-weight grid ({GRID_X}) x ({GRID_Y}) of the trained LoRA, {len(grid.cells)} images -> {grid.path}",
         grid_path)
    return session
