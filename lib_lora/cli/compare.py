"""`python -m lib_lora compare FILE... --data DIR`: compare saved LoRA files (a run's epochs) and recommend one.

Renders every file at each strength and prompt on the model, measures the samples' similarity to the training
images of --data and takes each file's validation loss (measured on --validation, else the one its run wrote),
ranks the recommended file's blocks, checks every file's keys against each program's loader, and prints the
recommendation with its reason. --keep then keeps that file (or --keep-file) under the run's name and moves the
others into epochs/. Core errors reach cli.main, which prints them as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import LoraStudioError
from ..train.compare.words import COMPARE_HELP, DEFAULT_STRENGTHS, parse_strengths, strengths_text
from .options import ERRORS_EPILOG, add_force_option

if TYPE_CHECKING:
    from ..train.compare import CompareFile, CompareResult


class CompareCommandError(LoraStudioError):
    """The compare command cannot run as asked (--out exists, no prompt, a --keep-file not compared)."""


def add_compare_parser(commands: argparse._SubParsersAction, *, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Register `compare` on the top-level command list; `parents` carry the shared model options."""
    parser = commands.add_parser(
        "compare", parents=list(parents), help="compare saved LoRA files (a run's epochs) and recommend one",
        description="Render each LoRA file at each strength and prompt at fixed seeds, score them by validation "
        "loss and similarity to the training images, rank the blocks of the best, and recommend one file and "
        "strength with the reason.",
        epilog=ERRORS_EPILOG,
    )
    parser.add_argument("files", type=Path, nargs="+", help=COMPARE_HELP["files"])
    parser.add_argument("--data", type=Path, required=True, help=COMPARE_HELP["data"])
    parser.add_argument("--prompt", action="append", default=[], metavar="PROMPT",
                        help=COMPARE_HELP["prompts"] + " Repeatable; default: the run's trigger word.")
    parser.add_argument("--strengths", default=strengths_text(DEFAULT_STRENGTHS),
                        help=COMPARE_HELP["strengths"] + f" (default: {strengths_text(DEFAULT_STRENGTHS)})")
    parser.add_argument("--seed", type=int, default=0, help=COMPARE_HELP["seed"] + " (default: 0)")
    parser.add_argument("--width", type=int, default=512, help=COMPARE_HELP["size"] + " (default: 512)")
    parser.add_argument("--height", type=int, default=512, help=COMPARE_HELP["size"] + " (default: 512)")
    parser.add_argument("--validation", type=Path, default=None, metavar="DIR", help=COMPARE_HELP["validation_dir"])
    parser.add_argument("--resolution", default=None, help="with --validation: the training resolution, 'size' or "
                        "'width,height' (default: --width)")
    parser.add_argument("--caption-extension", default=".txt", help="caption file extension (default: .txt)")
    parser.add_argument("--analyze", choices=("best", "all", "none"), default="best", help=COMPARE_HELP["analyze"])
    parser.add_argument("--out", type=Path, default=None, help="write the grid to this PNG")
    add_force_option(parser)
    parser.add_argument("--keep", action="store_true", help=COMPARE_HELP["keep"])
    parser.add_argument("--keep-file", type=Path, default=None, help="with --keep: keep this file instead of the "
                        "recommended one")
    parser.add_argument("--name", default=None, help="with --keep: the run's name (default: the files' common "
                        "name without its -000003 ending)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_compare_command(args: argparse.Namespace, out: TextIO) -> None:
    """Check the inputs, load the model, compare, print; then keep and move when asked."""
    from ..blocks.apply import LoraLibrary
    from ..blocks.presets import PresetBook
    from ..blocks.session import LoraSession
    from ..hosts.diffusers import load_diffusers_host
    from ..jobs import Job
    from ..train.compare import CompareSpec, describe_files, run_comparison

    files = describe_files(args.files)
    spec = CompareSpec(prompts="\n".join(args.prompt) or _trigger(files), strengths=parse_strengths(args.strengths),
                       seed=args.seed, width=args.width, height=args.height, analyze=args.analyze)
    spec.check_size(len(files))
    _check_out(args.out, args.force)
    if args.keep_file is not None and args.keep_file.resolve() not in {f.path.resolve() for f in files}:
        raise CompareCommandError(f"--keep-file {args.keep_file} is not one of the files compared")
    if args.keep:
        _keep_name(args, files)  # before any image: a keep that cannot be done is said at once
    host = load_diffusers_host(args.model, device=args.device, dtype=args.dtype)
    library = LoraLibrary(sorted({file.path.parent for file in files}))
    session = LoraSession(host, library, PresetBook.builtin(), model_name=args.model)
    try:
        result = Job("epoch comparison", lambda control: run_comparison(
            host, session, [f.path for f in files], spec, control, data=args.data,
            validation_dir=str(args.validation) if args.validation else None, resolution=args.resolution,
            caption_extension=args.caption_extension, model_name=args.model, save_to=args.out)).run_here()
    finally:
        session.unmerge()
    if args.json:
        print(json.dumps(result.to_json(), indent=2), file=out)
    else:
        print_result(result, out)
    if args.keep:
        _keep(result, args, out)


def _trigger(files: Sequence[CompareFile]) -> str:
    """The run's trigger word, from the first file's card (`activation text`); CompareCommandError without one."""
    from ..train.saving import read_sidecar

    for file in files:
        text = str(read_sidecar(file.path).get("activation text") or "").strip()
        if text:
            return text
    raise CompareCommandError("give a sample prompt with --prompt (the files' cards name no trigger word)")


def _check_out(path: Path | None, force: bool) -> None:
    if path is None:
        return
    if path.suffix.lower() != ".png":
        raise CompareCommandError(f"--out {path} must end in .png")
    if path.exists() and not force:
        raise CompareCommandError(f"--out {path} exists; add --force to replace it")


def print_result(result: CompareResult, out: TextIO) -> None:
    """The table (file, validation loss, similarity per strength, top blocks), the recommendation, loader checks."""
    strengths = result.spec.strengths
    print(f"similarity: {result.embedder}; validation loss: {result.loss_source}", file=out)
    header = f"{'file':<28} {'val loss':>9} " + " ".join(f"{'sim@' + format(s, 'g'):>9}" for s in strengths)
    print(header + "  top blocks", file=out)
    for row in result.rows:
        loss = f"{row.validation_loss:.5f}" if row.validation_loss is not None else "-"
        sims = " ".join(f"{value:>9.4f}" for value in row.similarities)
        blocks = ", ".join(row.top_blocks) if row.top_blocks else ("-" if row.top_blocks is None else "none")
        print(f"{row.file.path.name:<28} {loss:>9} {sims}  {blocks}", file=out)
    print(f"recommended: {result.best.file.path} at strength {result.best_strength:g}", file=out)
    print(f"because: {result.recommendation.reason}", file=out)
    if result.best.analysis:
        print(f"blocks: {result.best.analysis}", file=out)
    for row in result.rows:
        if isinstance(row.loaders, str):
            print(f"loader check of {row.file.path.name}: not run ({row.loaders})", file=out)
        elif row.loaders is not None and not row.loaders.complete:
            print(f"loader check of {row.file.path.name}:\n{row.loaders.to_text()}", file=out)
    if all(row.loaders is not None and not isinstance(row.loaders, str) and row.loaders.complete
           for row in result.rows):
        print("loader check: every key of every file applies in every loader checked", file=out)
    if result.path is not None:
        print(f"wrote {result.path}", file=out)


def _keep(result: CompareResult, args: argparse.Namespace, out: TextIO) -> None:
    from ..train.compare import apply_keep, plan_keep

    files = [row.file for row in result.rows]
    chosen = result.best.file
    if args.keep_file is not None:
        chosen = next(f for f in files if f.path.resolve() == args.keep_file.resolve())
    plan = apply_keep(plan_keep(chosen, files, _keep_name(args, files)))
    print(plan.describe(), file=out)
    for move in plan.moves:
        print(f"  {move.source.name} -> {move.target}", file=out)


def _keep_name(args: argparse.Namespace, files: Sequence[CompareFile]) -> str:
    """The name --keep keeps the file under: --name, else the run's name the files share."""
    from ..train.compare import common_run_name

    name = args.name or common_run_name(files)
    if name is None:
        raise CompareCommandError("the files are not the saves of one run: give the name to keep one under with "
                                  "--name")
    return name
