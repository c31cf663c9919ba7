"""The Train tab's one number reader (ui/train/form.parse_number): what a typed number becomes, or why not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.train.errors import ConfigError
from lib_lora.ui.train.form import parse_number

pytestmark = pytest.mark.hostcompat


@settings(max_examples=300, deadline=None)
@given(value=st.integers(-10**12, 10**12), whole=st.booleans())
def test_a_number_typed_without_a_point_is_an_int(value, whole):
    parsed = parse_number("key", str(value), whole=whole)
    assert parsed == value and type(parsed) is int


@settings(max_examples=300, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()))
def test_a_fraction_is_a_float_and_not_a_whole_number(value):
    parsed = parse_number("key", repr(value), whole=False)
    assert parsed == value and type(parsed) is float
    with pytest.raises(ConfigError, match="expected a whole number"):
        parse_number("key", repr(value), whole=True)


@pytest.mark.parametrize("text, whole, expected", [
    ("16.0", False, 16.0), ("1e3", False, 1000.0), ("1E3", False, 1000.0), ("16.0", True, 16), ("1e3", True, 1000),
])
def test_a_whole_value_typed_with_a_point_or_exponent_stays_a_float_unless_the_field_is_whole(text, whole, expected):
    parsed = parse_number("key", text, whole=whole)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize("text, whole, reason", [
    ("abc", True, "expected a whole number"), ("abc", False, "expected a number"), ("", False, "expected a number"),
    ("inf", False, "must be a finite number"), ("nan", True, "must be a finite number"),
    ("2.5", True, "expected a whole number"),
])
def test_bad_text_is_a_config_error_naming_the_key(text, whole, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        parse_number("network_args.conv_dim", text, whole=whole)
    assert caught.value.key == "network_args.conv_dim"
