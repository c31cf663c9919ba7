"""`python -m lib_lora generate`: one image with the prompt's `<lora:…>` tags (block presets too) merged in.

Parses, calls lib_lora.blocks.apply and the host, writes a PNG with an A1111-style `parameters` chunk and prints
one line. Core errors reach cli.main, which prints them as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .atomic import write_atomically
from .errors import LoraStudioError

if TYPE_CHECKING:
    from PIL import Image

    from .hosts.base import GenerationRequest


class GenerateError(LoraStudioError):
    """The generate command cannot run as asked (output exists, bad size, no LoRA folder)."""


def add_generate_parser(commands: argparse._SubParsersAction, *, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Register `generate` on the top-level command list; `parents` carry the shared model options."""
    parser = commands.add_parser(
        "generate",
        parents=list(parents),
        help="generate one image with the prompt's <lora:…> tags (block presets too) applied",
        description="Generate one image. <lora:name:te:unet:PRESET> tags are taken out of the prompt, their "
        "files found by name in --lora-dir, merged for this image only, and recorded in the PNG's parameters.",
        epilog="A bad input prints one line `lora-studio: error: …` and exits with 2.",
    )
    parser.add_argument("--prompt", required=True, help="the prompt, with <lora:…> tags")
    parser.add_argument("--negative", default="", help="the negative prompt")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default: 7)")
    parser.add_argument("--width", type=int, default=512, help="width, a multiple of 8 (default: 512)")
    parser.add_argument("--height", type=int, default=512, help="height, a multiple of 8 (default: 512)")
    parser.add_argument("--lora-dir", action="append", default=[], metavar="DIR",
                        help="a folder searched recursively for LoRA files (repeatable)")
    parser.add_argument("--presets", metavar="FILE",
                        help="an LBW-style preset file (NAME:v1,...,vN lines); its presets override built-ins")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run_generate_command(args: argparse.Namespace, out: TextIO) -> None:
    """Check inputs, load the model, merge the LoRAs for one generation (restored after), write the PNG."""
    from .blocks.apply import LoraLibrary, format_block_weights, resolve_calls
    from .blocks.presets import PresetBook
    from .blocks.syntax import parse_prompt
    from .hosts.base import GenerationRequest

    target: Path = args.out
    if target.suffix.lower() != ".png":
        raise GenerateError(f"--out {target} must end in .png")
    if target.exists() and not args.force:
        raise GenerateError(f"{target} exists; pass --force to overwrite it")
    clean, calls = parse_prompt(args.prompt)
    if calls and not args.lora_dir:
        raise GenerateError("the prompt has <lora:…> tags but no --lora-dir was given")
    library = LoraLibrary(args.lora_dir)
    for call in calls:
        library.resolve(call.name)  # fail on names before loading the model
    presets = PresetBook.builtin()
    if args.presets:
        presets = presets.merge(PresetBook.from_file(args.presets))
    try:
        request = GenerationRequest(prompt=clean, negative_prompt=args.negative, steps=args.steps,
                                    cfg_scale=args.cfg, width=args.width, height=args.height, seed=args.seed)
    except ValueError as error:
        raise GenerateError(str(error)) from error

    from .hosts.diffusers import load_diffusers_host
    from .networks.attach import WeightMerger
    from .networks.keys import build_target_index

    host = load_diffusers_host(args.model, device=args.device, dtype=args.dtype)
    applied = resolve_calls(calls, library, presets, host.arch)
    merger = WeightMerger(build_target_index(host))
    with merger.applied(applied):
        image = host.generate(request)
    text = parameters_text(args.prompt, request, model=args.model, block_weights=format_block_weights(calls))
    save_png(image, target, text)
    loras = f"{len(calls)} LoRA(s): {', '.join(c.name for c in calls)}" if calls else "no LoRA"
    print(f"generate: wrote {target} ({image.width}x{image.height}, seed {request.seed}, {loras})", file=out)


def parameters_text(prompt: str, request: GenerationRequest, *, model: str, block_weights: str) -> str:
    """A1111's infotext: the prompt as typed (tags kept), the negative prompt, then one line of fields."""
    fields = [f"Steps: {request.steps}", f"CFG scale: {request.cfg_scale:g}", f"Seed: {request.seed}",
              f"Size: {request.width}x{request.height}", f"Model: {model}"]
    if block_weights:
        fields.append(block_weights)
    lines = [prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, parameters: str) -> None:
    """Write `image` as a PNG with a `parameters` text chunk, atomically (temp file in the folder, then rename)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG", pnginfo=info)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, [encoded.getbuffer()])
    except OSError as error:
        raise GenerateError(f"cannot write {path}: {error.strerror or error}") from error
