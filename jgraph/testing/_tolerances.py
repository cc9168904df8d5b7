"""The one tolerance table of jgraph, keyed by comparison kind and dtype.

Changing a value needs a written reason in the pull request (Levanter's rule):
tolerances that grow quietly hide bugs. Values come from JAX's default test
table (f32 1e-6, f16 1e-3, bf16 1e-2), Optax's rtol 1e-6 and Levanter's
1e-5 / 1e-4, as recorded in ../shared/spec/style.md §c.8. Both sides are
upcast before comparing, and references run at ``precision=HIGHEST``.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np

__all__ = ["TOLERANCES", "ComparisonKind", "Tolerance", "tolerance"]

ComparisonKind = Literal["exact", "forward", "gradient", "cross_runtime"]
"""What is being compared:

* ``exact``: same algorithm, same op order (IR round trip, serialization).
* ``forward``: same math, different reduction order (rewrite vs reference,
  Pallas vs XLA, pipeline vs sequential forward).
* ``gradient``: gradients through reordered or accumulated reductions.
* ``cross_runtime``: another runtime on an f32 model (TFLite vs JAX).
"""

DTypeKey = Literal["float64", "float32", "bfloat16", "float16", "int"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tolerance:
    """An ``|a - b| <= atol + rtol * |b|`` bound; (0, 0) means bit-for-bit equal."""

    rtol: float
    atol: float

    @property
    def exact(self) -> bool:
        return self.rtol == 0.0 and self.atol == 0.0

    def __str__(self) -> str:
        return "exact" if self.exact else f"rtol={self.rtol:g}, atol={self.atol:g}"


_EXACT = Tolerance(rtol=0.0, atol=0.0)


def _row(**by_dtype: tuple[float, float] | None) -> dict[str, Tolerance | None]:
    return {
        k: (None if v is None else Tolerance(rtol=v[0], atol=v[1])) for k, v in by_dtype.items()
    }


# None marks a combination that has no meaning (a bf16 TFLite model): asking for
# it is a test bug and raises.
_TABLE: dict[str, dict[str, Tolerance | None]] = {
    "exact": {
        "float64": _EXACT,
        "float32": _EXACT,
        "bfloat16": _EXACT,
        "float16": _EXACT,
        "int": _EXACT,
    },
    "forward": {
        # float64 is not in style.md's table; 1e-12 leaves three orders of
        # magnitude over f64 eps for reordered sums of ~1e3 terms.
        **_row(
            float64=(1e-12, 1e-12),
            float32=(1e-5, 1e-6),
            bfloat16=(1e-2, 1e-2),
            float16=(1e-3, 1e-3),
        ),
        "int": _EXACT,
    },
    "gradient": {
        **_row(
            float64=(1e-10, 1e-10),
            float32=(1e-4, 1e-5),
            bfloat16=(2e-2, 2e-2),
            float16=(5e-3, 5e-3),
        ),
        "int": _EXACT,
    },
    "cross_runtime": {
        **_row(float64=None, float32=(1e-5, 1e-5), bfloat16=None, float16=None),
        "int": _EXACT,
    },
}

TOLERANCES: MappingProxyType[str, MappingProxyType[str, Tolerance | None]] = MappingProxyType(
    {kind: MappingProxyType(row) for kind, row in _TABLE.items()}
)
"""Read-only view: ``TOLERANCES[kind][dtype_key]``."""


def _dtype_key(dtype: np.dtype | type | str) -> str:
    dt = np.dtype(dtype)
    if dt.kind in "iub":
        return "int"
    name = dt.name
    if name in ("float64", "float32", "bfloat16", "float16"):
        return name
    raise ValueError(
        f"no tolerance for dtype {name!r}; the table covers {', '.join(get_args(DTypeKey))}"
    )


def tolerance(kind: ComparisonKind, dtype: np.dtype | type | str) -> Tolerance:
    """Looks up the tolerance for a comparison kind and dtype.

    Args:
        kind: one of ``exact``, ``forward``, ``gradient``, ``cross_runtime``.
        dtype: the dtype of the values compared (the lower-precision side).

    Returns:
        The `Tolerance` from `TOLERANCES`.

    Raises:
        ValueError: unknown kind or dtype, or a combination the table marks as
            meaningless.

    Example:
        >>> import numpy as np
        >>> str(tolerance("forward", np.float32))
        'rtol=1e-05, atol=1e-06'
    """
    if kind not in _TABLE:
        raise ValueError(f"unknown comparison kind {kind!r}; use one of {', '.join(_TABLE)}")
    key = _dtype_key(dtype)
    tol = _TABLE[kind][key]
    if tol is None:
        raise ValueError(f"comparison kind {kind!r} is not defined for dtype {key!r}")
    return tol
