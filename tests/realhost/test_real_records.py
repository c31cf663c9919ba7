"""What the host records for block weights: the applied preset in `Lora block weights`, a refused one in its own
field `Lora block weights refused`, never claimed as applied; the same in the API's info JSON and the PNG's text."""

from __future__ import annotations

from typing import Any

import pytest
from checks import assert_same, prompt_with
from results import infotext_fields

FIELD = "Lora block weights"
REFUSED_FIELD = "Lora block weights refused"
UNKNOWN = "NOSUCH"


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
