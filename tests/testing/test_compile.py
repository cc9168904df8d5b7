"""Recompilation guards: silent on cache hits, loud on a recompile."""

import jax
import jax.numpy as jnp
import pytest

from jgraph.testing import assert_no_recompile, compilation_log


def test_cache_hits_pass():
    step = jax.jit(lambda s, x: s * 0.5 + x)
    s = step(jnp.zeros(8), jnp.ones(8))
    xs = [jnp.full(8, i, dtype=jnp.float32) for i in range(3)]
    with assert_no_recompile("step") as log:
        for x in xs:
            s = step(s, x)
        s.block_until_ready()
    assert log.count == 0


def test_weak_type_change_is_a_recompile():
    step = jax.jit(lambda x: x + 1)
    step(jnp.ones(3))
    weak = jnp.full(3, 2.0)  # Python scalar fill: weakly typed
    with compilation_log() as log:
        step(weak)
    assert log.count == 1


def test_shape_change_fails_and_names_the_function():
    def my_step(x):
        return x * 2

    step = jax.jit(my_step)
    step(jnp.ones(4))
    x5 = jnp.ones(5)
    with (
        pytest.raises(AssertionError, match=r"my_step recompiled 1 time\(s\): .*my_step"),
        assert_no_recompile("my_step"),
    ):
        step(x5)


def test_static_argument_change_is_a_recompile():
    step = jax.jit(lambda x, n: x * n, static_argnums=1)
    step(jnp.ones(2), 2)
    with compilation_log() as log:
        step(jnp.ones(2), 2)
        step(jnp.ones(2), 3)
    assert log.count == 1


def test_donated_state_step():
    step = jax.jit(lambda s, x: s + x, donate_argnums=0)
    s = step(jnp.zeros(16), jnp.ones(16))
    with assert_no_recompile():
        s = step(s, jnp.ones(16))
    assert float(s[0]) == 2.0
