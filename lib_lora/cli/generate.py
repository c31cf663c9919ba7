"""`python -m lib_lora generate`: one image with the prompt's `<lora:…>` tags (block presets too) merged in.

Parses, calls lib_lora.blocks.apply and the host, writes a PNG with an A1111-style `parameters` chunk and prints
one line. Core errors reach cli.main, which prints them as one line and exits with 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..backups import replacing
from ..errors import LoraStudioError
from ..file_names import check_output_files, check_writable_folder
from ..pnginfo import save_png
from .options import (
    ERRORS_EPILOG,
    add_force_option,
    add_image_options,
    add_lora_dir_option,
    add_presets_file_option,
    image_settings,
)


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
        epilog=ERRORS_EPILOG,
    )
    parser.add_argument("--prompt", required=True, help="the prompt, with <lora:…> tags")
    add_image_options(parser)
    add_lora_dir_option(parser)
    add_presets_file_option(parser)
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    add_force_option(parser)


def run_generate_command(args: argparse.Namespace, out: TextIO) -> None:
    """Check inputs, load the model, render with the prompt's LoRAs merged (restored after), write the PNG."""
    from ..blocks.apply import LoraLibrary
    from ..blocks.presets import PresetBook
    from ..blocks.session import LoraSession
    from ..blocks.syntax import parse_prompt
    from ..hosts.base import GenerationRequest

    target: Path = args.out
    if target.suffix.lower() != ".png":
        raise GenerateError(f"--out {target} must end in .png")
    check_output_files([target], option="--out", value=target)
    if target.exists() and not args.force:
        raise GenerateError(f"{target} exists; pass --force to overwrite it")
    check_writable_folder(target.parent, option="--out", value=target)
    _, calls = parse_prompt(args.prompt)
    if calls and not args.lora_dir:
        raise GenerateError("the prompt has <lora:…> tags but no --lora-dir was given")
    library = LoraLibrary(args.lora_dir)
    for call in calls:
        library.resolve(call.name)  # fail on names before loading the model
    presets = PresetBook.builtin()
    if args.presets:
        presets = presets.merge(PresetBook.from_file(args.presets))
    try:
        request = GenerationRequest(prompt=args.prompt, **image_settings(args))
    except ValueError as error:
        raise GenerateError(str(error)) from error

    from ..hosts.diffusers import load_diffusers_host

    host = load_diffusers_host(args.model, device=args.device, dtype=args.dtype)
    session = LoraSession(host, library, presets, model_name=args.model)
    try:
        generated = session.generate(request)
    finally:
        session.unmerge()
    with replacing(target):  # an overwritten image is kept in .lora_studio_backup/
        save_png(generated.image, target, generated.parameters)
    image = generated.image
    loras = f"{len(calls)} LoRA(s): {', '.join(c.name for c in calls)}" if calls else "no LoRA"
    print(f"generate: wrote {target} ({image.width}x{image.height}, seed {request.seed}, {loras})", file=out)
    for warning in generated.warnings:  # LoRAs whose modules matched in part (also in the PNG's parameters)
        print(f"warning: {warning}", file=out)
