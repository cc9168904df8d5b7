"""Validators: the message names the field, the value, the rule and the fix."""

import pytest

from jgraph.core import ConfigError, check_choice, check_int, check_number


def test_config_error_is_a_value_error_with_parts():
    err = ConfigError("QuantConfig.bits", 0, "must be >= 1", "use 1-8")
    assert isinstance(err, ValueError)
    assert (err.field, err.value, err.fix) == ("QuantConfig.bits", 0, "use 1-8")
    assert str(err) == "QuantConfig.bits=0: must be >= 1; fix: use 1-8"


@pytest.mark.parametrize(
    ("value", "kwargs", "match"),
    [
        (0, {"minimum": 1}, r"X\.n=0: must be >= 1; fix: use a value >= 1"),
        (9, {"minimum": 1, "maximum": 8}, r"X\.n=9: must be <= 8; fix: use a value <= 8 and >= 1"),
        (True, {}, "must be an int, got bool"),
        (2.0, {}, "must be an int, got float"),
    ],
)
def test_check_int_errors(value, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_int("X.n", value, **kwargs)


def test_check_int_ok_and_custom_fix():
    assert check_int("X.n", 3, minimum=1, maximum=3) == 3
    with pytest.raises(ConfigError, match="fix: pick a power of two"):
        check_int("X.n", 0, minimum=1, fix="pick a power of two")


@pytest.mark.parametrize(
    ("value", "kwargs", "match"),
    [
        (0.0, {"minimum": 0.0, "strict_minimum": True}, "must be > 0.0"),
        (float("nan"), {}, "must be finite"),
        (float("inf"), {}, "must be finite"),
        ("1e-3", {}, "must be a number, got str"),
        (2.5, {"maximum": 1.0}, "must be <= 1.0"),
    ],
)
def test_check_number_errors(value, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_number("X.lr", value, **kwargs)


def test_check_number_ok():
    assert check_number("X.lr", 1, minimum=0.0, strict_minimum=True) == 1.0


def test_check_choice_lists_the_choices():
    assert check_choice("X.kind", "gpipe", ("1f1b", "gpipe")) == "gpipe"
    with pytest.raises(
        ConfigError, match=r"X\.kind='zb': not one of '1f1b', 'gpipe'; fix: choose one of"
    ):
        check_choice("X.kind", "zb", ("1f1b", "gpipe"))
