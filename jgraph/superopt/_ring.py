"""Number systems the μGraph interpreter runs over: floats and a finite field pair.

`FloatRing` computes with numpy floats (float64 is the reference; float32 and
float16 are the numerical screen, with float32 accumulation as a GPU kernel
would do). `ModRing` is the verifier's arithmetic (spec §b.3): a value is a pair
``(x mod p, x mod q)`` with primes ``q | p - 1`` (``p = 2q + 1``, both ``3 mod 4``),

* ``+ - × ÷`` per component (a zero divisor raises `FieldZeroDivisionError`, and the
  verifier resamples),
* ``exp(x) = (ω^(x mod q) mod p, ⊥)`` with ``ω`` of order ``q``, so
  ``exp(a + b) = exp(a)·exp(b)`` holds exactly; ``⊥`` (``q is None``) marks "derived
  from exp", and an exp of such a value raises `NonLaxError`,
* ``sqrt`` is the power map ``x^((m+1)/4)`` (multiplicative, hence rms_norm
  rewrites hold), and silu/gelu/gelu_exact/relu/pow/max are keyed random functions
  (splitmix64), so no identity through them is provable but algebra around them is.

Matmuls split the left operand's residues (< 2^27) into 14-bit limbs and multiply
in float64 BLAS: each limb product is < 2^41, so sums over up to 2^12 terms are
exact (longer contractions are chunked). exp uses two lookup tables of ω powers
(baby step / giant step), one product per element.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "MIRAGE_PRIMES",
    "FieldZeroDivisionError",
    "FloatRing",
    "ModRing",
    "ModT",
    "NonLaxError",
    "safe_prime_pairs",
]

MIRAGE_PRIMES = (167, 83)
_RSQRT2 = 1 / math.sqrt(2)
_ERFC = np.frompyfunc(math.erfc, 1, 1)


class NonLaxError(ArithmeticError):
    """An exp whose argument depends on another exp: not checkable over the field."""


class FieldZeroDivisionError(ArithmeticError):
    """A division by zero over the field (probability ~ degree / p); resample."""


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for sp in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % sp == 0:
            return n == sp
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):  # deterministic below 3.3e24
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def safe_prime_pairs(start: int = 2**25, count: int = 4) -> list[tuple[int, int]]:
    """Pairs ``(p, q)`` with q prime >= start, q = 3 mod 4 and p = 2q + 1 prime.

    Example:
        >>> p, q = safe_prime_pairs(1000, 1)[0]
        >>> (p - 1) % q, p % 4, q % 4
        (0, 3, 3)
    """
    out: list[tuple[int, int]] = []
    q = start | 3
    while len(out) < count:
        if _is_prime(q) and _is_prime(2 * q + 1):
            out.append((2 * q + 1, q))
        q += 4
    return out


@dataclasses.dataclass(frozen=True)
class FloatRing:
    """numpy floats; ``acc_dtype`` is what matmuls, sums and accumulators compute in."""

    dtype: Any = np.float64
    acc_dtype: Any = np.float64
    xp: Any = np  # numpy, or jax.numpy to trace a μGraph into a JAX function

    @property
    def name(self) -> str:
        return np.dtype(self.dtype).name

    def from_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.xp.asarray(x, dtype=self.dtype)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def _c(self, x: Any) -> Any:
        return self.xp.asarray(x, dtype=self.dtype)

    def add(self, a: Any, b: Any) -> Any:
        return self._c(a + b)

    def sub(self, a: Any, b: Any) -> Any:
        return self._c(a - b)

    def mul(self, a: Any, b: Any) -> Any:
        return self._c(a * b)

    def div(self, a: Any, b: Any) -> Any:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._c(a / b)

    def exp(self, x: Any) -> Any:
        with np.errstate(over="ignore", invalid="ignore"):
            return self._c(self.xp.exp(x))

    def sqrt(self, x: Any) -> Any:
        with np.errstate(invalid="ignore"):
            return self._c(self.xp.sqrt(x))

    def scale(self, x: Any, s: Fraction) -> Any:
        return self._c(x * self.dtype(float(s)))

    def nonalg(self, kind: str, *xs: Any) -> Any:
        x, xp = xs[0], self.xp
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if kind == "silu":
                return self._c(x / (1 + xp.exp(-x)))
            if kind == "gelu":  # tanh form, as jax.nn.gelu(approximate=True)
                c = math.sqrt(2 / math.pi)
                return self._c(0.5 * x * (1 + xp.tanh(c * (x + 0.044715 * x**3))))
            if kind == "gelu_exact":  # 0.5·x·(1 + erf(x/√2)), as jax.nn.gelu(approximate=False)
                return self._c(0.5 * x * self._erfc(x * -_RSQRT2))
            if kind == "relu":
                return self._c(xp.maximum(x, 0))
            if kind == "pow":
                return self._c(xp.power(x, xs[1]))
            if kind == "max":
                return self._c(xp.maximum(x, xs[1]))
        raise ValueError(f"no float meaning for {kind!r}")

    def _erfc(self, z: Any) -> Any:
        # erfc(-x/√2), as jax.nn.gelu(approximate=False) writes it: no cancellation in
        # 1 + erf(x/√2) for x << 0. numpy has no erf and scipy is only a test
        # dependency, so numpy arrays go through math.erfc element by element.
        if self.xp is np:
            return np.asarray(_ERFC(z), dtype=np.result_type(z))
        import jax  # here: `import jgraph.superopt` stays light

        return jax.lax.erfc(z)

    def matmul(self, a: Any, b: Any) -> Any:
        return self._c(self.xp.matmul(a.astype(self.acc_dtype), b.astype(self.acc_dtype)))

    def sum(self, x: Any, axis: int) -> Any:
        return self._c(self.xp.sum(x.astype(self.acc_dtype), axis=axis, keepdims=True))

    def max_reduce(self, x: Any, axis: int) -> Any:
        return self.xp.max(x, axis=axis, keepdims=True)

    def struct(self, fn: Callable[[np.ndarray], np.ndarray], x: Any) -> Any:
        return fn(x)

    def concat(self, xs: Sequence[Any], axis: int) -> Any:
        return self.xp.concatenate(list(xs), axis=axis)

    def to_acc(self, x: Any) -> Any:
        return self.xp.asarray(x, dtype=self.acc_dtype)

    def from_acc(self, x: Any) -> Any:
        return self._c(x)


@dataclasses.dataclass(frozen=True)
class ModT:
    """A field tensor: residues mod p and mod q (``q is None``: derived from exp, ⊥)."""

    p: np.ndarray
    q: np.ndarray | None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.p.shape


_M1, _M2, _GOLD = (
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
    np.uint64(0x9E3779B97F4A7C15),
)


def _splitmix(x: np.ndarray, key: int) -> np.ndarray:
    z = np.asarray(x, dtype=np.uint64) + np.uint64(key & 0xFFFFFFFFFFFFFFFF) + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _modpow(base: np.ndarray | int, exp: np.ndarray | int, m: int) -> np.ndarray:
    """Vectorized base**exp mod m (m < 2^27, so products fit in int64)."""
    e = np.asarray(exp, dtype=np.int64)
    b = np.broadcast_to(
        np.asarray(base, dtype=np.int64) % m, np.broadcast_shapes(np.shape(base), e.shape)
    ).copy()
    e = np.broadcast_to(e, b.shape).copy()
    r = np.ones_like(b)
    while np.any(e):
        odd = (e & 1).astype(bool)
        r = np.where(odd, r * b % m, r)
        b = b * b % m
        e >>= 1
    return r


_LIMB_K = 4096


def _limb_matmul(a: np.ndarray, b: np.ndarray, m: int) -> np.ndarray:
    k = a.shape[-1]
    if k > _LIMB_K:  # split the contraction so that every partial sum stays exact
        out = np.zeros((*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1]),
                       dtype=np.int64)  # fmt: skip
        for s in range(0, k, _LIMB_K):
            out = (out + _limb_matmul(a[..., s : s + _LIMB_K], b[..., s : s + _LIMB_K, :], m)) % m
        return out
    # Only ``a`` is split, into 14-bit limbs: a_i·b < 2^14·2^27 = 2^41, so sums of
    # up to 2^12 such products are exact in float64 (2 BLAS matmuls, not 3 or 4).
    af, bf = a.astype(np.float64), b.astype(np.float64)
    a1 = np.floor(af * (1 / 16384))
    a0 = af - a1 * 16384
    hi = _float_mod(np.matmul(a1, bf), m)
    hi *= 16384
    hi += _float_mod(np.matmul(a0, bf), m)  # < 2^42: exact
    return _float_mod(hi, m).astype(np.int64)


def _float_mod(x: np.ndarray, m: int) -> np.ndarray:
    """``x mod m`` for non-negative integers held exactly in float64 (< 2^53).

    ``floor(x / m)`` may be off by one after rounding; one correction each way
    fixes it. Several times faster than ``np.fmod``.
    """
    r = np.multiply(x, 1.0 / m)  # in place from here: these arrays can be large
    np.floor(r, out=r)
    np.multiply(r, m, out=r)
    np.subtract(x, r, out=r)
    np.add(r, m, out=r, where=r < 0)
    np.subtract(r, m, out=r, where=r >= m)
    return r


@dataclasses.dataclass(frozen=True)
class ModRing:
    """Arithmetic over Z_p x Z_q (see the module docstring); ``key`` seeds the random functions."""

    p: int
    q: int
    key: int = 0
    xp = np  # not a field: structural ops on residues are numpy ops

    def __post_init__(self) -> None:
        if (self.p - 1) % self.q or self.p >= 2**27:
            raise ValueError(f"need q | p - 1 and p < 2^27, got p={self.p}, q={self.q}")

    @property
    def name(self) -> str:
        return f"Z_{self.p}xZ_{self.q}"

    @functools.cached_property
    def omega(self) -> int:
        # p = kq + 1: g^k has order q for any g that is not a k-th power residue of 1.
        k = (self.p - 1) // self.q
        for g in range(2, self.p):
            w = pow(g, k, self.p)
            if w != 1:
                return w
        raise ValueError("no element of order q")

    def random(self, shape: tuple[int, ...], rng: np.random.Generator) -> ModT:
        return ModT(rng.integers(0, self.p, shape), rng.integers(0, self.q, shape))

    def counter(self, shape: tuple[int, ...], start: int) -> ModT:
        """Mirage's deterministic inputs: element k gets (start + k) mod pq."""
        v = (start + np.arange(math.prod(shape), dtype=np.int64)).reshape(shape) % (self.p * self.q)
        return ModT(v % self.p, v % self.q)

    def _both(self, a: ModT, b: ModT, f: Callable[[Any, Any, int], Any]) -> ModT:
        q = None if a.q is None or b.q is None else f(a.q, b.q, self.q)
        return ModT(f(a.p, b.p, self.p), q)

    def add(self, a: ModT, b: ModT) -> ModT:
        return self._both(a, b, lambda x, y, m: (x + y) % m)

    def sub(self, a: ModT, b: ModT) -> ModT:
        return self._both(a, b, lambda x, y, m: (x - y) % m)

    def mul(self, a: ModT, b: ModT) -> ModT:
        return self._both(a, b, lambda x, y, m: x * y % m)

    def _inv(self, x: np.ndarray, m: int) -> np.ndarray:
        if np.any(x == 0):
            raise FieldZeroDivisionError("division by zero over the field")
        return _modpow(x, m - 2, m)

    def div(self, a: ModT, b: ModT) -> ModT:
        return self._both(a, b, lambda x, y, m: x * self._inv(y, m) % m)

    @functools.cached_property
    def _exp_tables(self) -> tuple[np.ndarray, np.ndarray, int]:
        # ω^x = ω^(hi·2^s) · ω^lo with x = hi·2^s + lo: two small tables, one product
        s = (self.q.bit_length() + 1) // 2
        lo = _modpow(self.omega, np.arange(1 << s), self.p)
        hi = _modpow(pow(self.omega, 1 << s, self.p), np.arange((self.q >> s) + 1), self.p)
        return hi, lo, s

    def exp(self, x: ModT) -> ModT:
        if x.q is None:
            raise NonLaxError("exp of a value derived from exp (non-LAX μGraph)")
        hi, lo, s = self._exp_tables
        return ModT(hi[x.q >> s] * lo[x.q & ((1 << s) - 1)] % self.p, None)

    def sqrt(self, x: ModT) -> ModT:
        q = None if x.q is None else _modpow(x.q, (self.q + 1) // 4, self.q)
        return ModT(_modpow(x.p, (self.p + 1) // 4, self.p), q)

    def scale(self, x: ModT, s: Fraction) -> ModT:
        def f(v: np.ndarray, m: int) -> np.ndarray:
            if s.denominator % m == 0:
                raise FieldZeroDivisionError("scalar denominator divisible by the modulus")
            return v * (s.numerator % m) % m * pow(s.denominator, m - 2, m) % m

        return ModT(f(x.p, self.p), None if x.q is None else f(x.q, self.q))

    def nonalg(self, kind: str, *xs: ModT) -> ModT:
        key = zlib.crc32(kind.encode()) ^ (self.key * 0x9E3779B1)
        if kind == "max":  # symmetric in its two operands, like max
            a, b = xs

            def f2(x: Any, y: Any, m: int) -> Any:
                lo, hi = np.minimum(x, y), np.maximum(x, y)
                return (_splitmix(lo * m + hi, key + m) % np.uint64(m)).astype(np.int64)

            return self._both(a, b, f2)
        if kind == "pow":
            a, b = xs
            return self._both(
                a,
                b,
                lambda x, y, m: (_splitmix(x * m + y, key + m) % np.uint64(m)).astype(np.int64),
            )
        x = xs[0]

        def f1(v: np.ndarray, m: int) -> np.ndarray:
            return (_splitmix(v, key + m) % np.uint64(m)).astype(np.int64)

        return ModT(f1(x.p, self.p), None if x.q is None else f1(x.q, self.q))

    def matmul(self, a: ModT, b: ModT) -> ModT:
        return self._both(a, b, _limb_matmul)

    def sum(self, x: ModT, axis: int) -> ModT:
        q = None if x.q is None else np.sum(x.q, axis=axis, keepdims=True) % self.q
        return ModT(np.sum(x.p, axis=axis, keepdims=True) % self.p, q)

    def max_reduce(self, x: ModT, axis: int) -> ModT:
        n = x.shape[axis]
        acc = self.struct(functools.partial(_take, index=0, axis=axis), x)
        for i in range(1, n):
            acc = self.nonalg(
                "max", acc, self.struct(functools.partial(_take, index=i, axis=axis), x)
            )
        return acc

    def struct(self, fn: Callable[[np.ndarray], np.ndarray], x: ModT) -> ModT:
        return ModT(fn(x.p), None if x.q is None else fn(x.q))

    def concat(self, xs: Sequence[ModT], axis: int) -> ModT:
        q = None if any(x.q is None for x in xs) else np.concatenate([x.q for x in xs], axis=axis)
        return ModT(np.concatenate([x.p for x in xs], axis=axis), q)

    def to_acc(self, x: ModT) -> ModT:
        return x

    def from_acc(self, x: ModT) -> ModT:
        return x

    def equal(self, a: ModT, b: ModT) -> bool:
        if a.shape != b.shape or not np.array_equal(a.p, b.p):
            return False
        if (a.q is None) != (b.q is None):
            return False
        return a.q is None or (b.q is not None and bool(np.array_equal(a.q, b.q)))


def _take(v: np.ndarray, *, index: int, axis: int) -> np.ndarray:
    """Element ``index`` along ``axis``, keeping the axis (size 1)."""
    return np.take(v, [index], axis=axis)
