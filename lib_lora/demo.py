"""The demo job: the main loop end to end on the embedded default (tiny model, generated dataset).

It runs what exists today and names what is not there yet, so `make demo` stays honest as issues land.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .hosts.base import GenerationRequest, Host
from .hosts.diffusers import load_diffusers_host
from .tiny.images import generate_dataset

# What the full loop has that this build does not do yet, with the issue that brings it.
NOT_YET: tuple[str, ...] = (
    "tag the dataset with a WD14 ONNX tagger and edit tags (issue #5)",
    "train a LoRA on the cached latents and conditionings (issue #6)",
    "write and apply LoRA files in every common format (issue #3)",
    "apply LoRAs with per-block strengths, e.g. <lora:name:0.8:NCNF> (issue #4)",
)


@dataclass
class DemoReport:
    """What the demo did, where it wrote it, and what it skipped."""

    model: str
    output_dir: Path
    done: list[str] = field(default_factory=list)
    not_yet: tuple[str, ...] = NOT_YET
    sample: Path | None = None


def load_pixels(path: Path, size: int) -> torch.Tensor:
    """An image file as [3, size, size] in [-1, 1]: transparency onto white, centre crop, bicubic resize."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def run_demo(output_dir: Path, *, model: str = "tiny", log: Callable[[str], None] = lambda _: None,
             host: Host | None = None) -> DemoReport:
    """Load the model, generate a dataset, cache its latents and conditionings, render a sample image."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = DemoReport(model=model, output_dir=output_dir)

    def step(message: str) -> None:
        report.done.append(message)
        log(message)

    if host is None:
        started = time.perf_counter()
        host = load_diffusers_host(model)
        step(f"loaded model {model!r} in {time.perf_counter() - started:.1f}s")
    step(f"using {host.info().as_text()}")

    dataset = generate_dataset(output_dir / "dataset")
    step(f"generated {len(dataset.images)} images with captions in {dataset.folder}")

    resolution = 64
    pixels = torch.stack([load_pixels(p, resolution) for p in dataset.images])
    latents = host.encode_images(pixels)
    cond = host.encode_prompts(list(dataset.captions), size=(resolution, resolution))
    step(f"cached latents {tuple(latents.shape)} and text conditionings {tuple(cond.context.shape)} "
         f"with the host's own VAE and text encoder")

    with host.training_mode():
        noise = torch.randn_like(latents[:1])
        schedule = host.alphas_cumprod()
        t = torch.tensor([500])
        noisy = schedule[t].sqrt() * latents[:1] + (1 - schedule[t]).sqrt() * noise
        prediction = host.apply_unet(noisy.to(host.dtype), t, cond.select(slice(0, 1)))
        loss = torch.nn.functional.mse_loss(prediction.float(), noise)
    step(f"ran one denoiser pass in training mode (loss {loss.item():.4f}); the host's flags were restored")

    request = GenerationRequest(prompt=dataset.captions[0], steps=4, width=resolution, height=resolution, seed=0)
    image = host.generate(request)
    report.sample = output_dir / "samples" / "sample.png"
    report.sample.parent.mkdir(parents=True, exist_ok=True)
    image.save(report.sample)
    step(f"generated a {image.width}x{image.height} sample for {request.prompt!r} -> {report.sample}")
    for item in report.not_yet:
        log(f"not yet: {item}")
    return report
