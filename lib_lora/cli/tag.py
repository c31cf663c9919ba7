"""`python -m lib_lora tag DIR --model NAME_OR_DIR`: caption a folder with a WD14 tagger, headless.

The work is done by lib_lora.dataset.tagging.tagger and tagging.run; this module parses (help texts from OPTION_HELP and
RUN_HELP, so the CLI and the Dataset tab say the same words), shows a progress bar with the ETA on stderr and prints
what happened. Under a launcher every process tags its share with its own bar; the main process prints the summary
of all. An unusable folder or model is a typed error: cli.main prints it as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..dataset.tagging.models import TaggerFiles
    from ..dataset.tagging.tagger import TaggerOptions


def add_tag_parser(commands: argparse._SubParsersAction, *, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `tag` on the top-level command list."""
    from ..dataset.tagging.models import REGISTRY
    from ..dataset.tagging.tagger import EXISTING_POLICIES, OPTION_HELP, RUN_HELP

    parser = commands.add_parser(
        "tag",
        parents=list(parents),
        help="caption a folder of images with a WD14 tagger (ONNX)",
        description="Tag every image in DIR with a WD14 tagger and write its caption beside it, one file as "
        "soon as each image is tagged. Existing captions are skipped unless --existing says otherwise; "
        "overwritten captions are backed up under DIR/.lora_studio_backup. Images or captions that link outside "
        "DIR are left out and listed; captions that are links or read-only are listed as not written. "
        f"Resuming: {RUN_HELP['resume']}. Several processes: {RUN_HELP['processes']}.",
        epilog="Known models: " + ", ".join(REGISTRY) + ". A bad folder or model prints one line "
        "`lora-studio: error: …` and exits with 2.",
    )
    parser.add_argument("folder", type=Path, metavar="DIR", help="the dataset folder")
    parser.add_argument("--model", required=True, metavar="NAME_OR_DIR",
                        help="a known model name (downloaded at its pinned revision when missing) or a folder "
                        "holding model.onnx and selected_tags.csv")
    group = parser.add_argument_group("tags")
    group.add_argument("--general-threshold", type=float, default=0.35, metavar="F",
                       help=OPTION_HELP["general_threshold"])
    group.add_argument("--character-threshold", type=float, default=0.85, metavar="F",
                       help=OPTION_HELP["character_threshold"])
    group.add_argument("--general-mcut", action="store_true", help=OPTION_HELP["general_mcut"])
    group.add_argument("--character-mcut", action="store_true", help=OPTION_HELP["character_mcut"])
    group.add_argument("--rating", dest="include_rating", action="store_true", help=OPTION_HELP["include_rating"])
    group.add_argument("--max-tags", type=int, default=0, metavar="N", help=OPTION_HELP["max_tags"])
    group.add_argument("--exclude", default="", metavar="TAGS", help=OPTION_HELP["exclude"])
    group.add_argument("--keep-underscores", dest="underscores_to_spaces", action="store_false",
                       help="do not " + OPTION_HELP["underscores_to_spaces"])
    group.add_argument("--escape-brackets", action="store_true", help=OPTION_HELP["escape_brackets"])
    group.add_argument("--trigger", default="", metavar="WORDS", help=OPTION_HELP["trigger"])
    files = parser.add_argument_group("files")
    files.add_argument("--existing", choices=EXISTING_POLICIES, default="skip", help=OPTION_HELP["existing"])
    files.add_argument("--caption-ext", default=".txt", metavar="EXT", help=OPTION_HELP["caption_ext"])
    files.add_argument("--recursive", action="store_true", help=OPTION_HELP["recursive"])
    run = parser.add_argument_group("model and run")
    run.add_argument("--batch-size", default="auto", type=_batch_size, metavar="auto|N", help=OPTION_HELP["batch_size"])
    run.add_argument("--provider", action="append", default=None, metavar="NAME",
                     help="onnxruntime execution provider to ask for, e.g. cuda, cpu, CUDAExecutionProvider "
                     "(repeatable, in order of preference; default: a GPU one when installed, then CPU)")
    run.add_argument("--models-dir", type=Path, default=None, metavar="DIR",
                     help="a folder with one subfolder per model name, looked in before the hub cache")
    run.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                     help="the huggingface_hub cache (default: HF_HUB_CACHE)")
    run.add_argument("--no-download", action="store_true", help="never download; fail if the model is not here")


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}") from None


def run_tag_command(args: argparse.Namespace, out: TextIO) -> None:
    """Scan the folder, find and load the model, tag this process's share with a progress bar, print problems and
    a summary (under a launcher: the main process, for all)."""
    from tqdm import tqdm

    from ..dataset.errors import DatasetError
    from ..dataset.folder import leave_out_links, scan_dataset
    from ..dataset.tagging.run import WORKED, prepare_tagging
    from ..dataset.tagging.shards import Shard
    from ..dataset.tagging.tagger import Tagger

    options = _tagger_options(args)
    shard = Shard.from_environment()
    main = shard.is_main
    label = f" [{shard.describe()}]" if shard.active else ""
    dataset = leave_out_links(scan_dataset(args.folder, caption_ext=options.caption_ext, recursive=options.recursive))
    if not dataset.items:
        hint = "" if options.recursive else " (images in subfolders are tagged with --recursive)"
        raise DatasetError(f"no images to tag{hint}", path=args.folder)
    files = _model_files(args, show_progress=main)
    tagger = Tagger.load(files, providers=args.provider, device_id=shard.local_rank if shard.active else None)
    if main:
        print(f"tag: model {files.describe()}, running on {tagger.provider_in_use}", file=out, flush=True)
        for warning in tagger.warnings:
            print(f"tag: warning: {warning}", file=out, flush=True)
        for problem in dataset.problems:
            print(f"tag: left out: {problem}", file=out, flush=True)
    run = prepare_tagging(dataset, tagger, options, shard=shard)
    if run.resumed:
        print(f"tag{label}: resuming the stopped run: {run.resumed} of {run.share} images done earlier", file=out,
              flush=True)
    with tqdm(total=len(run.todo), unit="img", desc=f"tagging{label}", file=sys.stderr, position=shard.local_rank,
              dynamic_ncols=True) as bar:
        report = run.run(on_image=lambda result: bar.update(result.status in WORKED))
    if not main:
        return
    for status, _image, error in report.failures():
        print(f"tag: {'unreadable' if status == 'unreadable' else 'not written'}: {error}", file=out)
    for rank in report.missing:
        print(f"tag: process {rank + 1} of {shard.world_size} did not finish: run the same command again to "
              "tag the rest of its share", file=out)
    print(f"tag: {report.summary()}", file=out, flush=True)


def _tagger_options(args: argparse.Namespace) -> TaggerOptions:
    """The tagging options of the parsed command line (checked by TaggerOptions)."""
    from ..dataset.tagging.tagger import TaggerOptions

    return TaggerOptions(
        general_threshold=args.general_threshold, character_threshold=args.character_threshold,
        general_mcut=args.general_mcut, character_mcut=args.character_mcut, include_rating=args.include_rating,
        max_tags=args.max_tags, exclude=args.exclude, underscores_to_spaces=args.underscores_to_spaces,
        escape_brackets=args.escape_brackets, trigger=args.trigger, existing=args.existing,
        caption_ext=args.caption_ext, recursive=args.recursive, batch_size=args.batch_size,
    )


def _model_files(args: argparse.Namespace, *, show_progress: bool) -> TaggerFiles:
    """The --model's files, downloaded when missing (unless --no-download) with a progress bar per file."""
    from tqdm import tqdm

    from ..dataset.tagging.models import resolve_model

    bars: dict[str, tqdm] = {}

    def download_progress(message: str, done: int, total: int | None) -> None:
        bar = bars.get(message)
        if bar is None:
            bar = bars[message] = tqdm(total=total, desc=message, unit="B", unit_scale=True, file=sys.stderr,
                                       disable=not show_progress)
        bar.update(done - bar.n)

    files = resolve_model(args.model, models_dir=args.models_dir, cache_dir=args.cache_dir,
                          download=not args.no_download, progress=download_progress)
    for bar in bars.values():
        bar.close()
    return files
