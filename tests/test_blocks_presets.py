"""Block-weight vectors and presets: LBW's formats, strict expansion, arch-aware presets, LBW preset files."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib_lora.arch import ARCHS, SD1, SD2, SDXL
from lib_lora.blocks.presets import (
    BUILTIN_PRESETS,
    FORMATS,
    Preset,
    PresetBook,
    expand_vector,
    full_block_ids,
    shortest_length,
    vector_for,
)
from lib_lora.errors import BlockWeightError, LoraStudioError

pytestmark = pytest.mark.hostcompat

DESIGN_TABLE = {
    "CHAR": ("1,0,0,1,1,1,0,0,1,1,1,1,0,0,0,0,0", "1,0,0,1,1,1,1,1,1,0,0,0"),
    "NCNF": ("1,1,1,0,0,0,1,1,0,0,0,0,1,1,1,1,1", "1,1,1,0,0,0,0,0,0,1,1,1"),
    "NFACE": ("1,1,1,1,1,1,1,1,0,0,0,1,1,1,1,1,1", "1,1,1,1,0,1,0,0,0,1,1,1"),
    "NIN": ("1,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1,1", "1,0,0,0,0,1,1,1,1,1,1,1"),
}
LENGTHS = {"sd1": (17, 26), "sd2": (17, 26), "sdxl": (12, 20)}


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def test_format_tables_follow_lbw_order():
    assert FORMATS["sd1"][17] == ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04",
                                  "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11")
    assert FORMATS["sdxl"][12] == ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03",
                                   "OUT04", "OUT05")
    assert FORMATS["sd1"][26] == full_block_ids(SD1) and len(full_block_ids(SD1)) == 26
    assert FORMATS["sdxl"][20] == full_block_ids(SDXL) and len(full_block_ids(SDXL)) == 20
    for family, formats in FORMATS.items():
        for length, order in formats.items():
            assert len(order) == length and len(set(order)) == length, (family, length)


def test_blocks_a_short_format_omits_get_zero_as_in_lbw():
    table = expand_vector([1.0] * 17, SD1)
    assert list(table) == list(full_block_ids(SD1))
    off = {block for block, weight in table.items() if weight == 0.0}
    assert off == {"IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"}
    table = expand_vector([1.0] * 12, "sdxl")
    assert {block for block, weight in table.items() if weight == 0.0} == {
        "IN00", "IN01", "IN02", "IN03", "IN06", "OUT06", "OUT07", "OUT08"}


def test_every_builtin_expands_for_its_arches():
    book = PresetBook.builtin()
    expected = {"NONE", "ALL", "INS", "IND", "INALL", "MIDD", "OUTD", "OUTS", "OUTALL", "ALL0.5", "FLUXALL",
                "FACE", "BODY", "CHAR", "NCNF", "NFACE", "NIN"}
    assert set(book.names()) == expected and len(BUILTIN_PRESETS) == len(expected)
    assert "FLUXALL" not in book.names("sd1") and "FLUXALL" not in book.names("sdxl")
    assert book.names("sdxl") == ["NONE", "ALL", "INALL", "OUTALL", "ALL0.5", "CHAR", "NCNF", "NFACE", "NIN"]
    assert book.names("sd2") == book.names("sd1")
    for arch in ARCHS.values():
        for name in book.names(arch):
            table = book.get(name, arch)
            assert list(table) == list(full_block_ids(arch)), (name, arch.name)
            assert len(table) == (26 if arch.name != "sdxl" else 20)
            for length in LENGTHS[arch.name]:
                assert len(vector_for(table, arch, length)) == length


def test_lbw_values_and_none_base():
    book = PresetBook.builtin()
    assert set(book.get("NONE", SD1).values()) == {0.0}  # lbw.md §1.1: NONE is 0 x17, BASE included
    assert vector_for(book.get("INS", SD1), SD1, 17) == floats("1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0")
    assert vector_for(book.get("ALL0.5", SD2), SD2, 17) == [0.5] * 17
    assert book.get("OUTD", SD1)["OUT06"] == 1.0 and book.get("OUTD", SD1)["OUT07"] == 0.0


def test_seed_face_and_body_are_26_values_sd1_only():
    book = PresetBook.builtin()
    face = "0,1,1,1,1,1,0,0,0,1,0,0,0,0,1,0,1,1,1,0,1,1,1,0,0,1"
    assert vector_for(book.get("FACE", SD1), SD1, 26) == floats(face)
    assert shortest_length(book.get("FACE", SD1), SD1) == 26
    assert set(book.preset("BODY").vectors) == {"sd1"}
    with pytest.raises(BlockWeightError, match="SD1/SD2 vectors are never used on SDXL"):
        book.get("FACE", SDXL)


@pytest.mark.parametrize("name", sorted(DESIGN_TABLE))
def test_design_table_round_trips(name):
    book = PresetBook.builtin()
    sd1, sdxl = DESIGN_TABLE[name]
    assert vector_for(expand_vector(floats(sd1), SD1), SD1, 17) == floats(sd1)
    assert vector_for(book.get(name, SD1), SD1, 17) == floats(sd1)
    assert vector_for(book.get(name, SDXL), SDXL, 12) == floats(sdxl)
    assert shortest_length(book.get(name, SDXL), SDXL) == 12


def test_wrong_lengths_raise_with_expected_message():
    with pytest.raises(BlockWeightError, match=r"expected 12 or 20 values for SDXL \(12: BASE, IN04.*got 17"):
        expand_vector([1.0] * 17, SDXL)
    with pytest.raises(BlockWeightError, match=r"expected 17 or 26 values for SD1 \(17: BASE, IN01, .*got 12; .*SDXL"):
        expand_vector([1.0] * 12, SD1)
    with pytest.raises(BlockWeightError, match="expected 17 or 26 values for SD2.*got 16$"):
        expand_vector([1.0] * 16, SD2)
    with pytest.raises(BlockWeightError, match="got 0"):
        expand_vector([], "sd1")
    with pytest.raises(BlockWeightError, match="finite"):
        expand_vector([float("nan")] * 17, SD1)
    with pytest.raises(BlockWeightError, match="got 26"):
        vector_for(expand_vector([1.0] * 20, SDXL), SDXL, 26)
    assert issubclass(BlockWeightError, LoraStudioError)


def test_sdxl_only_has_sd1_error_and_vice_versa():
    book = PresetBook.parse_preset_text("XLONLY:1,0,0,0,0,1,1,1,1,1,1,1")
    with pytest.raises(BlockWeightError, match="no SD1/SD2 vector.*SDXL vectors are never used on SD1/SD2"):
        book.get("XLONLY", SD1)
    with pytest.raises(BlockWeightError, match="no SDXL vector for SDXL, only SD1/SD2 \\(17 values\\)"):
        PresetBook.builtin().get("INS", SDXL)


LBW_FILE = """\
NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0
IND:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0
INALL:1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0
MIDD:1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0
OUTD:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0
OUTS:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1
OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
ALL0.5:0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5
FLUXALL:""" + ",".join(["1"] * 61) + "\n"


def test_lbw_default_file_imports_as_is():
    book = PresetBook.parse_preset_text(LBW_FILE, source="lbwpresets.txt")
    builtin = PresetBook.builtin()
    assert book.names() == builtin.names()[:11]
    for name in book.names("sd1"):
        assert book.get(name, SD1) == builtin.get(name, SD1)
    assert book.preset("FLUXALL").vectors["flux"] == (1.0,) * 61


def test_user_file_parsing_with_comments_blanks_and_families(tmp_path):
    path = tmp_path / "lbwpresets.txt"
    path.write_text(
        "# my presets\n\n"
        "MINE : 1, 0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,-0.5   # trailing comment\n"
        "MINE:1,0,0,0,0,1,0,0,0,0,0,0\n"
        "DUP:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n"
        "DUP:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n"
        "CHAR:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n",
        encoding="utf-8",
    )
    user = PresetBook.from_file(path)
    assert user.names() == ["MINE", "DUP", "CHAR"]
    assert set(user.preset("MINE").vectors) == {"sd1", "sdxl"}
    assert user.get("MINE", SD1)["OUT11"] == -0.5 and user.get("MINE", SDXL)["M00"] == 1.0
    assert set(user.get("DUP", SD1).values()) == {0.0}  # a later line of the same family wins, as in LBW
    merged = PresetBook.builtin().merge(user)
    assert set(merged.get("CHAR", SDXL).values()) == {0.0}  # the user's SDXL vector overrides
    assert merged.get("CHAR", SD1) == PresetBook.builtin().get("CHAR", SD1)  # the built-in SD1 one stays
    assert str(path) in merged.preset("CHAR").source
    assert merged.names()[-2:] == ["MINE", "DUP"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("A:1,1,1\n", 1, "A has 3 values; expected 17 or 26"),
        ("\n# c\nB:" + ",".join(["1"] * 16) + ",x\n", 3, "value 17: 'x' is not a number"),
        ("OK:" + ",".join(["1"] * 12) + "\nC:" + ",".join(["R"] * 12) + "\n", 2, "random"),
        ("justaname\n", 1, "expected NAME:v1,...,vN"),
        (":" + ",".join(["1"] * 12) + "\n", 1, "no name"),
        ("D:1,,1,1,1,1,1,1,1,1,1,1\n", 1, "empty value"),
        ("E:" + ",".join(["U"] * 17), 1, "'U' is one of LBW's random"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "presets.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BlockWeightError) as caught:
        PresetBook.from_file(path)
    assert f"{path}, line {line}" in str(caught.value)
    assert message in str(caught.value)


def test_missing_file_is_a_block_weight_error(tmp_path):
    with pytest.raises(BlockWeightError, match="cannot read preset file .*nope.txt"):
        PresetBook.from_file(tmp_path / "nope.txt")


def test_unknown_names_suggest_close_ones():
    book = PresetBook.builtin()
    with pytest.raises(BlockWeightError, match="did you mean .*NCNF"):
        book.get("NCFN", SD1)
    with pytest.raises(BlockWeightError, match="did you mean CHAR"):
        book.get("char", SD1)
    with pytest.raises(BlockWeightError, match="known presets: NONE, ALL"):
        book.get("ZZZZZZZZ", SD1)


def test_resolve_names_and_literal_vectors():
    book = PresetBook.builtin()
    assert book.resolve(" CHAR ", SDXL) == book.get("CHAR", SDXL)
    assert book.resolve("1,0,0,0,0,1,1,1,1,1,1,1", "sdxl") == book.get("NIN", SDXL)
    assert book.resolve(",".join(["0.25"] * 26), SD1)["IN00"] == 0.25
    with pytest.raises(BlockWeightError, match=r"block weights '1,0,0': expected 17 or 26 values for SD1"):
        book.resolve("1,0,0", SD1)
    with pytest.raises(BlockWeightError, match="random"):
        book.resolve(",".join(["R"] * 17), SD1)


def test_preset_validates_itself():
    with pytest.raises(BlockWeightError, match="expected 12 or 20 values for SDXL, got 17"):
        Preset("X", {"sdxl": (1.0,) * 17})
    with pytest.raises(BlockWeightError, match="invalid preset name"):
        Preset("A:B", {"sd1": (1.0,) * 17})
    with pytest.raises(BlockWeightError, match="unknown family"):
        Preset("X", {"sd3": (1.0,) * 17})
    with pytest.raises(BlockWeightError, match="no vector"):
        Preset("X", {})
    preset = Preset("X", {"sd1": [1, 0] * 8 + [1]})
    assert preset.vectors["sd1"][:2] == (1.0, 0.0)
    with pytest.raises(TypeError):
        preset.vectors["sd1"] = (0.0,) * 17  # type: ignore[index]


weights = st.floats(min_value=-4, max_value=4, allow_nan=False, allow_infinity=False)
arch_and_length = st.sampled_from([(arch, n) for arch, lengths in LENGTHS.items() for n in lengths])


@given(arch_and_length.flatmap(lambda pair: st.tuples(st.just(pair), st.lists(weights, min_size=pair[1],
                                                                                max_size=pair[1]))))
def test_expand_then_vector_round_trips(case):
    (arch, length), values = case
    table = expand_vector(values, arch)
    assert list(table) == list(full_block_ids(arch))
    assert vector_for(table, arch, length) == values
    assert set(table) - set(FORMATS["sdxl" if arch == "sdxl" else "sd1"][length]) <= {
        block for block, weight in table.items() if weight == 0.0}
