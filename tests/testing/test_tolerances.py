"""The tolerance table: lookups, and that it holds the values style.md §c.8 fixes."""

import ml_dtypes
import numpy as np
import pytest

from jgraph.testing import TOLERANCES, Tolerance, tolerance


@pytest.mark.parametrize(
    ("kind", "dtype", "rtol", "atol"),
    [
        ("forward", np.float32, 1e-5, 1e-6),
        ("forward", ml_dtypes.bfloat16, 1e-2, 1e-2),
        ("forward", np.float16, 1e-3, 1e-3),
        ("gradient", np.float32, 1e-4, 1e-5),
        ("gradient", ml_dtypes.bfloat16, 2e-2, 2e-2),
        ("gradient", np.float16, 5e-3, 5e-3),
        ("cross_runtime", np.float32, 1e-5, 1e-5),
        ("exact", np.float32, 0.0, 0.0),
        ("forward", np.int32, 0.0, 0.0),
        ("gradient", np.bool_, 0.0, 0.0),
    ],
)
def test_table_values(kind, dtype, rtol, atol):
    assert tolerance(kind, dtype) == Tolerance(rtol=rtol, atol=atol)


def test_every_exact_entry_is_exact():
    assert all(t.exact for t in TOLERANCES["exact"].values())


def test_table_is_read_only():
    with pytest.raises(TypeError):
        TOLERANCES["forward"]["float32"] = Tolerance(rtol=1.0, atol=1.0)


@pytest.mark.parametrize(
    ("kind", "dtype", "match"),
    [
        ("close_enough", np.float32, "unknown comparison kind"),
        ("forward", np.complex64, "no tolerance for dtype 'complex64'"),
        ("cross_runtime", ml_dtypes.bfloat16, "not defined for dtype 'bfloat16'"),
    ],
)
def test_bad_lookups_raise(kind, dtype, match):
    with pytest.raises(ValueError, match=match):
        tolerance(kind, dtype)
