"""The options several commands share (cli/options.py): the same flags, defaults and help in each command."""

from __future__ import annotations

import argparse

import pytest

from lib_lora.cli.main import build_parser
from lib_lora.cli.options import PRESETS_FILE_HELP, image_settings

pytestmark = pytest.mark.hostcompat

SHARED = ("--negative", "--seed", "--steps", "--cfg", "--width", "--height", "--lora-dir", "--presets", "--force")
DEFAULTS = {"negative": "", "seed": 0, "steps": 20, "cfg": 7.0, "width": 512, "height": 512, "lora_dir": [],
            "presets": None, "force": False}
COMMANDS = (("generate",), ("blocks", "analyze"), ("blocks", "grid"))
REQUIRED = {"generate": ["--prompt", "p", "--out", "x.png"], "analyze": ["--lora", "x"],
            "grid": ["--x", "seed: 1", "--out", "x.png"]}


def _subparser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = commands.choices[name]
    return parser


def _described(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    return {flag: (action.dest, action.default, action.type, action.help, action.metavar)
            for action in parser._actions for flag in action.option_strings if flag in SHARED}


def test_generate_and_the_blocks_renders_take_the_same_image_options():
    described = [_described(_subparser(path)) for path in COMMANDS]
    assert all(set(options) == set(SHARED) for options in described)
    assert described[0] == described[1] == described[2]
    assert described[0]["--presets"][3] == PRESETS_FILE_HELP


@pytest.mark.parametrize("path", COMMANDS)
def test_the_shared_options_default_alike(path):
    args = build_parser().parse_args([*path, *REQUIRED[path[-1]]])
    assert {name: getattr(args, name) for name in DEFAULTS} == DEFAULTS


def test_the_presets_file_reads_the_same_in_every_command_that_takes_one():
    paths = (("lora", "blockweight"), ("blocks", "presets"))
    helps = {flag: action.help for path in paths for action in _subparser(path)._actions
             for flag in action.option_strings if flag in ("--presets", "--file")}
    assert helps == {"--presets": PRESETS_FILE_HELP, "--file": PRESETS_FILE_HELP}


@pytest.mark.parametrize("path", COMMANDS)
def test_the_image_options_reach_the_request_as_typed(path):
    from lib_lora.hosts.base import GenerationRequest

    typed = ["--negative", "blurry", "--seed", "5", "--steps", "3", "--cfg", "3.5", "--width", "64", "--height", "48"]
    settings = image_settings(build_parser().parse_args([*path, *REQUIRED[path[-1]], *typed]))
    assert settings == {"negative_prompt": "blurry", "seed": 5, "steps": 3, "cfg_scale": 3.5, "width": 64,
                        "height": 48}
    assert GenerationRequest(prompt="p", **settings).cfg_scale == 3.5
