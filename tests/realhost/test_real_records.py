"""What the host records for block weights: the applied preset in `Lora block weights`, a refused one in its own
field `Lora block weights refused`, never claimed as applied; the same in the API's info JSON and the PNG's text.
How many modules of each LoRA matched a layer is in `Lora modules matched`: a LoRA for another family, not.
Block weights given in the hires prompt only are applied in the hires pass only, and recorded with `pass=hires`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from checks import assert_differs, assert_same, hires, prompt_with
from loras import Target, lora_targets, random_lora
from results import infotext_fields

FIELD = "Lora block weights"
REFUSED_FIELD = "Lora block weights refused"
UNKNOWN = "NOSUCH"
MATCHED_FIELD = "Lora modules matched"
OTHER = "lsotherfamily"


def _records(result: Any) -> list[tuple[str, str]]:
    """(where, infotext) for each place the host records the image's parameters: the info JSON, the PNG text."""
    places = [("info JSON infotexts[0]", result.infotext)]
    if result.png_parameters is not None:
        places.append(("PNG parameters", result.png_parameters))
    return places


@pytest.mark.smoke
def test_an_applied_preset_is_recorded_with_its_name(host, loras) -> None:  # noqa: ANN001
    """On a fresh host this is the first generation (conftest.FILE_ORDER): Neo loads its checkpoint during it."""
    result = host.txt2img(prompt=prompt_with(f"<lora:{loras.plain}:1:NCNF>"))
    value = f"{loras.plain}: te=1, unet=1, blocks=NCNF"  # blocks.apply.block_weights_value
    for where, infotext in _records(result):
        assert f'{FIELD}: "{value}"' in infotext, f"{where}: {infotext}"
        assert infotext_fields(infotext).get(FIELD) == value, where
        assert REFUSED_FIELD not in infotext_fields(infotext), where


@pytest.mark.smoke
def test_an_unknown_preset_is_refused_in_the_records_and_the_lora_applied_plain(host, loras) -> None:  # noqa: ANN001
    refused = host.txt2img(prompt=prompt_with(f"<lora:{loras.plain}:1:{UNKNOWN}>"))
    plain = host.txt2img(prompt=prompt_with(f"<lora:{loras.plain}:1>"))
    assert_same(refused, plain, f"{UNKNOWN} (refused) vs the plain LoRA")
    for where, infotext in _records(refused):
        fields = infotext_fields(infotext)
        assert f"blocks={UNKNOWN}" not in fields.get(FIELD, ""), f"{where} claims {UNKNOWN} was applied: {infotext}"
        assert UNKNOWN in fields.get(REFUSED_FIELD, ""), f"{where} has no {REFUSED_FIELD} naming {UNKNOWN}: {infotext}"
    extra = refused.info.get("extra_generation_params") or {}
    # A per-image value is a callable in the WebUI, which its info JSON writes as null; a value given is checked.
    if isinstance(extra.get(FIELD), str):
        assert f"blocks={UNKNOWN}" not in extra[FIELD], extra
    if extra.get(REFUSED_FIELD) is not None:
        assert UNKNOWN in str(extra[REFUSED_FIELD]), extra


def _write_sdxl_looking_lora(lora_dir: Path, checkpoint: Path) -> int:
    """An SD1 checkpoint's attention targets under names only SDXL models have (a second transformer block, the
    second text encoder's prefix), saved without metadata: only the keys tell its family. Returns its module count."""
    from safetensors.numpy import save_file

    def sdxl_name(name: str) -> str:
        return name.replace("_transformer_blocks_0_", "_transformer_blocks_1_").replace("lora_te_", "lora_te2_")

    renamed = [Target(sdxl_name(t.name), t.shape, t.block) for t in lora_targets(checkpoint)[1]
               if "_transformer_blocks_0_" in t.name or t.name.startswith("lora_te_")]
    save_file(random_lora(renamed, seed=3), str(lora_dir / f"{OTHER}.safetensors"))
    return len(renamed)


@pytest.mark.smoke
def test_a_lora_for_another_family_is_counted_as_not_matched(host, loras) -> None:  # noqa: ANN001
    """The built-in applies what matched, here nothing, without a word of its own; the records say 0 of its modules
    matched and that it looks like SDXL, and the plain LoRA beside it all of its."""
    if loras.arch != "sd1":
        pytest.skip("the other-family LoRA here is written for SD1 hosts")
    total = _write_sdxl_looking_lora(host.lora_dir, host.checkpoint)
    host.refresh_loras()
    result = host.txt2img(prompt=prompt_with(f"<lora:{loras.plain}:1> <lora:{OTHER}:1>"))
    plain = host.txt2img(prompt=prompt_with(f"<lora:{loras.plain}:1>"))
    assert_same(result, plain, f"{OTHER} (matches nothing) beside the plain LoRA vs the plain LoRA alone")
    plain_total = len(lora_targets(host.checkpoint)[1])
    for where, infotext in _records(result):
        value = infotext_fields(infotext).get(MATCHED_FIELD, "")
        assert f"{loras.plain}: {plain_total} of {plain_total}" in value, f"{where}: {infotext}"
        assert re.search(rf"{OTHER}: 0 of {total}, looks like SDXL\b", value), f"{where}: {infotext}"


@pytest.mark.smoke
def test_block_weights_of_the_hires_prompt_alone_are_applied_there_and_recorded(host, loras) -> None:  # noqa: ANN001
    """`NONE` in the hires prompt only: the hires pass runs without the LoRA (the image is that of a hires prompt
    without it), the first pass with it (the image is not that of no LoRA at all); the record says which pass."""
    extra = hires(host)
    plain, none = f"<lora:{loras.plain}:1>", f"<lora:{loras.plain}:1:NONE>"
    hires_only = host.txt2img(prompt=prompt_with(plain), hr_prompt=prompt_with(none), **extra)
    value = f"{loras.plain}: te=1, unet=1, blocks=NONE, pass=hires"
    for where, infotext in _records(hires_only):
        fields = infotext_fields(infotext)
        assert fields.get(FIELD) == value, f"{where}: {infotext}"
        assert fields.get("Hires prompt") == prompt_with(none), f"{where}: {infotext}"
        assert REFUSED_FIELD not in fields, where
    without = host.txt2img(prompt=prompt_with(plain), hr_prompt=prompt_with(""), **extra)
    assert_same(hires_only, without, "NONE in the hires prompt vs no LoRA in the hires prompt")
    assert_differs(hires_only, host.txt2img(prompt=prompt_with(plain), **extra), "NONE in the hires prompt vs the "
                   "plain LoRA in both passes (the hires pass ignored NONE?)")
    assert_differs(hires_only, host.txt2img(**extra), "NONE in the hires prompt vs no LoRA at all (the first pass "
                   "got NONE too?)")
