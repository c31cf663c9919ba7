"""The effective-block analyzer: blocks a LoRA has no module in change 0% (bit-identical images), blocks it has
modules in change pixels and rank first; the changed-pixel share, settings checks, cancel, and the saved PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from blocks_testing import FAST, RecordingRenderer, write_lora
from PIL import Image

from lib_lora.blocks.analyze import (
    ANALYZE_SETTINGS_KEY,
    AnalyzeError,
    AnalyzeResult,
    AnalyzeSpec,
    BlockEffect,
    analyze_blocks,
    changed_share,
    percent_text,
    rank_effects,
)
from lib_lora.blocks.presets import FORMATS
from lib_lora.errors import LoraStudioError
from lib_lora.jobs import Job, JobCancelled
from lib_lora.pnginfo import read_parameters

TOUCHED = ("IN04", "OUT05")

# --- pure ----------------------------------------------------------------------------------------------------


def image_of(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8), "RGB")


@pytest.mark.parametrize(("change", "threshold", "share"), [
    (0, 16, 0.0),
    (16, 16, 0.0),   # exactly the threshold: not changed
    (17, 16, 0.25),  # one pixel of four, in one channel
    (-17, 16, 0.25),
    (1, 0, 0.25),
])
def test_changed_share_counts_pixels_over_the_threshold(change, threshold, share):
    base = np.full((2, 2, 3), 100)
    other = base.copy()
    other[1, 0, 2] += change
    found, mask = changed_share(image_of(base), image_of(other), threshold)
    assert found == share
    assert mask.size == (2, 2) and (np.asarray(mask) == 255).sum() == round(share * 4)


def test_changed_share_refuses_different_sizes():
    with pytest.raises(AnalyzeError, match="different sizes"):
        changed_share(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 16)), 16)


@pytest.mark.parametrize(("shares", "ranked"), [
    ([0.0, 0.0, 0.0], [(0, None), (1, None), (2, None)]),            # nothing changes: nothing is ranked
    ([0.0, 0.3, 0.0, 0.1], [(1, 1), (3, 2), (0, None), (2, None)]),  # zeros unranked, last, in format order
    ([0.2, 0.5, 0.2, 0.0, 0.1], [(1, 1), (0, 2), (2, 2), (4, 4), (3, None)]),  # ties share a rank: 1, 2, 2, 4
    ([0.4, 0.4], [(0, 1), (1, 1)]),
    ([1e-6], [(0, 1)]),  # a tiny change is a change
])
def test_ranking_ties_share_a_rank_and_zeros_are_unranked(shares, ranked):
    assert rank_effects(shares) == ranked


@pytest.mark.parametrize(("share", "text"), [(0.0, "0%"), (1e-6, "<0.01%"), (0.0001, "0.01%"), (0.12345, "12.35%")])
def test_percent_never_reads_zero_for_a_change(share, text):
    assert percent_text(share) == text


def result_of(lora_share: float, shares: list[float]) -> AnalyzeResult:
    blank = Image.new("RGB", (8, 8))
    blocks = FORMATS["sd1"][17][:len(shares)]
    rows = tuple(BlockEffect(rank, blocks[index], shares[index], blank, blank)
                 for index, rank in rank_effects(shares))
    return AnalyzeResult(AnalyzeSpec("part", threshold=16), "sd1", blocks, blank, blank, lora_share, rows, blank, "")


@pytest.mark.parametrize(("lora_share", "shares", "says", "never"), [
    (0.0, [0.0] * 17, ["no measurable effect", "by more than 16", "no block is ranked"], ["most effective", "BASE"]),
    (0.2, [0.0] * 17, ["changes 20.00% of pixels", "switching off any one block changes no pixel"],
     ["most effective"]),
    (0.2, [0.0, 0.05] + [0.0] * 15, ["changes 20.00% of pixels", "most effective block: IN01 (5.00%)",
                                     "16 of 17 blocks change nothing"], ["tied"]),
    (0.2, [0.0, 0.05, 0.05, 0.01], ["most effective blocks (2 tied): IN01, IN02 (5.00%)",
                                    "1 of 4 blocks change nothing"], ["BASE"]),
])
def test_the_summary_names_real_differences_only(lora_share, shares, says, never):
    result = result_of(lora_share, shares)
    summary = result.summary()
    assert all(text in summary for text in says), summary
    assert not any(text in summary for text in never), summary
    ranks = [row[0] for row in result.table()]
    assert ranks.count("–") == shares.count(0.0)


@pytest.mark.parametrize(("arch", "length", "count"), [
    ("sd1", None, 17), ("sd2", 26, 26), ("sdxl", None, 12), ("sdxl", 20, 20),
])
def test_formats(arch, length, count):
    blocks = AnalyzeSpec("x", length=length).blocks(arch)
    assert blocks[0] == "BASE" and blocks == FORMATS["sdxl" if arch == "sdxl" else "sd1"][count]


@pytest.mark.parametrize(("changes", "needle"), [
    ({"threshold": 255}, "threshold must be a whole number from 0 to 254"),
    ({"threshold": -1}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"weight": float("inf")}, "not a finite number"),
    ({"lora": ""}, "choose a LoRA"),
    ({"height": 60}, "multiple of 8"),
    ({"seed": -1}, "negative"),
])
def test_spec_errors(changes, needle):
    with pytest.raises(AnalyzeError, match=needle):
        AnalyzeSpec(**{"lora": "part", **changes})


def test_a_format_of_the_other_family_is_refused():
    with pytest.raises(AnalyzeError, match="format 12: SD1 vectors have 17 or 26 values"):
        AnalyzeSpec("part", length=12).blocks("sd1")


# --- rendering through a real LoraSession on the tiny SD1 model ----------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("diffusers")
    from lib_lora.blocks.apply import LoraLibrary
    from lib_lora.blocks.presets import PresetBook
    from lib_lora.blocks.session import LoraSession
    from lib_lora.hosts.diffusers import load_diffusers_host

    host = load_diffusers_host("tiny")
    folder = tmp_path_factory.mktemp("loras")
    write_lora(host, folder / "part.safetensors", blocks=set(TOUCHED))
    return LoraSession(host, LoraLibrary([folder]), PresetBook.builtin(), model_name="tiny")


@pytest.fixture(scope="module")
def analysis(tiny, tmp_path_factory):
    # threshold 1: at CFG 1 the tiny model's OUT05 changes are small; untouched blocks must still be 0 exactly
    spec = AnalyzeSpec("part", prompt="a cat", seed=3, threshold=1, **FAST)
    target = tmp_path_factory.mktemp("grids") / "blocks.png"
    return Job("analysis", lambda control: analyze_blocks(
        spec, tiny, control, arch="sd1", model_name="tiny", save_to=target)).run_here()


def test_touched_blocks_rank_first_and_untouched_change_nothing(analysis):
    rows = {row.block: row for row in analysis.rows}
    assert len(analysis.rows) == 17 and set(rows) == set(FORMATS["sd1"][17])
    assert {row.block for row in analysis.rows[:2]} == set(TOUCHED)
    assert all(rows[block].share > 0 for block in TOUCHED)
    all_on = np.asarray(analysis.all_on)
    for block, row in rows.items():
        if block not in TOUCHED:
            assert row.share == 0.0 and np.array_equal(np.asarray(row.image), all_on), block
    assert [row.rank for row in analysis.rows][2:] == [None] * 15  # blocks that change nothing are unranked
    assert analysis.rows[0].rank == 1 and analysis.rows[1].rank in (1, 2)
    assert analysis.rows[0].share >= analysis.rows[1].share
    assert analysis.lora_share > 0 and not np.array_equal(np.asarray(analysis.without_lora), all_on)
    assert analysis.table()[0] == ["1", analysis.rows[0].block, analysis.rows[0].percent]
    assert analysis.table()[-1][0] == "–" and "15 of 17 blocks change nothing" in analysis.summary()


def test_saved_png_carries_the_settings_and_ranking(analysis):
    text = read_parameters(analysis.path)
    assert text.splitlines()[0] == "a cat"
    for needle in ("Seed: 3", "Steps: 2", "Model: tiny", "part at 1, 17-value sd1 format, threshold 1",
                   f"{analysis.rows[0].block} {analysis.rows[0].percent}"):
        assert needle in text
    with Image.open(analysis.path) as saved:
        stored = json.loads(saved.info[ANALYZE_SETTINGS_KEY])
        assert saved.size == analysis.image.size and saved.width > 5 * 64
    assert stored["lora"] == "part" and stored["format"] == 17 and stored["model"] == "tiny"
    assert [row["block"] for row in stored["rows"]] == [row.block for row in analysis.rows]


def test_unknown_lora_raises_before_any_image(tiny):
    renderer = RecordingRenderer(tiny)
    spec = AnalyzeSpec("prat", **FAST)
    with pytest.raises(LoraStudioError, match="did you mean part"):
        Job("analysis", lambda control: analyze_blocks(spec, renderer, control, arch="sd1",
                                                       model_name="tiny")).run_here()
    assert renderer.generated == []


def test_cancel_stops_before_the_next_image(tiny):
    spec = AnalyzeSpec("part", **FAST)

    class CancelAfter(RecordingRenderer):
        def generate(self, request):
            generated = super().generate(request)
            if len(self.generated) == 3:
                job.cancel()
            return generated

    renderer = CancelAfter(tiny)
    job: Job = Job("analysis", lambda control: analyze_blocks(spec, renderer, control, arch="sd1",
                                                              model_name="tiny"))
    with pytest.raises(JobCancelled):
        job.run_here()
    snapshot = job.snapshot()
    assert len(renderer.generated) == 3 and snapshot.state == "cancelled" and (snapshot.done, snapshot.total) == (3, 19)
