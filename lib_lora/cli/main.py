"""The command line `python -m lib_lora [serve|demo|lora|blocks|generate|tag|train|validate|compare]`.

Core errors: one line, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TextIO

from ..errors import LoraStudioError
from .blocks import add_blocks_parser, run_blocks_command
from .compare import add_compare_parser, run_compare_command
from .generate import add_generate_parser, run_generate_command
from .lora import add_lora_parser, run_lora_command
from .serve import add_access_options, server_logins
from .tag import add_tag_parser, run_tag_command
from .train import add_train_parser, run_train_command
from .validate import add_validate_parser, run_validate_command

if TYPE_CHECKING:
    from ..hosts.base import Host

PROG = "python -m lib_lora"
COMMANDS = ("serve", "demo", "lora", "blocks", "generate", "tag", "train", "validate", "compare")
DEFAULT_PORT = 7861
DEFAULT_DEMO_DIR = Path("demo_output")
DEFAULT_WORKSPACE = Path("lora_studio_workspace")
EPILOG = "With no command, `serve` runs."


class ServeError(LoraStudioError):
    """The web server could not start (port taken, address not available)."""


def build_parser() -> argparse.ArgumentParser:
    """The parser with its `serve`, `demo`, `lora`, `blocks`, `generate`, `tag`, `train` and `validate`
    subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="LoRA Studio: tag, train and apply LoRAs with per-block strengths, standalone.",
        epilog=EPILOG,
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    model = _model_options()
    server = _server_options()
    commands.add_parser(
        "serve", parents=[model, server], help="serve the LoRA Studio web UI (the default)", epilog=EPILOG
    )
    demo = commands.add_parser(
        "demo", parents=[model, server], help="run the demo job end to end, then serve the UI", epilog=EPILOG
    )
    demo.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_DEMO_DIR,
        help=f"where the demo writes its dataset and sample (default: {DEFAULT_DEMO_DIR})",
    )
    demo.add_argument("--no-ui", action="store_true", help="exit after the demo instead of serving the UI")
    add_lora_parser(commands)
    add_blocks_parser(commands, parents=[model])
    add_generate_parser(commands, parents=[model])
    add_tag_parser(commands)
    add_train_parser(commands)
    add_validate_parser(commands, parents=[model])
    add_compare_parser(commands, parents=[model])
    return parser


def _model_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("model")
    group.add_argument(
        "--model",
        default="tiny",
        help="tiny (default, random SD1 weights), tiny-sdxl, a diffusers folder, or a single-file "
        ".safetensors checkpoint with a local config folder beside it",
    )
    group.add_argument(
        "--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: as loaded)"
    )
    group.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: as loaded)")
    return options


def _server_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("web server")
    group.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default: {DEFAULT_PORT})"
    )
    group.add_argument(
        "--workspace",
        type=Path,
        default=DEFAULT_WORKSPACE,
        help=f"the app's folder: LoRAs in Lora/, datasets in datasets/, tagger models in tagger/, presets and "
        f"grids in lora_studio/ (default: {DEFAULT_WORKSPACE}; the demo uses its --output-dir)",
    )
    group.add_argument("--lora-dir", dest="extra_lora_dirs", action="append", default=[], type=Path,
                       metavar="DIR", help="another folder of LoRAs (repeatable)")
    group.add_argument("--data-root", action="append", default=[], type=Path, metavar="DIR",
                       help="another folder the Dataset tab may open (repeatable)")
    group.add_argument(
        "--listen",
        action="store_true",
        help="serve on all interfaces (0.0.0.0), asking for a login (--auth or --auth-file); by default only "
        "on 127.0.0.1",
    )
    add_access_options(group)
    return options


def with_default_command(argv: Sequence[str]) -> list[str]:
    """`argv` with `serve` put first when no command is given (`--help` alone still shows the overview)."""
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        return ["serve", *argv]
    return argv


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code (2 for a reported LoraStudioError or OSError)."""
    out = out or sys.stdout
    args = build_parser().parse_args(with_default_command(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        RUNNERS[args.command or "serve"](args, out)
    except LoraStudioError as error:
        print(f"lora-studio: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `lora info x | head`: the reader left; say nothing more (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:  # a file the command reads or writes: its path and the cause, as any core error
        from ..file_names import describe_os_error

        print(f"lora-studio: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    return 0


def run_demo_command(args: argparse.Namespace, out: TextIO) -> None:
    """Run the demo on the chosen model, say what it did and where, then serve unless --no-ui."""
    from ..demo import run_demo

    host = _load_host(args, out)
    report = run_demo(args.output_dir, model=args.model, host=host, log=_printer("demo", out))
    print("demo: wrote", file=out)
    for path in report.outputs:
        print(f"  {path}", file=out)
    print(f"demo: finished; everything it wrote is in {report.output_dir.resolve()}", file=out, flush=True)
    if args.no_ui:
        print(f"demo: to open the UI on it: {open_ui_command(report.output_dir.resolve(), args.model)}", file=out)
    else:
        if args.workspace == DEFAULT_WORKSPACE:
            args.workspace = report.output_dir
        serve(host, args, out=out)


def open_ui_command(workspace: Path, model: str) -> str:
    """The command that serves the UI on `workspace` from a checkout (`make serve`, which sets up .venv first)."""
    import shlex

    options = ["--workspace", str(workspace)] + (["--model", model] if model != "tiny" else [])
    return f"make serve ARGS={shlex.quote(shlex.join(options))}"


def run_serve_command(args: argparse.Namespace, out: TextIO) -> None:
    """Load the model and serve the UI on it."""
    serve(_load_host(args, out), args, out=out)


def serve(host: Host, args: argparse.Namespace, *, out: TextIO) -> None:
    """Serve the UI for `host` on `args.workspace` until interrupted; ServeError when the server cannot start.

    Only the app's own page may call it (other origins get 403); with logins, every page and API route asks.
    """
    from ..ui import StudioContext, build_studio
    from ..ui.server import bind_socket, serve_blocks

    logins = server_logins(args)
    port, listen = args.port, args.listen
    address = "0.0.0.0" if listen else "127.0.0.1"
    context = StudioContext.for_folder(lambda: host, args.workspace, lora_dirs=args.extra_lora_dirs,
                                       data_roots=args.data_root)
    blocks = build_studio(context)
    try:
        sock = bind_socket(address, port)
    except OSError as error:
        reason = (error.strerror or str(error)).split(". ")[0]
        raise ServeError(
            f"cannot serve on {address}:{port}: {reason} (choose another port with --port)"
        ) from error
    login = ", login required" if logins else ""

    def ready() -> None:
        print(f"LoRA Studio: serving on http://{address}:{port} from {Path(args.workspace).resolve()}{login} "
              "(Ctrl+C stops)", file=out, flush=True)

    serve_blocks(blocks.queue(), sock, logins=logins, on_ready=ready)


def _load_host(args: argparse.Namespace, out: TextIO) -> Host:
    if not getattr(args, "no_ui", False):
        server_logins(args)  # a missing or unusable login is refused before the model loads
    from ..hosts.diffusers import load_diffusers_host

    print(f"LoRA Studio: loading model {args.model!r} ...", file=out, flush=True)
    host = load_diffusers_host(args.model, device=args.device, dtype=args.dtype)
    info = host.info()
    print(
        f"LoRA Studio: loaded {info.model_name} ({info.arch}, {info.kind}, {info.device}, {info.dtype})",
        file=out,
        flush=True,
    )
    return host


def _printer(prefix: str, out: TextIO) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(f"{prefix}: {message}", file=out, flush=True)

    return log


RUNNERS: dict[str, Callable[[argparse.Namespace, TextIO], None]] = {
    "serve": run_serve_command, "demo": run_demo_command, "lora": run_lora_command, "blocks": run_blocks_command,
    "generate": run_generate_command, "tag": run_tag_command, "train": run_train_command,
    "validate": run_validate_command, "compare": run_compare_command,
}
"""What runs each of COMMANDS (same names, same order)."""
