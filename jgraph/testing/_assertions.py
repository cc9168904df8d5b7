"""Tree comparisons that report the error they saw and the tolerance they used."""

from __future__ import annotations

from typing import Any

import jax
import ml_dtypes
import numpy as np

from jgraph.testing._tolerances import ComparisonKind, Tolerance, tolerance

__all__ = ["assert_trees_close", "max_errors"]

_PRECISION_ORDER = ("float16", "bfloat16", "float32", "float64")


def _lowest_precision(a: np.ndarray, b: np.ndarray) -> np.dtype:
    """The dtype that bounds the achievable accuracy: the less precise float of the two."""
    floats = [x.dtype for x in (a, b) if x.dtype.kind == "f" or x.dtype == ml_dtypes.bfloat16]
    if not floats:
        return a.dtype
    return min(floats, key=lambda d: _PRECISION_ORDER.index(np.dtype(d).name))


def max_errors(actual: Any, expected: Any) -> tuple[float, float]:
    """Max absolute and max relative error between two arrays, computed in float64.

    The relative error divides by ``|expected|`` and ignores positions where it
    is zero (those count in the absolute error only).
    """
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    if a.size == 0:
        return 0.0, 0.0
    diff = np.abs(a - e)
    # NaN in the same place on both sides is a match; anywhere else it is an error.
    both_nan = np.isnan(a) & np.isnan(e)
    diff = np.where(both_nan, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)
    nz = np.abs(e) > 0
    rel = np.where(nz, diff / np.where(nz, np.abs(e), 1.0), 0.0)
    return float(diff.max()), float(rel.max())


def _within(a: np.ndarray, e: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Elementwise: within ``tol`` (bit-equal when exact), NaN matching only NaN."""
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(e64)
    if tol.exact:
        return (a == e) | both_nan
    return (np.abs(a64 - e64) <= tol.atol + tol.rtol * np.abs(e64)) | both_nan


def assert_trees_close(
    actual: Any,
    expected: Any,
    *,
    kind: ComparisonKind = "forward",
    tol: Tolerance | None = None,
    err_msg: str = "",
) -> None:
    """Asserts two pytrees have the same structure, shapes and close values.

    The tolerance comes from `jgraph.testing.TOLERANCES` for ``kind`` and the
    less precise dtype of each leaf pair, unless ``tol`` overrides it (an
    override needs a written reason at the call site). On failure the message
    names the leaf path, the max abs and max rel error, and the tolerance used.

    Args:
        actual: the fast path's output.
        expected: the reference output.
        kind: the comparison kind (see `ComparisonKind`).
        tol: explicit tolerance, replacing the table lookup.
        err_msg: context prepended to the failure message.

    Raises:
        AssertionError: structure, shape or value mismatch.

    Example:
        >>> import numpy as np
        >>> assert_trees_close({"w": np.float32([1.0])}, {"w": np.float32([1.0 + 1e-7])})
    """
    prefix = f"{err_msg}: " if err_msg else ""
    a_leaves, a_def = jax.tree_util.tree_flatten_with_path(actual)
    e_leaves, e_def = jax.tree_util.tree_flatten_with_path(expected)
    if a_def != e_def:  # type: ignore[operator]  # jaxlib ships PyTreeDef without __ne__ in its stub
        raise AssertionError(
            f"{prefix}tree structures differ:\n  actual:   {a_def}\n  expected: {e_def}"
        )
    failures = []
    for (path, a_leaf), (_, e_leaf) in zip(a_leaves, e_leaves, strict=True):
        name = jax.tree_util.keystr(path) or "<root>"
        a, e = np.asarray(a_leaf), np.asarray(e_leaf)
        if a.shape != e.shape:
            failures.append(f"{name}: shape {a.shape} != expected {e.shape}")
            continue
        dtype = _lowest_precision(a, e)
        leaf_tol = tol or tolerance(kind, dtype)
        within = _within(a, e, leaf_tol)
        if not within.all():
            abs_err, rel_err = max_errors(a, e)
            failures.append(
                f"{name}: max abs err {abs_err:.3e}, max rel err {rel_err:.3e} "
                f"({int((~within).sum())}/{a.size} elements out of tolerance; {kind} tolerance "
                f"for {dtype}: {leaf_tol})"
            )
    if failures:
        raise AssertionError(prefix + "trees differ:\n  " + "\n  ".join(failures))
