"""The finite-field number system: exact homomorphisms, limb matmuls, error cases."""

import numpy as np
import pytest

from jgraph.superopt._ring import MIRAGE_PRIMES, FieldZeroDivisionError, ModT, NonLaxError
from jgraph.superopt.verify import FloatRing, ModRing, safe_prime_pairs
from jgraph.testing import assert_trees_close


@pytest.fixture(scope="module")
def ring():
    p, q = safe_prime_pairs(2**25, 1)[0]
    return ModRing(p, q, key=7)


def test_prime_pairs_have_the_required_structure():
    for p, q in safe_prime_pairs(2**25, 3):
        assert 2**25 <= q < 2**26
        assert p == 2 * q + 1
        assert (p - 1) % q == 0
        assert p % 4 == 3
        assert q % 4 == 3
        assert all(p % d and q % d for d in range(3, 2000, 2))


def test_omega_has_order_q(ring):
    w = ring.omega
    assert w != 1
    assert pow(w, ring.q, ring.p) == 1
    compat = ModRing(*MIRAGE_PRIMES)
    assert compat.omega != 1
    assert pow(compat.omega, 83, 167) == 1


def test_exp_is_a_homomorphism_and_marks_bottom(ring):
    rng = np.random.default_rng(0)
    a, b = ring.random((5, 7), rng), ring.random((5, 7), rng)
    lhs = ring.exp(ring.add(a, b))
    rhs = ring.mul(ring.exp(a), ring.exp(b))
    assert lhs.q is None
    assert ring.equal(lhs, rhs)
    assert not ring.equal(ring.exp(a), ring.exp(b))
    with pytest.raises(NonLaxError):
        ring.exp(lhs)


def test_sqrt_power_map_is_multiplicative_and_a_root_on_squares(ring):
    rng = np.random.default_rng(1)
    a, b = ring.random((64,), rng), ring.random((64,), rng)
    assert ring.equal(ring.sqrt(ring.mul(a, b)), ring.mul(ring.sqrt(a), ring.sqrt(b)))
    s = ring.sqrt(ring.mul(a, a))
    ok = ring.mul(s, s)
    assert ring.equal(ok, ring.mul(a, a))


def test_limb_matmul_is_exact(ring):
    rng = np.random.default_rng(2)
    a, b = ring.random((3, 300), rng), ring.random((300, 4), rng)
    got = ring.matmul(a, b)
    want = [
        [sum(int(a.p[i, k]) * int(b.p[k, j]) for k in range(300)) % ring.p for j in range(4)]
        for i in range(3)
    ]
    assert got.p.tolist() == want


def test_division_and_zero_divisors(ring):
    rng = np.random.default_rng(3)
    a = ring.random((10,), rng)
    one = ring.div(a, a)
    assert np.all(one.p == 1)
    assert np.all(one.q == 1)
    zero = ModT(np.zeros(3, np.int64), np.zeros(3, np.int64))
    with pytest.raises(FieldZeroDivisionError):
        ring.div(ring.random((3,), rng), zero)


def test_keyed_functions_are_deterministic_and_key_dependent(ring):
    rng = np.random.default_rng(4)
    x = ring.random((100,), rng)
    assert ring.equal(ring.nonalg("silu", x), ring.nonalg("silu", x))
    assert not ring.equal(ring.nonalg("silu", x), ring.nonalg("gelu", x))
    other = ModRing(ring.p, ring.q, key=8)
    assert not np.array_equal(ring.nonalg("silu", x).p, other.nonalg("silu", x).p)
    y = ring.random((100,), rng)
    assert ring.equal(ring.nonalg("max", x, y), ring.nonalg("max", y, x))


def test_exact_gelu_is_a_keyed_function_over_the_field(ring):
    """x·Φ(x) - (-x)·Φ(-x) = x holds for the real gelu_exact, not for a keyed function."""
    x = np.linspace(-6.0, 6.0, 101)
    real = FloatRing()
    lhs = real.sub(real.nonalg("gelu_exact", x), real.nonalg("gelu_exact", -x))
    assert_trees_close(lhs, x, kind="forward")
    v = ring.random((100,), np.random.default_rng(5))
    neg = ring.sub(ModT(np.zeros_like(v.p), np.zeros_like(v.q)), v)
    field = ring.sub(ring.nonalg("gelu_exact", v), ring.nonalg("gelu_exact", neg))
    assert not ring.equal(field, v)
    assert not ring.equal(ring.nonalg("gelu_exact", v), ring.nonalg("gelu", v))
    assert ring.equal(ring.nonalg("gelu_exact", v), ring.nonalg("gelu_exact", v))


def test_ring_rejects_bad_primes():
    with pytest.raises(ValueError, match=r"q \| p - 1"):
        ModRing(11, 7)
