"""assert_trees_close: passes within tolerance, fails loudly and informatively outside."""

import re

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jgraph.testing import Tolerance, assert_trees_close, max_errors


def test_close_values_pass():
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    assert_trees_close({"a": x, "b": [x * 2]}, {"a": x * (1 + 5e-6), "b": [x * 2]})


def test_failure_message_reports_errors_and_tolerance():
    expected = np.array([1.0, 2.0, 4.0], np.float32)
    actual = np.array([1.0, 2.0, 4.004], np.float32)
    with pytest.raises(AssertionError) as info:
        assert_trees_close({"w": actual}, {"w": expected}, err_msg="layer 3")
    msg = str(info.value)
    assert msg.startswith("layer 3: trees differ")
    assert "['w']" in msg
    abs_err = float(re.search(r"max abs err ([0-9.e+-]+)", msg).group(1))
    rel_err = float(re.search(r"max rel err ([0-9.e+-]+)", msg).group(1))
    assert abs_err == pytest.approx(0.004, rel=1e-3)
    assert rel_err == pytest.approx(0.001, rel=1e-3)
    assert "1/3 elements out of tolerance" in msg
    assert "forward tolerance for float32: rtol=1e-05, atol=1e-06" in msg


def test_gradient_kind_is_looser_than_forward():
    expected = np.ones(4, np.float32)
    actual = expected * (1 + 5e-5)
    assert_trees_close(actual, expected, kind="gradient")
    with pytest.raises(AssertionError):
        assert_trees_close(actual, expected, kind="forward")


def test_lower_precision_side_picks_the_tolerance():
    expected = np.ones(4, np.float32)
    actual_bf16 = (expected * (1 + 5e-3)).astype(ml_dtypes.bfloat16)
    assert_trees_close(actual_bf16, expected)  # bf16 row: rtol 1e-2
    with pytest.raises(AssertionError, match="forward tolerance for float32"):
        assert_trees_close(actual_bf16.astype(np.float32), expected)


def test_jax_arrays_and_exact_kind():
    x = jnp.arange(6.0).reshape(2, 3)
    assert_trees_close(x, np.arange(6.0, dtype=np.float32).reshape(2, 3), kind="exact")
    with pytest.raises(AssertionError, match="exact tolerance"):
        assert_trees_close(x + 1e-6, x, kind="exact")


def test_integers_are_exact_even_for_forward():
    with pytest.raises(AssertionError, match=r"max abs err 1\.000e\+00"):
        assert_trees_close(np.array([1, 2]), np.array([1, 3]))


def test_nan_matches_only_nan():
    a = np.array([np.nan, 1.0], np.float32)
    assert_trees_close(a, a.copy())
    with pytest.raises(AssertionError, match="max abs err inf"):
        assert_trees_close(a, np.array([0.0, 1.0], np.float32))


def test_structure_and_shape_mismatches():
    with pytest.raises(AssertionError, match="tree structures differ"):
        assert_trees_close({"a": 1.0}, {"b": 1.0})
    with pytest.raises(AssertionError, match=r"shape \(2,\) != expected \(3,\)"):
        assert_trees_close(np.zeros(2), np.zeros(3))


def test_explicit_tolerance_override():
    assert_trees_close(np.float32(1.1), np.float32(1.0), tol=Tolerance(rtol=0.2, atol=0.0))


def test_max_errors():
    abs_err, rel_err = max_errors(np.array([1.0, 0.5, 0.0]), np.array([2.0, 0.5, 0.0]))
    assert (abs_err, rel_err) == (1.0, 0.5)
    assert max_errors(np.array([0.1]), np.array([0.0])) == (0.1, 0.0)  # zero reference: abs only
