"""Schedule tables as pure data: dependencies, one op per tick, warm-up counts."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jgraph.core import ConfigError
from jgraph.pipeline import Schedule, make_schedule
from jgraph.pipeline._schedule import longest_path_to_sink

CHAIN4 = [[1], [2], [3], []]
DIAMOND = [[1, 2], [3], [3], []]
FORK_JOIN = [[1, 2, 3], [4], [5], [4], [6], [6], []]  # branches of length 2, 1, ...


def check_table(s: Schedule) -> None:
    """Raises AssertionError if the tick table breaks any scheduling rule."""
    m, n = s.num_microbatches, s.num_stages
    when: dict[tuple[str, int, int], int] = {}
    for t, (ops, mbs) in enumerate(zip(s.ops, s.microbatch, strict=True)):
        assert len(ops) == len(mbs) == n
        for i, (op, k) in enumerate(zip(ops, mbs, strict=True)):
            if op == "":
                assert k == -1
                continue
            assert op in ("F", "B")
            assert 0 <= k < m
            assert (op, i, k) not in when, f"{op}{k} twice on stage {i}"
            when[(op, i, k)] = t
    assert len(when) == 2 * m * n, "every stage runs every F and B exactly once"
    preds = s.preds
    for i in range(n):
        for k in range(m):
            f, b = when[("F", i, k)], when[("B", i, k)]
            assert f < b
            for p in preds[i]:
                assert when[("F", p, k)] < f
            for j in s.succs[i]:
                assert when[("B", j, k)] < b
            if k:
                assert when[("F", i, k - 1)] < f
                assert when[("B", i, k - 1)] < b


@pytest.mark.parametrize("succs", [CHAIN4, DIAMOND, FORK_JOIN, [[]]])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("kind", ["1f1b", "gpipe"])
def test_tables_respect_dependencies_and_warmup(succs, m, kind):
    s = make_schedule(kind, succs, m)
    check_table(s)
    depth = longest_path_to_sink(succs)
    expected = [min(m, d) for d in depth] if kind == "1f1b" else [m] * len(succs)
    assert s.warmup() == tuple(expected)
    assert s.peak_in_flight() == tuple(expected)


def test_depth_is_longest_path_to_a_sink():
    assert longest_path_to_sink(CHAIN4) == (4, 3, 2, 1)
    assert longest_path_to_sink(DIAMOND) == (3, 2, 2, 1)
    assert longest_path_to_sink(FORK_JOIN) == (4, 3, 3, 3, 2, 2, 1)


def test_chain_unit_ticks_match_the_bubble_formula():
    # Unit F and B on S stages: 2 (M + S - 1) ticks, bubble (S-1)/(M+S-1).
    for m in (1, 4, 9):
        assert make_schedule("1f1b", CHAIN4, m).num_ticks == 2 * (m + 3)
        assert make_schedule("gpipe", CHAIN4, m).num_ticks == 2 * (m + 3)


def test_graph_stages_are_shallower_than_the_chain():
    # Two parallel stages feeding a join: depth 2, not 3.
    s = make_schedule("1f1b", [[2], [2], []], 4)
    assert s.warmup() == (2, 2, 1)
    assert s.num_ticks < make_schedule("1f1b", [[1], [2], []], 4).num_ticks


def test_checker_catches_a_broken_table():
    s = make_schedule("1f1b", CHAIN4, 3)
    ops = [list(r) for r in s.ops]
    mbs = [list(r) for r in s.microbatch]
    # Swap the first two ticks of the last stage's work: B before its F.
    t_f = next(t for t, r in enumerate(ops) if r[3] == "F")
    t_b = next(t for t, r in enumerate(ops) if r[3] == "B")
    ops[t_f][3], ops[t_b][3] = ops[t_b][3], ops[t_f][3]
    mbs[t_f][3], mbs[t_b][3] = mbs[t_b][3], mbs[t_f][3]
    bad = Schedule(
        kind=s.kind, num_microbatches=3, succs=s.succs, order=s.order,
        ops=tuple(map(tuple, ops)), microbatch=tuple(map(tuple, mbs)),
    )  # fmt: skip
    with pytest.raises(AssertionError):
        check_table(bad)


def test_json_round_trip_and_arrays():
    s = make_schedule("1f1b", FORK_JOIN, 5)
    assert Schedule.from_dict(s.to_dict()) == s
    code, mb = s.as_arrays()
    assert code.shape == mb.shape == (s.num_ticks, 7)
    assert int((code == 1).sum()) == int((code == 2).sum()) == 35
    assert ((code == 0) == (mb == -1)).all()


def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"make_schedule.num_microbatches=0"):
        make_schedule("1f1b", CHAIN4, 0)
    with pytest.raises(ConfigError, match=r"make_schedule.kind='zb'"):
        make_schedule("zb", CHAIN4, 2)


@st.composite
def dags(draw):
    n = draw(st.integers(1, 7))
    succs = []
    for i in range(n):
        later = list(range(i + 1, n))
        succs.append(sorted(draw(st.sets(st.sampled_from(later), max_size=3))) if later else [])
    return succs


@settings(max_examples=60, deadline=None)
@given(dags(), st.integers(1, 9), st.sampled_from(["1f1b", "gpipe"]))
def test_random_dags(succs, m, kind):
    s = make_schedule(kind, succs, m)
    check_table(s)
    if kind == "1f1b":
        assert s.warmup() == tuple(min(m, d) for d in longest_path_to_sink(succs))
