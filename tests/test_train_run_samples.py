"""Sample prompts in sd-scripts' formats (.txt with --n/--w/--h/--d/--l/--s, .toml, .json) and their rendering."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lib_lora.train.errors import ConfigError
from lib_lora.train.sampling import (
    SamplePrompt,
    load_sample_prompts,
    parse_prompt_line,
    parse_prompt_text,
    render_samples,
    sample_path,
)

pytestmark = pytest.mark.hostcompat


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1girl, solo", SamplePrompt("1girl, solo")),
        ("a cat --n dog, blurry --w 768 --h 512 --d 7 --l 5.5 --s 12",
         SamplePrompt("a cat", "dog, blurry", 768, 512, 7, 5.5, 12)),
        ("a cat --s 3 --ss euler_a", SamplePrompt("a cat", sample_steps=3, sampler="euler_a")),
        ("  tinychar, red hair  --D 3", SamplePrompt("tinychar, red hair", seed=3)),
        ("a--b c --n x", SamplePrompt("a--b c", negative_prompt="x")),
    ],
)
def test_prompt_lines(line, expected):
    assert parse_prompt_line(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a cat --q 3", "unknown option --q"),
        ("a cat --w wide", "--w needs a int"),
        ("a cat --s 0", "sample steps must be 1..1000"),
        (" --n only negative", "the prompt is empty"),
        ("a cat --w 4", "width must be at least 8"),
    ],
)
def test_bad_prompt_lines(line, message):
    with pytest.raises(ConfigError, match=message):
        parse_prompt_line(line)


def test_text_file_skips_comments_and_blank_lines_and_names_the_line():
    text = "# samples\n\n1girl --s 4\n  # indented comment\nlandscape --d 2\n"
    assert parse_prompt_text(text) == [SamplePrompt("1girl", sample_steps=4), SamplePrompt("landscape", seed=2)]
    with pytest.raises(ConfigError, match="line 2"):
        parse_prompt_text("ok\nbad --zz 1\n")


def test_toml_and_json_files(tmp_path):
    toml_file = tmp_path / "prompts.toml"
    toml_file.write_text(
        '[prompt]\nnegative_prompt = "lowres"\nwidth = 64\nsample_steps = 5\n'
        '[[prompt.subset]]\nprompt = "a cat"\n[[prompt.subset]]\nprompt = "a dog"\nwidth = 96\nseed = 3\n',
        encoding="utf-8",
    )
    assert load_sample_prompts(toml_file) == [
        SamplePrompt("a cat", "lowres", width=64, sample_steps=5),
        SamplePrompt("a dog", "lowres", width=96, seed=3, sample_steps=5),
    ]
    json_file = tmp_path / "prompts.json"
    json_file.write_text(json.dumps(["a cat --s 2", {"prompt": "a dog", "scale": 4, "height": 72}]), encoding="utf-8")
    assert load_sample_prompts(json_file) == [SamplePrompt("a cat", sample_steps=2),
                                              SamplePrompt("a dog", height=72, scale=4.0)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.yaml", "x", "expected a .txt, .toml, .json file"),
        ("missing.txt", None, "cannot read it"),
        ("empty.txt", "# nothing\n", "holds no prompt"),
        ("bad.toml", "[prompt\n", "not valid TOML"),
        ("flat.toml", 'prompt = "a cat"\n', r"needs \[prompt\] and \[\[prompt.subset\]\]"),
        ("bad.json", "{", "not valid JSON"),
        ("object.json", '{"prompt": "a"}', "holds a list of prompts"),
        ("key.json", '[{"prompt": "a", "colour": "red"}]', r"unknown key\(s\) \['colour'\]"),
        ("type.json", "[3]", "must be a string or a table"),
    ],
)
def test_bad_prompt_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_sample_prompts(path)


def test_request_defaults_come_from_the_run():
    request = SamplePrompt("a cat", width=100).request(index=2, run_seed=40, default_size=(64, 96))
    assert (request.width, request.height, request.seed, request.steps) == (96, 96, 42, 30)
    fixed = SamplePrompt("a cat", seed=5, width=30).request(index=2, run_seed=40, default_size=(64, 96))
    assert (fixed.seed, fixed.width) == (5, 64)


class RecordingHost:
    """Just enough of a Host for sampling: records what it was asked and whether grad was on."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, bool]] = []

    def generate(self, request):
        self.calls.append((request, torch.is_grad_enabled()))
        torch.rand(3)  # consumes global RNG, which sampling must give back
        return Image.new("RGB", (request.width, request.height), (request.seed % 255, 0, 0))


def test_render_samples_writes_pngs_in_eval_mode_and_restores_rng(tmp_path):
    host = RecordingHost()
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    modes_during: list[bool] = []
    original_generate = host.generate

    def generate(request):
        modes_during.append(module.training or module[1].training)
        return original_generate(request)

    host.generate = generate
    torch.manual_seed(0)
    before = torch.get_rng_state()
    paths = render_samples(host, [SamplePrompt("a cat", sample_steps=2), SamplePrompt("a dog --n x")],
                           modules=[module], output_dir=tmp_path, output_name="mylora", step=12, run_seed=7,
                           default_size=(64, 64))
    assert torch.equal(torch.get_rng_state(), before)
    assert module.training and module[1].training and modes_during == [False, False]
    assert paths == [sample_path(tmp_path, "mylora", 12, 0), sample_path(tmp_path, "mylora", 12, 1)]
    assert paths[0] == tmp_path / "sample" / "mylora_000012_00.png"
    with Image.open(paths[0]) as image:
        assert image.size == (64, 64) and "Training step: 12" in image.info["parameters"]
    assert [grad for _, grad in host.calls] == [False, False]
    assert [request.seed for request, _ in host.calls] == [7, 8]
