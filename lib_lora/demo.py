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
from .networks.attach import WeightMerger
from .networks.files import save_lora_file, short_hash
from .networks.keys import build_target_index
from .networks.metadata import LoraMetadata
from .networks.network import as_applied, load_network
from .tiny.images import GeneratedDataset, generate_dataset
from .tiny.loras import random_lora_state_dict

# What the full loop has that this build does not do yet, with the issue that brings it.
NOT_YET: tuple[str, ...] = (
    "tag the dataset with a WD14 ONNX tagger and edit tags (issue #5)",
    "train a LoRA on the cached latents and conditionings (issue #6)",
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
    """Load the model, generate a dataset, cache latents and conditionings, render samples without and with a LoRA."""
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

    lora_path = write_demo_lora(host, dataset, output_dir / "loras" / f"{dataset.trigger}_demo.safetensors")
    step(f"wrote a kohya-format LoRA with ss_*/modelspec metadata -> {lora_path} (random weights stand in for "
         f"a trained LoRA until issue #6)")
    network = load_network(lora_path)
    step(f"read it back: {network.format}, {len(network.modules)} modules, family {network.arch}, "
         f"A1111 hash {short_hash(network.identity)} (details: python -m lib_lora lora info {lora_path})")
    merger = WeightMerger(build_target_index(host))
    before = {k: v.clone() for k, v in host.unet.state_dict().items()}
    with merger.applied([as_applied(network, unet_multiplier=0.8, te_multiplier=0.8)]) as applied:
        with_lora = host.generate(request)
    with_lora.save(report.sample.with_name("sample_lora.png"))
    exact = all(torch.equal(v, host.unet.state_dict()[k]) for k, v in before.items())
    step(f"merged it at 0.8 into {applied.rebuilt} weights, rendered {report.sample.with_name('sample_lora.png')}, "
         f"unmerged: weights {'bit-identical' if exact else 'CHANGED'} to before")
    for item in report.not_yet:
        log(f"not yet: {item}")
    return report


def write_demo_lora(host: Host, dataset: GeneratedDataset, path: Path) -> Path:
    """A random rank-4 LoRA for `host`, saved with the metadata a trained one would carry (tags of `dataset`)."""
    rank = 4
    tensors = random_lora_state_dict(build_target_index(host), rank=rank, alpha=rank / 2, seed=0)
    tags: dict[str, int] = {}
    for caption in dataset.captions:
        for tag in (t.strip() for t in caption.split(",")):
            tags[tag] = tags.get(tag, 0) + 1
    folder = dataset.folder.name
    metadata = LoraMetadata(
        arch=host.arch.name,
        network_dim=rank,
        network_alpha=rank / 2,
        output_name=path.stem,
        resolution=(64, 64),
        dataset_dirs={folder: {"n_repeats": dataset.repeats, "img_count": len(dataset.images)}},
        tag_frequency={folder: tags},
        training_comment="LoRA Studio demo: random weights, not trained",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora_file(path, tensors, metadata.to_metadata())
    return path
