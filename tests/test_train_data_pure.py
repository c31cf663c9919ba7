"""The pure parts of the training data pipeline: config checks, buckets, caption rules, augmentation, reg balance."""

from __future__ import annotations

import random
from dataclasses import fields

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lib_lora.train.augment import color_aug, flatten_alpha, flip_pixels, image_to_pixels
from lib_lora.train.buckets import (
    Bucketing,
    BucketPlan,
    bucket_limits,
    bucket_resolutions,
    crop_offset,
    plan_in_buckets,
    plan_no_upscale,
    resize_and_crop,
)
from lib_lora.train.caption_rules import (
    CaptionRules,
    caption_for_host,
    escape_emphasis,
    process_caption,
    tag_frequency,
    unescape_emphasis,
)
from lib_lora.train.data_config import DATA_HELP, DataConfig
from lib_lora.train.data_scan import balance_reg_repeats
from lib_lora.train.errors import ConfigError, TrainingError

pytestmark = pytest.mark.hostcompat

# --- DataConfig ------------------------------------------------------------------------------------------------

BAD_SETTINGS = [
    ({"resolution": "abc"}, "resolution"),
    ({"resolution": "500"}, "resolution"),
    ({"resolution": [512, 512, 512]}, "resolution"),
    ({"prior_loss_weight": -1}, "prior_loss_weight"),
    ({"prior_loss_weight": float("nan")}, "prior_loss_weight"),
    ({"caption_dropout_rate": 1.5}, "caption_dropout_rate"),
    ({"caption_tag_dropout_rate": "lots"}, "caption_tag_dropout_rate"),
    ({"keep_tokens": -1}, "keep_tokens"),
    ({"keep_tokens": 1.5}, "keep_tokens"),
    ({"train_batch_size": 0}, "train_batch_size"),
    ({"vae_batch_size": True}, "vae_batch_size"),
    ({"enable_bucket": "maybe"}, "enable_bucket"),
    ({"bucket_reso_steps": 12}, "bucket_reso_steps"),
    ({"caption_extension": "txt"}, "caption_extension"),
    ({"caption_separator": ""}, "caption_separator"),
    ({"caption_prefix": 3}, "caption_prefix"),
    ({"min_bucket_reso": 1024, "max_bucket_reso": 512}, "min_bucket_reso"),
    ({"enable_bucket": True, "resolution": 128}, "min_bucket_reso"),
    ({"enable_bucket": True, "resolution": 2048}, "max_bucket_reso"),
    ({"color_aug": True}, "color_aug"),
    ({"random_crop": True}, "random_crop"),
    ({"random_crop": True, "cache_latents": False, "cache_latents_to_disk": True}, "random_crop"),
]


@pytest.mark.parametrize(("settings_", "key"), BAD_SETTINGS, ids=[k for _, k in BAD_SETTINGS])
def test_bad_settings_raise_config_error_naming_the_option(settings_: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        DataConfig(**settings_)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key} = ")


GOOD_SETTINGS = [
    ({"resolution": "512"}, "resolution", (512, 512)),
    ({"resolution": 768}, "resolution", (768, 768)),
    ({"resolution": "512,768"}, "resolution", (512, 768)),
    ({"resolution": [1024, 768]}, "resolution", (1024, 768)),
    ({"resolution": "640x448"}, "resolution", (640, 448)),
    ({"enable_bucket": "true"}, "enable_bucket", True),
    ({"flip_aug": 1}, "flip_aug", True),
    ({"caption_dropout_rate": "0.1"}, "caption_dropout_rate", 0.1),
    ({"keep_tokens": "2"}, "keep_tokens", 2),
    ({"train_batch_size": 4.0}, "train_batch_size", 4),
    ({"train_data_dir": "  "}, "train_data_dir", None),
    ({"cache_latents": False, "cache_latents_to_disk": True}, "cache_latents", True),
    ({"color_aug": True, "cache_latents": False}, "color_aug", True),
    ({"enable_bucket": True, "bucket_no_upscale": True, "resolution": 64}, "resolution", (64, 64)),
]


@pytest.mark.parametrize(("settings_", "key", "expected"), GOOD_SETTINGS)
def test_settings_are_coerced_like_sd_scripts_reads_them(settings_: dict, key: str, expected: object) -> None:
    assert getattr(DataConfig(**settings_), key) == expected


def test_defaults_are_sd_scripts_except_cache_latents_and_txt_captions() -> None:
    config = DataConfig()
    assert (config.resolution, config.caption_extension, config.min_bucket_reso, config.max_bucket_reso,
            config.bucket_reso_steps, config.prior_loss_weight) == ((512, 512), ".txt", 256, 1024, 64, 1.0)
    assert config.cache_latents is True


def test_every_option_has_one_line_of_help() -> None:
    assert set(DATA_HELP) == {f.name for f in fields(DataConfig)}
    assert all(text.strip() and "\n" not in text for text in DATA_HELP.values())


# --- buckets ---------------------------------------------------------------------------------------------------

STEPS = st.sampled_from([8, 16, 32, 64, 128])
SIDES = st.integers(1, 256).map(lambda n: n * 8)


@settings(max_examples=150, deadline=None)
@given(width=SIDES, height=SIDES, step=STEPS, data=st.data())
def test_buckets_keep_the_area_budget_the_step_and_the_limits(width: int, height: int, step: int, data) -> None:
    min_reso = data.draw(st.integers(8, min(width, height)))
    max_reso = data.draw(st.integers(max(width, height), 4096))
    low, high = bucket_limits(min_reso, max_reso, step)
    if low > min(width, height):
        with pytest.raises(ConfigError):
            bucket_resolutions((width, height), min_reso=min_reso, max_reso=max_reso, step=step)
        return
    buckets = bucket_resolutions((width, height), min_reso=min_reso, max_reso=max_reso, step=step)
    assert buckets == sorted(set(buckets))
    square = int((width * height) ** 0.5) // step * step
    assert (square, square) in buckets
    for bucket_width, bucket_height in buckets:
        assert bucket_width * bucket_height <= width * height
        assert bucket_width % step == 0 and bucket_height % step == 0
        assert low <= bucket_width <= high and low <= bucket_height <= high


def test_sd_buckets_at_512_include_the_familiar_sizes() -> None:
    buckets = bucket_resolutions((512, 512), min_reso=256, max_reso=1024, step=64)
    assert {(512, 512), (448, 576), (576, 448), (384, 640), (256, 1024), (1024, 256)} <= set(buckets)
    assert (576, 512) not in buckets  # over the budget


IMAGE_SIDES = st.integers(8, 3000)


@settings(max_examples=200, deadline=None)
@given(width=IMAGE_SIDES, height=IMAGE_SIDES)
def test_images_go_to_the_bucket_nearest_their_aspect_and_are_resized_to_cover_it(width: int, height: int) -> None:
    buckets = bucket_resolutions((512, 512), min_reso=256, max_reso=1024, step=64)
    plan = plan_in_buckets((width, height), buckets)
    aspect = width / height
    best = min(abs(b[0] / b[1] - aspect) for b in buckets)
    assert abs(plan.bucket[0] / plan.bucket[1] - aspect) <= best + 1e-12
    assert plan.aspect_error == pytest.approx(plan.bucket[0] / plan.bucket[1] - aspect)
    resized_width, resized_height = plan.resized
    assert resized_width >= plan.bucket[0] and resized_height >= plan.bucket[1]
    assert resized_width == plan.bucket[0] or resized_height == plan.bucket[1]
    assert abs(resized_width * height - resized_height * width) <= max(width, height)  # aspect kept (rounding)


def test_an_image_of_a_bucket_size_is_used_as_it_is() -> None:
    plan = plan_in_buckets((448, 576), bucket_resolutions((512, 512), min_reso=256, max_reso=1024, step=64))
    assert plan == BucketPlan((448, 576), (448, 576), 0.0)


@settings(max_examples=200, deadline=None)
@given(width=IMAGE_SIDES, height=IMAGE_SIDES, side=st.sampled_from([64, 256, 512, 1024]), step=STEPS)
def test_no_upscale_never_enlarges_and_keeps_the_budget(width: int, height: int, side: int, step: int) -> None:
    try:
        plan = plan_no_upscale((width, height), max_area=side * side, step=step)
    except TrainingError:
        if width * height <= side * side:
            assert min(width, height) < step  # smaller than one step
        else:
            assert min(width, height) * (side * side / (width * height)) ** 0.5 < step + 1e-6  # shrunk below a step
        return
    (bucket_width, bucket_height), (resized_width, resized_height) = plan.bucket, plan.resized
    assert bucket_width <= resized_width <= width and bucket_height <= resized_height <= height
    assert bucket_width % step == 0 and bucket_height % step == 0 and bucket_width > 0 and bucket_height > 0
    assert bucket_width * bucket_height <= side * side
    if width * height <= side * side:
        assert plan.resized == (width, height)  # small enough: cropped only


def test_no_upscale_shrinks_a_large_image_to_the_budget_matching_one_side() -> None:
    plan = plan_no_upscale((2000, 1000), max_area=512 * 512, step=64)
    assert plan.bucket[0] * plan.bucket[1] <= 512 * 512
    assert plan.bucket[0] == plan.resized[0] or plan.bucket[1] == plan.resized[1]
    assert plan.resized[0] < 2000


def test_without_buckets_every_image_is_cropped_to_the_resolution() -> None:
    rules = Bucketing.create((512, 768), enable_bucket=False, min_bucket_reso=256, max_bucket_reso=1024,
                             bucket_reso_steps=64, bucket_no_upscale=True)
    for size in [(100, 100), (4000, 3000), (512, 768), (300, 2000)]:
        plan = rules.plan(size)
        assert plan.bucket == (512, 768)
        assert plan.resized[0] >= 512 and plan.resized[1] >= 768


def test_crops_are_centred_or_uniformly_random_inside_the_resized_image() -> None:
    plan = BucketPlan((64, 64), (96, 64), 0.5)
    assert crop_offset(plan) == (16, 0)
    offsets = {crop_offset(plan, random.Random(seed)) for seed in range(200)}
    assert {x for x, _ in offsets} == set(range(33)) and {y for _, y in offsets} == {0}
    image = Image.new("RGB", (120, 80), (10, 20, 30))
    assert resize_and_crop(image, plan, (5, 0)).size == (64, 64)


# --- captions --------------------------------------------------------------------------------------------------

CAPTION = "mychar, 1girl, solo, red hair, blue eyes, smile, outdoors"


def _use(caption: str, seed: int, epoch: int = 0, **rules) -> str:
    return process_caption(caption, CaptionRules(**rules), random.Random(seed), epoch=epoch)


CAPTION_CASES = [
    ("a, b", {}, "a, b"),
    ("a, b", {"prefix": "pre", "suffix": "suf"}, "pre a, b suf"),
    ("x, y ||| a ||| z", {"keep_tokens_separator": "|||"}, "x, y, a, z"),
    ("a;b; c", {"separator": ";", "shuffle": True, "keep_tokens": 3}, "a, b, c"),
    ("a, , b,", {"tag_dropout_rate": 1e-9}, "a, b"),
    ("a, b", {"dropout_rate": 1.0}, ""),
]


@pytest.mark.parametrize(("caption", "rules", "expected"), CAPTION_CASES)
def test_caption_rules_table(caption: str, rules: dict, expected: str) -> None:
    assert _use(caption, 0, **rules) == expected


def test_shuffle_keeps_the_kept_tokens_in_place_and_every_tag() -> None:
    tags = CAPTION.split(", ")
    results = {_use(CAPTION, seed, shuffle=True, keep_tokens=2) for seed in range(50)}
    assert len(results) > 10
    for result in results:
        shuffled = result.split(", ")
        assert shuffled[:2] == tags[:2] and sorted(shuffled) == sorted(tags)


def test_shuffle_is_the_same_for_the_same_seed() -> None:
    assert _use(CAPTION, 7, shuffle=True) == _use(CAPTION, 7, shuffle=True)
    assert len({_use(CAPTION, seed, shuffle=True) for seed in range(5)}) > 1


def test_keep_tokens_separator_fixes_a_head_and_a_tail() -> None:
    caption = "mychar, 1girl ||| red hair, blue eyes, smile ||| masterpiece"
    for seed in range(30):
        tags = _use(caption, seed, shuffle=True, keep_tokens_separator="|||", keep_tokens=5).split(", ")
        assert tags[:2] == ["mychar", "1girl"] and tags[-1] == "masterpiece"
        assert sorted(tags[2:-1]) == ["blue eyes", "red hair", "smile"]


def test_caption_dropout_rate_is_statistically_right() -> None:
    rng = random.Random(1)
    rules = CaptionRules(dropout_rate=0.25)
    dropped = sum(process_caption(CAPTION, rules, rng, epoch=0) == "" for _ in range(4000))
    assert abs(dropped / 4000 - 0.25) < 0.03


def test_tag_dropout_rate_is_statistically_right_and_spares_kept_tokens() -> None:
    rng = random.Random(2)
    rules = CaptionRules(tag_dropout_rate=0.3, keep_tokens=1)
    flexible = len(CAPTION.split(", ")) - 1
    kept = 0
    for _ in range(2000):
        tags = process_caption(CAPTION, rules, rng, epoch=0).split(", ")
        assert tags[0] == "mychar"
        kept += len(tags) - 1
    assert abs(kept / (2000 * flexible) - 0.7) < 0.03


def test_every_nth_epoch_drops_all_captions() -> None:
    dropped = [epoch for epoch in range(9) if _use(CAPTION, 0, epoch=epoch, dropout_every_n_epochs=3) == ""]
    assert dropped == [2, 5, 8]  # sd-scripts' epochs 3, 6, 9


ESCAPES = [
    ("star (symbol)", "a1111", r"star \(symbol\)"),
    (r"star \(symbol\)", "a1111", r"star \(symbol\)"),
    ("[abc], (d:1.2)", "forge", r"\[abc\], \(d:1.2\)"),
    (r"star \(symbol\)", "diffusers", "star (symbol)"),
    ("star (symbol)", "diffusers", "star (symbol)"),
]


@pytest.mark.parametrize(("text", "kind", "expected"), ESCAPES)
def test_brackets_reach_the_text_encoder_literally_on_every_host(text: str, kind: str, expected: str) -> None:
    assert caption_for_host(text, kind) == expected


@given(st.text(alphabet="ab ()[],\\", max_size=30))
def test_escaping_is_idempotent_and_undone_by_unescaping(text: str) -> None:
    escaped = escape_emphasis(text)
    assert escape_emphasis(escaped) == escaped
    if "\\" not in text:
        assert unescape_emphasis(escaped) == text


def test_tag_frequency_counts_lower_cased_stripped_tags() -> None:
    assert tag_frequency(["A, b", "a ,c,", "B"]) == {"a": 2, "b": 2, "c": 1}


def test_varying_options_name_what_changes_captions() -> None:
    assert CaptionRules().varying_options() == []
    assert CaptionRules(shuffle=True, tag_dropout_rate=0.1).varying_options() == [
        "shuffle_caption", "caption_tag_dropout_rate"]


# --- regularisation balance --------------------------------------------------------------------------------------

BALANCE = [
    ([1, 1, 1], 7, [3, 2, 2]),
    ([5, 5, 5], 7, [5, 5, 0]),
    ([10], 3, [10]),
    ([1, 1], 2, [1, 1]),
    ([2, 3], 0, [0, 0]),
    ([], 5, []),
]


@pytest.mark.parametrize(("repeats", "train", "expected"), BALANCE)
def test_reg_images_are_repeated_or_trimmed_to_the_training_images(repeats, train, expected) -> None:
    assert balance_reg_repeats(repeats, train) == expected


@given(st.lists(st.integers(1, 20), min_size=1, max_size=30), st.integers(0, 500))
def test_reg_balance_reaches_the_training_count_without_overshooting_one_image(repeats, train) -> None:
    uses = balance_reg_repeats(repeats, train)
    assert train <= sum(uses) < train + max(repeats)


# --- augmentation ------------------------------------------------------------------------------------------------


def test_transparent_pixels_become_white_and_pixels_span_minus_one_to_one() -> None:
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 0, 255))
    pixels = image_to_pixels(image)
    assert pixels.shape == (3, 2, 4) and pixels.dtype == torch.float32
    assert pixels[:, 0, 0].tolist() == [-1.0, -1.0, -1.0] and pixels[:, 1, 1].tolist() == [1.0, 1.0, 1.0]
    assert flatten_alpha(Image.new("L", (2, 2), 128)).mode == "RGB"


def test_flip_mirrors_left_to_right_and_twice_is_identity() -> None:
    pixels = torch.arange(12.0).reshape(1, 3, 4)
    assert flip_pixels(pixels)[0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    assert torch.equal(flip_pixels(flip_pixels(pixels)), pixels)


def test_color_aug_is_weak_seeded_and_applied_a_third_of_the_time() -> None:
    ramp = np.linspace(0, 255, 32, dtype=np.float32)
    colours = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), 255 - np.tile(ramp, (32, 1))], -1)
    image = Image.fromarray(colours.astype(np.uint8))
    base = np.asarray(image, dtype=np.float32)
    changed = 0
    for seed in range(150):
        out = color_aug(image, random.Random(seed))
        assert out.size == image.size and out.mode == "RGB"
        assert color_aug(image, random.Random(seed)).tobytes() == out.tobytes()
        difference = np.abs(np.asarray(out, dtype=np.float32) - base).mean()
        assert difference < 40
        changed += bool(difference > 0)
    assert 0.2 < changed / 150 < 0.45
