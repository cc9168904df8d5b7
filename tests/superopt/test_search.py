"""The search: canonical enumeration, rediscovery, determinism, caching, limits, errors."""

import collections
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.superopt import CacheWarning, SearchConfig, VerifyConfig, evaluate, search
from jgraph.superopt._canonical import enumerate_dags
from jgraph.superopt.programs import get_program, is_known_good
from jgraph.superopt.verify import Verifier
from jgraph.testing import assert_trees_close

_ARITIES = {"add": 2, "exp": 1, "div": 2}


def _dag_id(seq, n_in):
    """An order-free identity of a DAG: its ops as hash-consed expressions (None if an op repeats)."""
    ex = [("in", i) for i in range(n_in)]
    for kind, ins in seq:
        args = [ex[i] for i in ins]
        if kind == "add":
            args = sorted(args)
        ex.append((kind, *args))
    ops = ex[n_in:]
    return None if len(set(ops)) != len(ops) else tuple(sorted(ops))


def test_canonical_enumeration_generates_each_small_dag_once():
    n_in, depth = 2, 3
    canonical = collections.Counter(
        d for d in (_dag_id(s, n_in) for s in enumerate_dags(n_in, _ARITIES, depth)) if d
    )
    brute: set = set()

    def rec(seq):
        if seq and (d := _dag_id(seq, n_in)):
            brute.add(d)
        if len(seq) < depth:
            n = n_in + len(seq)
            for kind, arity in _ARITIES.items():
                for ins in itertools.product(range(n), repeat=arity):
                    rec([*seq, (kind, ins)])

    rec([])
    assert set(canonical) == brute
    assert max(canonical.values()) == 1
    assert len(brute) > 1000


# verify_all: the fused schedule with the F loop costs the same as the in-block rms_norm in
# the model at these shapes, so the cost bound would skip it; verify every candidate.
_SMALL = SearchConfig(time_limit_s=120, max_kernel_ops=1, verify_all=True, fusion=False)


@pytest.fixture(scope="module")
def rms_result():
    return search(get_program("rmsnorm_linear", scale=4).graph, config=_SMALL, name="rms")


def test_search_rediscovers_the_fused_rmsnorm_linear(rms_result):
    res = rms_result
    assert res.stats.exhausted
    assert any(c.label == "xla" for c in res.candidates)
    found = [c for c in res.candidates if is_known_good("rmsnorm_linear", c.graph)]
    assert found, [c.graph for c in res.candidates]
    assert res.best.label == "search"
    assert res.model_speedup > 1
    assert res.stats.pruned["abstract_expression"] > 0
    assert res.stats.pruned["canonical"] > 0


def test_every_verified_candidate_matches_float64_and_jnp(rms_result):
    prog = get_program("rmsnorm_linear", scale=4)
    rng = np.random.default_rng(123)
    xs = [rng.standard_normal(s) for s in prog.shapes]
    with jax.enable_x64(True):
        want = np.asarray(prog.fn(*[jnp.asarray(x) for x in xs]))
    for cand in rms_result.candidates:
        assert cand.verdict.ok
        assert_trees_close(evaluate(cand.graph, xs)[0], want, kind="forward")
    # a fresh verifier (other seed, other primes) agrees
    v = Verifier(prog.graph, VerifyConfig(seed=5, tests=3, float_screen=False))
    assert all(v.check(c.graph).ok for c in rms_result.candidates)


def test_search_is_deterministic():
    prog = get_program("rmsnorm_linear", scale=16)
    cfg = SearchConfig(time_limit_s=120, max_kernel_ops=1, max_states=3000)
    a, b = search(prog.graph, config=cfg), search(prog.graph, config=cfg)
    assert [c.graph for c in a.candidates] == [c.graph for c in b.candidates]
    assert a.stats.states == b.stats.states
    assert a.stats.pruned == b.stats.pruned


def test_xla_candidate_is_always_returned():
    prog = get_program("gated_mlp", scale=16)
    res = search(prog.graph, config=SearchConfig(max_states=5, fusion=False))
    assert not res.stats.exhausted
    assert res.best.label == "xla"
    assert res.best.graph == prog.graph


def test_without_pruning_more_states_are_needed():
    prog = get_program("rmsnorm_linear", scale=16)
    base = {"time_limit_s": 60, "max_kernel_ops": 1, "max_block_ops": 6, "max_block_inputs": 2}
    on = search(prog.graph, config=SearchConfig(**base))
    off = search(
        prog.graph, config=SearchConfig(**base, pruning=False, max_states=4 * on.stats.states)
    )
    assert on.stats.exhausted
    assert not off.stats.exhausted or off.stats.states > on.stats.states


def test_cache_stores_only_verified_candidates_and_reuses_them(tmp_path):
    prog = get_program("rmsnorm_linear", scale=16)
    cfg = SearchConfig(time_limit_s=60, max_kernel_ops=1, max_states=3000)
    first = search(prog.graph, config=cfg, cache_dir=tmp_path)
    files = list(tmp_path.glob("superopt-*.json"))
    assert len(files) == 1
    assert not first.from_cache
    data = json.loads(files[0].read_text())
    assert all(c["verdict"]["ok"] for c in data["candidates"])
    second = search(prog.graph, config=cfg, cache_dir=tmp_path)
    assert second.from_cache
    assert [c.graph for c in second.candidates] == [c.graph for c in first.candidates]


def test_corrupt_or_tampered_cache_is_ignored_with_a_warning_and_rebuilt(tmp_path):
    prog = get_program("rmsnorm_linear", scale=16)
    cfg = SearchConfig(time_limit_s=60, max_kernel_ops=1, max_states=2000)
    search(prog.graph, config=cfg, cache_dir=tmp_path)
    (path,) = tmp_path.glob("superopt-*.json")
    path.write_text("{not json")
    with pytest.warns(CacheWarning, match="ignoring superopt cache file"):
        res = search(prog.graph, config=cfg, cache_dir=tmp_path)
    assert not res.from_cache
    assert json.loads(path.read_text())["candidates"]
    # a tampered best candidate (wrong loop range semantics) fails re-verification
    data = json.loads(path.read_text())
    best = data["candidates"][0]["graph"]
    if best["ops"][0].get("block"):
        best["ops"][0]["block"]["inputs"][0]["fmap"] = -1
        best["ops"][0]["block"]["frange"] = 2
        path.write_text(json.dumps(data))
        with pytest.warns(CacheWarning):
            assert not search(prog.graph, config=cfg, cache_dir=tmp_path).from_cache


def test_zero_time_limit_and_bad_bounds_are_config_errors():
    with pytest.raises(ConfigError, match=r"SearchConfig.time_limit_s=0: must be > 0.0"):
        SearchConfig(time_limit_s=0)
    with pytest.raises(ConfigError, match=r"SearchConfig\.maps='fixed'"):
        SearchConfig(maps="fixed")
    with pytest.raises(ConfigError, match=r"SearchConfig\.max_block_ops=2"):
        SearchConfig(max_block_ops=2)
