"""Per-request sampling: greedy is exactly argmax, temperature/top-p sample the right
distribution, seeded requests do not depend on their batch row, stop strings cut the text."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jgraph.core import ConfigError
from jgraph.coserve.sampling import (
    MIN_TEMPERATURE,
    SamplingParams,
    StopMatcher,
    request_key,
    safe_prefix_len,
    sample_tokens,
    seed_key,
    step_keys,
    truncate_at_stop,
)
from jgraph.testing import assert_no_recompile

sample = jax.jit(sample_tokens)


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _softmax64(x):
    z = np.exp(np.asarray(x, np.float64) - np.max(x))
    return z / z.sum()


def _nucleus(logits, temperature, top_p):
    """The nucleus in float64 numpy, with a margin for float32 rounding: (ids surely in, ids
    possibly in). Tokens tied with the least likely kept token are in (documented)."""
    x = np.asarray(logits, np.float64) / temperature
    p = _softmax64(x)
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]

    def kept(margin):
        ranks = order[before < top_p + margin]
        cut = x[ranks].min() if ranks.size else x.max()
        # float32 flushes subnormal logits to zero, making ties float64 does not see
        return set(np.flatnonzero(x >= cut - max(margin, 0) * 1e-2).tolist())

    return kept(-1e-5), kept(1e-5)


def _chi2(counts, probs):
    expected = probs * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


CHI2_DF4_P001 = 18.47  # chi-square quantile, 4 degrees of freedom, p = 0.001


# -- SamplingParams ----------------------------------------------------------------------------
def test_sampling_params_validation():
    p = SamplingParams(temperature=0.5, top_p=0.9, max_tokens=3, stop=["a", "bc"], seed=2**40)
    assert p.stop == ("a", "bc")
    assert not p.greedy
    assert SamplingParams(stop="\n").stop == ("\n",)
    assert SamplingParams().greedy
    assert SamplingParams(temperature=MIN_TEMPERATURE / 2).greedy
    bad = {
        "temperature": (-0.1, r"SamplingParams.temperature=-0.1"),
        "top_p": (0.0, r"SamplingParams.top_p=0.0: must be > 0.0"),
        "max_tokens": (0, r"SamplingParams.max_tokens=0"),
        "seed": (True, r"SamplingParams.seed=True: must be an int"),
    }
    for name, (value, pattern) in bad.items():
        with pytest.raises(ConfigError, match=pattern):
            SamplingParams(**{name: value})
    with pytest.raises(ConfigError, match=r"top_p=1.5.*use 0 < top_p <= 1"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ConfigError, match=r"temperature=inf: must be finite"):
        SamplingParams(temperature=float("inf"))
    with pytest.raises(ConfigError, match=r"SamplingParams.stop=\('a', ''\): .*non-empty"):
        SamplingParams(stop=("a", ""))
    with pytest.raises(ConfigError, match=r"SamplingParams.stop=17: more than 16"):
        SamplingParams(stop=tuple("abcdefghijklmnopq"))
    with pytest.raises(ConfigError, match=r"SamplingParams.seed=18446744073709551616"):
        SamplingParams(seed=2**64)


# -- greedy ------------------------------------------------------------------------------------
def test_greedy_is_exactly_argmax_whatever_top_p():
    logits = jax.random.normal(jax.random.key(1), (16, 50)) * 3
    want = np.argmax(np.asarray(logits), axis=-1)
    for top_p in (1.0, 0.5, 1e-6):
        got = sample(logits, jnp.zeros(16), jnp.full(16, top_p), _keys(16))
        np.testing.assert_array_equal(np.asarray(got), want)
        assert got.dtype == jnp.int32
    tiny_t = jnp.full(16, MIN_TEMPERATURE / 2)  # below the floor: still greedy, not overflow
    np.testing.assert_array_equal(np.asarray(sample(logits, tiny_t, jnp.ones(16), _keys(16))), want)
    # Negative check: sampling at temperature 2 does leave the argmax on these rows.
    hot = sample(logits, jnp.full(16, 2.0), jnp.ones(16), _keys(16))
    assert np.any(np.asarray(hot) != want)


def test_greedy_ties_pick_the_lowest_id():
    logits = jnp.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 5.0]])
    got = sample(logits, jnp.zeros(3), jnp.full(3, 0.3), _keys(3))
    assert got.tolist() == [1, 0, 3]


# -- the sampled distribution ------------------------------------------------------------------
def test_top_p_one_samples_the_tempered_softmax():
    n, t = 20000, 0.7
    logits = np.array([1.0, 0.2, -0.5, 0.9, -2.0], np.float32)
    got = sample(jnp.tile(logits, (n, 1)), jnp.full(n, t), jnp.ones(n), _keys(n, seed=3))
    counts = np.bincount(np.asarray(got), minlength=5)
    assert _chi2(counts, _softmax64(logits / t)) < CHI2_DF4_P001
    # Negative checks: the untempered softmax, and top-p 0.9's nucleus, do not fit the counts.
    assert _chi2(counts, _softmax64(logits)) > 10 * CHI2_DF4_P001
    assert counts[4] > 0  # the least likely token is still drawn with top_p = 1


def test_nucleus_renormalizes_over_its_tokens():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0, 1} (0.5 < 0.7 <= 0.8).
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    n = 20000
    logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32)), (n, 1))
    got = np.asarray(sample(logits, jnp.ones(n), jnp.full(n, 0.7), _keys(n, seed=5)))
    counts = np.bincount(got, minlength=4)
    assert counts[2] == counts[3] == 0
    frac = counts[0] / n  # 0.5 / 0.8 = 0.625; 5 sigma = 5 * sqrt(.625 * .375 / n) = 0.017
    assert abs(frac - 0.625) < 0.017


def test_small_top_p_keeps_only_the_argmax():
    logits = jax.random.normal(jax.random.key(2), (64, 30))
    got = sample(logits, jnp.full(64, 1.5), jnp.full(64, 1e-4), _keys(64))
    np.testing.assert_array_equal(np.asarray(got), np.argmax(np.asarray(logits), -1))


@settings(max_examples=40, deadline=None)
@given(
    logits=st.lists(st.floats(-4, 4, width=32), min_size=8, max_size=8),
    temperature=st.floats(0.1, 3.0),
    top_p=st.floats(0.05, 0.99),
    seed=st.integers(0, 2**31),
)
def test_tokens_outside_the_nucleus_are_never_sampled(logits, temperature, top_p, seed):
    n = 256
    got = sample(
        jnp.tile(jnp.asarray(logits, jnp.float32), (n, 1)),
        jnp.full(n, temperature, jnp.float32),
        jnp.full(n, top_p, jnp.float32),
        _keys(n, seed),
    )
    surely, possibly = _nucleus(logits, temperature, top_p)
    drawn = set(np.asarray(got).tolist())
    assert drawn <= possibly
    assert drawn & surely  # not vacuous: the nucleus itself is drawn from


def test_sampling_does_not_recompile():
    logits = jax.random.normal(jax.random.key(0), (4, 10))
    args = (jnp.array([0.0, 1.0, 0.5, 2.0]), jnp.array([1.0, 0.9, 0.5, 1.0]))
    sample(logits, *args, _keys(4))
    other = (logits + 1, args[0] * 0.5, args[1], _keys(4, seed=9))  # built outside the block
    with assert_no_recompile("sample_tokens"):
        sample(*other)


# -- per-request keys --------------------------------------------------------------------------
def test_a_seed_gives_the_same_tokens_in_any_batch_row():
    v = 50
    row = jax.random.normal(jax.random.key(4), (v,))
    noise = jax.random.normal(jax.random.key(5), (6, v))
    base = jnp.stack([jax.random.key_data(seed_key(s)) for s in (1, 7, 2, 3, 4, 5)])

    def tokens(at, steps):
        """Seed 7's row at batch position ``at`` among other requests, token index ``steps``."""
        order = [1, 0, 2, 3, 4, 5] if at == 0 else [0, 2, 3, 4, 5, 1]
        logits = noise.at[at].set(row)
        keys = step_keys(base[jnp.array(order)], jnp.full(6, steps))
        return int(sample(logits, jnp.ones(6), jnp.full(6, 0.95), keys)[at])

    first = [tokens(0, i) for i in range(12)]
    assert first == [tokens(5, i) for i in range(12)]
    alone = [int(sample(row[None], jnp.ones(1), jnp.full(1, 0.95), request_key(7, i)[None])[0])
             for i in range(12)]  # fmt: skip
    assert first == alone  # the step's keys are request_key(seed, index)
    other = [int(sample(row[None], jnp.ones(1), jnp.full(1, 0.95), request_key(8, i)[None])[0])
             for i in range(12)]  # fmt: skip
    assert other != first  # negative checks: the seed and the token index matter
    assert len(set(first)) > 1


def test_seed_key_uses_all_64_bits():
    data = {s: tuple(np.asarray(jax.random.key_data(seed_key(s))).tolist())
            for s in (0, 1, 2**32 + 1, 2**63 - 1, -1)}  # fmt: skip
    assert len(set(data.values())) == len(data)
    assert data[-1] == tuple(np.asarray(jax.random.key_data(seed_key(2**64 - 1))).tolist())
    typed = step_keys(jnp.stack([seed_key(3), seed_key(4)]), jnp.array([5, 6]))
    raw = step_keys(
        jnp.stack([jax.random.key_data(seed_key(s)) for s in (3, 4)]), jnp.array([5, 6])
    )
    np.testing.assert_array_equal(jax.random.key_data(typed), jax.random.key_data(raw))


# -- stop strings ------------------------------------------------------------------------------
def test_truncate_at_the_earliest_stop():
    assert truncate_at_stop("one. two! three", ["!", "."]) == ("one", True)
    assert truncate_at_stop("one two", ["!"]) == ("one two", False)
    assert truncate_at_stop("abcabc", ["cab", "bca"]) == ("a", True)  # "bca" starts first
    assert truncate_at_stop("", ["x"]) == ("", False)
    # The stop that completes first wins (as character-by-character generation would stop),
    # not the one that starts first; on equal ends the longer one.
    assert truncate_at_stop(".aa", ["a", ".aa"]) == (".", True)
    assert truncate_at_stop("xab", ["b", "ab"]) == ("x", True)


def test_safe_prefix_len_holds_back_a_possible_stop():
    assert safe_prefix_len("Hello wor", ["world"]) == 6
    assert safe_prefix_len("Hello world and more", ["world"]) == 6
    assert safe_prefix_len("Hello w", ["world", "wx"]) == 6
    assert safe_prefix_len("ab", ["abc", "b"]) == 1  # "b" is complete: cut before it
    assert safe_prefix_len("aab", ["aabc", "bd"]) == 0  # the longest tail "aab" may complete
    assert safe_prefix_len("Hello", ["world"]) == 5
    assert safe_prefix_len("Hello", []) == 5


def test_stop_string_spanning_two_tokens():
    m = StopMatcher(["END"])
    assert m.feed("abcE") == ("abc", False)  # "E" could begin "END": held back
    assert m.feed("ND more") == ("", True)
    assert m.text == "abc"
    assert m.finish() == ""
    assert m.feed("x") == ("", True)
    m = StopMatcher(["END"])
    assert m.feed("abcE") == ("abc", False)
    assert m.feed("xyz") == ("Exyz", False)  # negative: a false alarm is released
    assert m.feed("EN") == ("", False)
    assert m.finish() == "EN"  # ended by max_tokens: nothing is lost
    assert m.text == "abcExyzEN"


def test_stop_over_three_tokens_in_streaming():
    m = StopMatcher(["\nUser:"])
    out = [m.feed(d) for d in ("Sure", ".\n", "Us", "er", ": next")]
    assert out == [("Sure", False), (".", False), ("", False), ("", False), ("", True)]
    assert m.text == "Sure."


@settings(max_examples=200, deadline=None)
@given(
    text=st.text("ab.", max_size=20),
    cuts=st.lists(st.integers(0, 20), max_size=6),
    stops=st.lists(st.text("ab.", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_streamed_text_equals_the_truncated_text(text, cuts, stops):
    bounds = [0, *sorted(c for c in cuts if c <= len(text)), len(text)]
    m = StopMatcher(stops)
    shown = ""
    for lo, hi in itertools.pairwise(bounds):
        piece, stopped = m.feed(text[lo:hi])
        shown += piece
        assert truncate_at_stop(shown, stops) == (shown, False)  # never shows a stop
        if stopped:
            break
    if not m.stopped:
        shown += m.finish()
    assert (shown, m.stopped) == truncate_at_stop(text, stops)
