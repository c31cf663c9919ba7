"""`python -m lib_lora lora {info,resize,merge,blockweight,bake,extract}`: the network tools on files.

The work is done by lib_lora.networks.tools; this module only parses, calls and prints. Core errors reach
cli.main, which prints them as one line and exits with 2. No output ever replaces an input, and an existing
output only with --force.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from .options import ERRORS_EPILOG, add_presets_file_option

LORA_COMMANDS = ("info", "resize", "merge", "blockweight", "bake", "extract")
MERGE_METHOD_CHOICES = ("concat", "svd", "dare", "ties")
_RULE_FLAGS = (("rank", "--rank"), ("sv_ratio", "--sv-ratio"), ("sv_fro", "--sv-fro"),
               ("sv_cumulative", "--sv-cumulative"))


def add_lora_parser(commands: argparse._SubParsersAction) -> None:
    """Register `lora` and its subcommands on the top-level command list."""
    lora = commands.add_parser(
        "lora",
        help="inspect, resize, merge, block-weight, bake or extract LoRA files",
        description="LoRA file tools: describe a file, resize it by SVD, merge several, bake block weights into "
        "one, bake LoRAs into a checkpoint, or extract one from two checkpoints. Outputs are .safetensors with "
        "ss_* metadata.",
        epilog=ERRORS_EPILOG,
    )
    tools = lora.add_subparsers(title="lora commands", dest="lora_command", metavar="{" + ",".join(LORA_COMMANDS) + "}")
    tools.required = True
    for add_tool in (_add_info_parser, _add_resize_parser, _add_merge_parser, _add_blockweight_parser,
                     _add_bake_parser, _add_extract_parser):
        add_tool(tools)


def _add_info_parser(tools: argparse._SubParsersAction) -> None:
    info = tools.add_parser("info", help="describe a LoRA file: format, family, modules per block, ranks, tags",
                            description="Describe a LoRA file without loading a model.")
    info.add_argument("file", type=Path, help="the LoRA file (.safetensors, or a weights-only .pt/.ckpt)")
    info.add_argument("--json", action="store_true",
                      help='print {"format", "arch", "modules", "unmatched", "metadata"} as JSON instead of text')
    info.add_argument("--loaders", action="store_true",
                      help="also check how many keys diffusers, A1111, Forge Neo and ComfyUI would apply, and why "
                      'not the others (adds "loaders" to --json)')
    info.add_argument("--arch", choices=("sd1", "sdxl"),
                      help="with --loaders: check for this family instead of the file's own")


def _add_resize_parser(tools: argparse._SubParsersAction) -> None:
    resize = tools.add_parser("resize", help="resize a LoRA (any format) to a lower rank by SVD",
                              description="Re-factorise every module by SVD at a fixed or per-module rank "
                              "(sd-scripts' resize_lora rules); LoHa/LoKr/full become LoRA; the alpha/rank ratio "
                              "is kept.")
    resize.add_argument("file", type=Path, help="the LoRA file to resize")
    rules = resize.add_mutually_exclusive_group(required=True)
    rules.add_argument("--rank", type=int, help="this rank for every module (at most the module's own)")
    rules.add_argument("--sv-ratio", type=float, metavar="R", help="keep singular values >= the largest / R")
    rules.add_argument("--sv-fro", type=float, metavar="F",
                       help="the smallest rank keeping the fraction F of each module's Frobenius norm")
    rules.add_argument("--sv-cumulative", type=float, metavar="C",
                       help="the smallest rank whose singular values sum to the fraction C of all")
    _output_options(resize, required=False, default_help="FILE's name with the rule added")


def _add_merge_parser(tools: argparse._SubParsersAction) -> None:
    merge = tools.add_parser("merge", help="merge several LoRAs into one: concat, svd, dare or ties",
                             description="Merge LoRAs. concat stacks the factors (exact; plain LoRA/LoCon only). "
                             "svd sums the full deltas and re-factors them. dare drops a random fraction of each "
                             "delta's entries (1 - density) and rescales the rest by 1/density before summing. ties "
                             "keeps each delta's largest entries (density), elects a sign per entry and averages "
                             "the entries that agree. svd, dare and ties take any type (LoHa, LoKr, full) and "
                             "report the relative error of the re-factoring.")
    merge.add_argument("files", type=Path, nargs="+", help="the LoRA files")
    merge.add_argument("--ratios", type=float, nargs="+", metavar="R", help="one weight per file (default: all 1)")
    merge.add_argument("--method", choices=MERGE_METHOD_CHOICES,
                       help="how to merge (default: concat, or svd when --rank is given)")
    merge.add_argument("--rank", type=int, help="the rank of each merged module for svd, dare and ties (default: "
                       "the sum of the sources' ranks, exact for svd)")
    merge.add_argument("--density", type=float, default=1.0,
                       help="dare, ties: the fraction of each delta's entries kept (default: 1)")
    merge.add_argument("--seed", type=int, default=0, help="dare: the seed of the random drops (default: 0)")
    _output_options(merge, required=True)


def _add_blockweight_parser(tools: argparse._SubParsersAction) -> None:
    blockweight = tools.add_parser(
        "blockweight", help="save a LoRA with block weights baked in (the file at 1 = the original with them)",
        description="Write a copy of a LoRA whose modules are scaled by their block's weight (and --strength): "
        "the text encoders by BASE, each UNet block by its own. Applied at 1, it changes the model exactly as "
        "<lora:FILE:STRENGTH:BLOCKS> does.")
    blockweight.add_argument("file", type=Path, help="the LoRA file")
    blockweight.add_argument("--blocks", required=True, metavar="BLOCKS",
                             help="a preset name (e.g. NCNF) or a vector of 17/26 (sd1/sd2) or 12/20 (sdxl) values")
    blockweight.add_argument("--strength", type=float, default=1.0, help="the LoRA's strength (default: 1)")
    blockweight.add_argument("--arch", choices=("sd1", "sd2", "sdxl"),
                             help="the model family of the weights (default: the file's)")
    add_presets_file_option(blockweight)
    _output_options(blockweight, required=True)


def _add_bake_parser(tools: argparse._SubParsersAction) -> None:
    bake = tools.add_parser("bake", help="merge LoRAs into the weights of a single-file checkpoint",
                            description="Write a copy of an original-format SD1/SD2/SDXL .safetensors checkpoint "
                            "with the LoRAs merged into its UNet and text-encoder weights.")
    bake.add_argument("checkpoint", type=Path, help="the original-format checkpoint (.safetensors)")
    bake.add_argument("loras", type=Path, nargs="+", help="the LoRA files to bake in")
    bake.add_argument("--ratios", type=float, nargs="+", metavar="R", help="one weight per LoRA (default: all 1)")
    _output_options(bake, required=True)


def _add_extract_parser(tools: argparse._SubParsersAction) -> None:
    extract = tools.add_parser("extract", help="extract a LoRA from the difference of two checkpoints",
                               description="Make a LoRA approximating TUNED minus BASE by SVD of every UNet and "
                               "text-encoder linear/conv weight that differs.")
    extract.add_argument("base", type=Path, help="the original checkpoint")
    extract.add_argument("tuned", type=Path, help="the fine-tuned checkpoint of the same family")
    extract.add_argument("--rank", type=int, required=True, help="rank of every module")
    extract.add_argument("--conv-rank", type=int, help="rank of k×k convolutions (default: --rank)")
    extract.add_argument("--min-diff", type=float, default=None,
                         help="skip weights whose largest difference is at most this (default: 1e-6)")
    _output_options(extract, required=True)


def _output_options(parser: argparse.ArgumentParser, *, required: bool, default_help: str = "") -> None:
    parser.add_argument("-o", "--output", type=Path, required=required, metavar="OUT",
                        help="the .safetensors to write" + (f" (default: {default_help})" if default_help else ""))
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists (never an input)")
    parser.add_argument("--device", default="cpu", help="torch device for the maths, e.g. cuda (default: cpu)")


def run_lora_command(args: argparse.Namespace, out: TextIO) -> None:
    """Run the parsed `lora` subcommand, printing what it did to `out`; core errors propagate."""
    handlers = {"info": _info, "resize": _resize, "merge": _merge, "blockweight": _blockweight, "bake": _bake,
                "extract": _extract}
    handlers[args.lora_command](args, out)


def _ratios(args: argparse.Namespace, count: int) -> list[float]:
    from ..networks.tools import NetworkToolError

    ratios = args.ratios if args.ratios is not None else [1.0] * count
    if len(ratios) != count:
        raise NetworkToolError(f"{count} files but {len(ratios)} --ratios; give one ratio per file")
    return ratios


def _info(args: argparse.Namespace, out: TextIO) -> None:
    from ..networks.tools import network_info

    info = network_info(args.file, loaders=args.loaders, loader_arch=args.arch)
    if args.json:
        print(json.dumps(info.to_json(), ensure_ascii=False, indent=2), file=out)
    else:
        print(info.to_text(), file=out)


def _resize(args: argparse.Namespace, out: TextIO) -> None:
    from ..networks.tools import resize_lora_file

    rule = next((name, getattr(args, name)) for name, _ in _RULE_FLAGS if getattr(args, name) is not None)
    output = args.output or args.file.with_name(f"{args.file.stem}-{rule[0]}{rule[1]:g}.safetensors")
    report = resize_lora_file(args.file, output, **{rule[0]: rule[1]}, overwrite=args.force, device=args.device)
    ranks = sorted({m.new_rank for m in report.modules})
    rank_text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
    print(f"resize: {len(report.modules)} modules with {report.rule}: rank {rank_text}, "
          f"mean Frobenius retained {report.mean_fro_retained:.1%}; wrote {output}", file=out)


def _merge(args: argparse.Namespace, out: TextIO) -> None:
    from ..networks.tools import MergeOptions, merge_lora_files

    method = args.method or ("concat" if args.rank is None else "svd")
    options = MergeOptions(method, density=args.density, seed=args.seed, rank=args.rank)
    summary = merge_lora_files(args.files, _ratios(args, len(args.files)), args.output, options=options,
                               overwrite=args.force, device=args.device)
    error = (f", relative error mean {summary.mean_error:.2%}, max {summary.max_error:.2%}" if summary.errors
             else " (exact)")
    print(f"merge: {summary.modules} modules from {len(args.files)} files by {options.describe()}, "
          f"rank up to {max(summary.ranks, default=0)}{error}; wrote {args.output}", file=out)


def _blockweight(args: argparse.Namespace, out: TextIO) -> None:
    from ..blocks.presets import PresetBook
    from ..networks.families import arch_of
    from ..networks.loaded import load_network
    from ..networks.tools import NetworkToolError, block_weight_lora_file

    network = load_network(args.file)
    arch = args.arch or arch_of(network.modules, network.metadata)
    if arch is None:
        raise NetworkToolError(f"{args.file.name}: its model family is unknown; give it with --arch")
    book = PresetBook.builtin()
    if args.presets:
        book = book.merge(PresetBook.from_file(args.presets))
    weights = book.resolve(args.blocks, arch)
    report = block_weight_lora_file(args.file, args.output, weights, arch=arch, strength=args.strength,
                                    spec=args.blocks.strip(), overwrite=args.force)
    print(f"blockweight: {args.file.name} × {args.strength:g} with {args.blocks.strip()} ({report.arch}): "
          f"{report.scaled} modules rescaled, {report.unchanged} unchanged, {report.dropped} left out (weight 0); "
          f"wrote {args.output}", file=out)


def _bake(args: argparse.Namespace, out: TextIO) -> None:
    from ..networks.tools import bake_into_checkpoint

    ratios = _ratios(args, len(args.loras))
    report = bake_into_checkpoint(args.checkpoint, list(zip(args.loras, ratios)), args.output,
                                  overwrite=args.force, device=args.device)
    for lora in report.loras:
        missing = f", {len(lora.unmatched)} unmatched: {', '.join(lora.unmatched[:5])}" if lora.unmatched else ""
        print(f"bake: {lora.path.name} × {lora.ratio:g}: {lora.matched} modules{missing}", file=out)
    print(f"bake: {report.weights_changed} weights of the {report.arch} checkpoint changed; wrote {args.output}",
          file=out)


def _extract(args: argparse.Namespace, out: TextIO) -> None:
    from ..networks.tools import extract_lora_file
    from ..networks.tools.extract import DEFAULT_MIN_DIFF

    min_diff = DEFAULT_MIN_DIFF if args.min_diff is None else args.min_diff
    report = extract_lora_file(args.base, args.tuned, args.output, rank=args.rank, conv_rank=args.conv_rank,
                               min_diff=min_diff, overwrite=args.force, device=args.device)
    print(f"extract: {len(report.modules)} modules ({report.arch}), {report.unchanged} unchanged weights skipped, "
          f"mean Frobenius retained {report.mean_fro_retained:.1%}; wrote {args.output}", file=out)
