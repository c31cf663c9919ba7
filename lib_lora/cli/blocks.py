"""`python -m lib_lora blocks presets|analyze|grid`: list presets, rank a LoRA's blocks, draw an XY grid.

The work is done by lib_lora.blocks (presets, analyze, grid); this module only parses, calls and prints. Names,
axes and files are checked before the model loads. Core errors reach cli.main: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import LoraStudioError
from ..file_names import check_output_files, check_writable_folder
from .options import (
    ERRORS_EPILOG,
    add_force_option,
    add_image_options,
    add_lora_dir_option,
    add_presets_file_option,
    image_settings,
)

if TYPE_CHECKING:
    from ..blocks.apply import LoraLibrary
    from ..blocks.presets import PresetBook
    from ..blocks.session import LoraSession

BLOCKS_COMMANDS = ("presets", "analyze", "grid")


class BlocksCommandError(LoraStudioError):
    """A blocks command cannot run as asked (output exists, no LoRA folder)."""


def add_blocks_parser(commands: argparse._SubParsersAction, *,
                      parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `blocks` and its subcommands; `parents` carry the shared model options (analyze, grid)."""
    blocks = commands.add_parser(
        "blocks",
        help="block weights: presets, the effective-block analyzer, XY grids",
        description="Block weights: the presets LoRA Studio knows (LBW's, the seed's, its own) plus yours; "
        "which blocks of a LoRA change the image; comparison grids.",
        epilog=ERRORS_EPILOG,
    )
    tools = blocks.add_subparsers(
        title="blocks commands", dest="blocks_command", metavar="{" + ",".join(BLOCKS_COMMANDS) + "}"
    )
    tools.required = True
    _add_presets_parser(tools)
    _add_analyze_parser(tools, parents)
    _add_grid_parser(tools, parents)


def _add_presets_parser(tools: argparse._SubParsersAction) -> None:
    presets = tools.add_parser(
        "presets",
        help="list the presets that have a vector for a model family",
        description="List the block-weight presets with a vector for --arch, in the family's LoRA format "
        "(17 values for sd1/sd2, 12 for sdxl) or --format. A preset set in a longer format (e.g. the 26-value "
        "FACE) shown in the short one omits the blocks that format has no position for; its row is marked.",
    )
    presets.add_argument("--arch", required=True, choices=("sd1", "sd2", "sdxl"), help="model family")
    presets.add_argument("--format", type=int, metavar="N",
                         help="vector length: 17 or 26 for sd1/sd2, 12 or 20 for sdxl (default: 17 / 12)")
    presets.add_argument("--json", action="store_true", help="print one JSON object {NAME: [values…]}")
    add_presets_file_option(presets, "--file", "USER_PRESETS")


def _generation_options(parser: argparse.ArgumentParser) -> None:
    add_lora_dir_option(parser)
    parser.add_argument("--prompt", default="", help="the base prompt (the LoRA tag is added to it)")
    add_image_options(parser)
    add_presets_file_option(parser)
    add_force_option(parser)


def _add_analyze_parser(tools: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser]) -> None:
    from ..blocks.analyze import DEFAULT_THRESHOLD, THRESHOLD_HELP

    analyze = tools.add_parser(
        "analyze",
        parents=list(parents),
        help="rank a LoRA's blocks by how much switching each off changes the image",
        description="The effective-block analyzer: renders the prompt without the LoRA, with every block of the "
        "format on, and with each block off in turn (same seed), and ranks the blocks by the share of pixels "
        "that change. Blocks the LoRA has no module in change 0%.",
        epilog=ERRORS_EPILOG,
    )
    analyze.add_argument("--lora", required=True, metavar="NAME", help="the LoRA's name (file stem) in --lora-dir")
    analyze.add_argument("--weight", type=float, default=1.0, help="the LoRA's strength (default: 1)")
    _generation_options(analyze)
    analyze.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD, help=THRESHOLD_HELP)
    analyze.add_argument("--format", type=int, metavar="N", choices=(12, 17, 20, 26),
                         help="block format: 17 or 26 for sd1/sd2, 12 or 20 for sdxl (default: 17 / 12)")
    analyze.add_argument("--out", type=Path, help="write the labelled grid of every image to this PNG")
    analyze.add_argument("--json", action="store_true", help="print the ranking as one JSON object")


def _add_grid_parser(tools: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser]) -> None:
    from ..blocks.grid import AXIS_HELP

    grid = tools.add_parser(
        "grid",
        parents=list(parents),
        help="an XY grid of one LoRA over presets, strengths, LoRAs or seeds",
        description="Render one image per combination of --x and --y values (--y may be left out: one row) "
        "and write them as one labelled grid. Every value is checked before the first image.",
        epilog=ERRORS_EPILOG,
    )
    grid.add_argument("--x", required=True, metavar="AXIS", help=f"the columns: {AXIS_HELP}")
    grid.add_argument("--y", metavar="AXIS", help="the rows, same form as --x")
    grid.add_argument("--lora", metavar="NAME", help="the LoRA (unless an axis is lora)")
    grid.add_argument("--strength", type=float, default=1.0, help="the LoRA's strength unless an axis sets it")
    grid.add_argument("--preset", metavar="BLOCKS",
                      help="block preset or vector unless an axis sets it; a vector may hold LBW's R (random 0…1), "
                      "U (random -0.5…1.5) and X (the x axis' value, else 1)")
    grid.add_argument("--random-seed", type=int, metavar="N",
                      help="the seed R and U are drawn with (default: a new one, recorded in the grid)")
    _generation_options(grid)
    grid.add_argument("--out", required=True, type=Path, help="the PNG to write")


def run_blocks_command(args: argparse.Namespace, out: TextIO) -> None:
    """Run the parsed `blocks` subcommand, printing to `out`; core errors propagate."""
    handlers = {"presets": _presets, "analyze": _analyze, "grid": _grid}
    handlers[args.blocks_command](args, out)


def _presets(args: argparse.Namespace, out: TextIO) -> None:
    from ..blocks.presets import FORMATS, LORA_LENGTH, family_of, shortest_length, vector_for

    book = _preset_book(args.file)
    family = family_of(args.arch)
    length = args.format if args.format is not None else LORA_LENGTH[family]
    rows = []
    for name in book.names(args.arch):
        weights = book.get(name, args.arch)
        rows.append((name, vector_for(weights, args.arch, length), shortest_length(weights, args.arch),
                     book.preset(name).source))
    if args.json:
        print(json.dumps({name: values for name, values, _, _ in rows}), file=out)
        return
    order = FORMATS[family][length]
    print(f"{args.arch} presets, {length}-value format: {','.join(order)}", file=out)
    width = max((len(name) for name, *_ in rows), default=4)
    lossy = False
    for name, values, needed, source in rows:
        mark = "*" if needed > length else " "
        lossy = lossy or needed > length
        print(f"{name:<{width}} {mark} {','.join(f'{v:g}' for v in values)}  ({source})", file=out)
    if lossy:
        print(f"* set in the {max(FORMATS[family])}-value format; blocks this format omits are not shown "
              f"(use --format {max(FORMATS[family])})", file=out)


def _preset_book(path: str | None) -> PresetBook:
    from ..blocks.presets import PresetBook

    book = PresetBook.builtin()
    return book.merge(PresetBook.from_file(path)) if path else book


def _library(folders: Sequence[str], names: Sequence[str]) -> LoraLibrary:
    """The library of `folders`, with each of `names` resolved (fails before the model loads)."""
    from ..blocks.apply import LoraLibrary

    if not folders:
        raise BlocksCommandError("no --lora-dir was given; LoRAs are found by name in those folders")
    library = LoraLibrary(folders)
    for name in names:
        library.resolve(name)
    return library


def _check_out(path: Path | None, force: bool) -> None:
    if path is None:
        return
    if path.suffix.lower() != ".png":
        raise BlocksCommandError(f"--out {path} must end in .png")
    check_output_files([path], option="--out", value=path)
    if path.exists() and not force:
        raise BlocksCommandError(f"{path} exists; pass --force to overwrite it")
    check_writable_folder(path.parent, option="--out", value=path)


def _keeping_old(path: Path | None) -> AbstractContextManager[object]:
    """A --force overwrite keeps the old image in .lora_studio_backup/ (nothing to keep without --out)."""
    from ..backups import replacing

    return replacing(path) if path is not None else contextlib.nullcontext()


def _session(args: argparse.Namespace, library: LoraLibrary, presets: PresetBook) -> LoraSession:
    from ..blocks.session import LoraSession
    from ..hosts.diffusers import load_diffusers_host

    host = load_diffusers_host(args.model, device=args.device, dtype=args.dtype)
    return LoraSession(host, library, presets, model_name=args.model)


def _analyze(args: argparse.Namespace, out: TextIO) -> None:
    from ..blocks.analyze import AnalyzeSpec, analyze_blocks
    from ..jobs import Job

    spec = AnalyzeSpec(lora=args.lora, weight=args.weight, prompt=args.prompt, threshold=args.threshold,
                       length=args.format, **image_settings(args))
    _check_out(args.out, args.force)
    library = _library(args.lora_dir, [args.lora])
    session = _session(args, library, _preset_book(args.presets))
    spec.blocks(session.host.arch)  # a --format the model's family lacks fails before rendering
    with _keeping_old(args.out):
        result = Job("block analysis", lambda control: analyze_blocks(
            spec, session, control, arch=session.host.arch, model_name=args.model, save_to=args.out)).run_here()
    if args.json:
        print(json.dumps(result.to_json()), file=out)
        return
    print(f"effective blocks of {spec.lora} at {spec.weight:g} ({result.arch}, {len(result.blocks)}-value format, "
          f"seed {spec.seed}, threshold {spec.threshold})", file=out)
    print(result.summary(), file=out)
    print(f"{'rank':>4}  {'block':<6} changed", file=out)
    for row in result.rows:
        print(f"{'-' if row.rank is None else row.rank:>4}  {row.block:<6} {row.percent:>7}", file=out)
    if result.path is not None:
        print(f"wrote {result.path}", file=out)
    for warning in session.warnings(spec.prompt_with(spec.tag([1.0] * len(result.blocks)))):
        print(f"warning: {warning}", file=out)  # modules of the LoRA that match no layer of the model


def _grid(args: argparse.Namespace, out: TextIO) -> None:
    from ..blocks.grid import Axis, GridSpec, plan_grid, run_grid
    from ..blocks.recipe import draw_seed
    from ..jobs import Job

    random_seed = draw_seed() if args.random_seed is None else args.random_seed
    spec = GridSpec(prompt=args.prompt, x=Axis.parse(args.x), y=Axis.parse(args.y) if args.y else None,
                    lora=args.lora, strength=args.strength, preset=args.preset, random_seed=random_seed,
                    **image_settings(args))
    book = _preset_book(args.presets)
    plan = None if spec.needs_family else plan_grid(spec)  # a block axis reads the weights in the model's format
    _check_out(args.out, args.force)
    names = [cell.call.name for cell in plan.cells] if plan else [name for name in [spec.lora] if name]
    library = _library(args.lora_dir, sorted(set(names)))
    session = _session(args, library, book)
    plan = plan or plan_grid(spec, presets=book, arch=session.host.arch.name)
    with _keeping_old(args.out):
        result = Job("XY grid", lambda control: run_grid(plan, session, control, model_name=args.model,
                                                          save_to=args.out)).run_here()
    print(f"grid: wrote {result.path} ({result.image.width}x{result.image.height}, {plan.columns}x{plan.rows} "
          f"images)", file=out)
    for warning in result.warnings:  # LoRAs whose modules matched in part (also in each cell's parameters)
        print(f"warning: {warning}", file=out)
