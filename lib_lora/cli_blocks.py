"""`python -m lib_lora blocks presets`: list the block-weight presets for a model family, as text or JSON.

The work is done by lib_lora.blocks.presets; this module only parses, calls and prints. Core errors reach
cli.main, which prints them as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

BLOCKS_COMMANDS = ("presets",)


def add_blocks_parser(commands: argparse._SubParsersAction) -> None:
    """Register `blocks` and its subcommands on the top-level command list."""
    blocks = commands.add_parser(
        "blocks",
        help="block-weight presets (LBW-compatible) per model family",
        description="Block weights: the presets LoRA Studio knows (LBW's, the seed's, its own) plus yours.",
        epilog="A bad input prints one line `lora-studio: error: …` and exits with 2.",
    )
    tools = blocks.add_subparsers(
        title="blocks commands", dest="blocks_command", metavar="{" + ",".join(BLOCKS_COMMANDS) + "}"
    )
    tools.required = True
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
    presets.add_argument("--file", metavar="USER_PRESETS",
                         help="an LBW-style preset file (NAME:v1,...,vN lines); its presets override built-ins")


def run_blocks_command(args: argparse.Namespace, out: TextIO) -> None:
    """Run the parsed `blocks` subcommand, printing to `out`; core errors propagate."""
    handlers = {"presets": _presets}
    handlers[args.blocks_command](args, out)


def _presets(args: argparse.Namespace, out: TextIO) -> None:
    from .blocks.presets import FORMATS, LORA_LENGTH, PresetBook, family_of, shortest_length, vector_for

    book = PresetBook.builtin()
    if args.file:
        book = book.merge(PresetBook.from_file(args.file))
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
