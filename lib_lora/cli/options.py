"""Options that several commands take, each defined once so that every command's help says the same words.

`generate` and `blocks analyze|grid` render images from the same settings (`add_image_options`) and find LoRAs
and presets the same way; the file tools share the presets file and the error epilogue.
"""

from __future__ import annotations

import argparse
from typing import Any

ERRORS_EPILOG = "A bad input prints one line `lora-studio: error: …` and exits with 2."
PRESETS_FILE_HELP = "an LBW-style preset file (NAME:v1,...,vN lines); its presets override built-ins"


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The settings of a rendered image besides its prompt: --negative, --seed, --steps, --cfg, --width, --height."""
    parser.add_argument("--negative", default="", help="the negative prompt")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default: 7)")
    parser.add_argument("--width", type=int, default=512, help="width, a multiple of 8 (default: 512)")
    parser.add_argument("--height", type=int, default=512, help="height, a multiple of 8 (default: 512)")


def image_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed image options as the keyword arguments of GenerationRequest, AnalyzeSpec and GridSpec."""
    return {"negative_prompt": args.negative, "seed": args.seed, "steps": args.steps, "cfg_scale": args.cfg,
            "width": args.width, "height": args.height}


def add_lora_dir_option(parser: argparse.ArgumentParser) -> None:
    """--lora-dir DIR (repeatable): where LoRAs named in a prompt or option are found."""
    parser.add_argument("--lora-dir", action="append", default=[], metavar="DIR",
                        help="a folder searched recursively for LoRA files (repeatable)")


def add_presets_file_option(parser: argparse.ArgumentParser, flag: str = "--presets", metavar: str = "FILE") -> None:
    """The user's block-weight presets file, merged over the built-in presets."""
    parser.add_argument(flag, metavar=metavar, help=PRESETS_FILE_HELP)


def add_force_option(parser: argparse.ArgumentParser) -> None:
    """--force: an existing --out is overwritten (its old file kept in .lora_studio_backup/)."""
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
