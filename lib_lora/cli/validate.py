"""`python -m lib_lora validate FILE... --data DIR`: the validation loss of saved LoRA files on a folder of images.

Every file is measured on the same images with the same fixed noise and timesteps (train/validation.py), so the
values compare files with each other and with the `ss_validation_loss` a run wrote with the same seed, resolution
and timesteps. Core errors reach cli.main, which prints them as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO


def add_validate_parser(commands: argparse._SubParsersAction, *, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Register `validate` on the top-level command list."""
    parser = commands.add_parser(
        "validate", parents=list(parents), help="measure the validation loss of LoRA files on a folder of images",
        description="Measure each LoRA file's loss on the images of --data (laid out like train_data_dir) with "
        "noise and timesteps fixed by --seed: the same file, folder and seed always give the same value.",
    )
    parser.add_argument("files", type=Path, nargs="+", help="the LoRA files (.safetensors)")
    parser.add_argument("--data", type=Path, required=True, help="the folder of validation images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed noise and timesteps (default: 0)")
    parser.add_argument("--timesteps", type=int, default=4, help="timesteps per image (default: 4)")
    parser.add_argument("--resolution", default="512", help="training resolution, 'size' or 'width,height' "
                        "(default: 512)")
    parser.add_argument("--caption-extension", default=".txt", help="caption file extension (default: .txt)")
    parser.add_argument("--json", action="store_true", help='print [{"file", "loss", "per_image"}, ...] as JSON')


def run_validate_command(args: argparse.Namespace, out: TextIO) -> None:
    """Check the options, load the model, prepare the images once, measure every file."""
    from ..hosts.diffusers import load_diffusers_host
    from ..train.config import TrainConfig
    from ..train.validation import ValidationSet, validation_loss

    config = TrainConfig.from_dict({"train_data_dir": str(args.data), "resolution": args.resolution,
                                    "caption_extension": args.caption_extension, "validation_seed": args.seed,
                                    "validation_timesteps": args.timesteps})
    host = load_diffusers_host(args.model, device=args.device, dtype=args.dtype)
    images = ValidationSet.prepare(config.data, host, seed=args.seed)
    measured = []
    for path in args.files:
        result = validation_loss(host, path, images, args.seed, timesteps=config.validation_timesteps)
        measured.append({"file": str(path), "loss": result.loss, "per_image": result.per_image})
        if not args.json:
            print(f"{path}: validation loss {result.loss:.6f} ({len(images)} images, seed {args.seed})", file=out)
    if args.json:
        print(json.dumps(measured, indent=2), file=out)
