"""Simulator against makespans computed by hand."""

import random

import pytest

from jgraph.pipeline import make_schedule, simulate
from jgraph.pipeline._simulate import iteration_lower_bound


def test_two_stage_chain():
    # s0: F0[0,1] F1[1,2] B0[4,6] B1[7,9]; s1: F0[1,2] B0[2,4] F1[4,5] B1[5,7].
    r = simulate(make_schedule("1f1b", [[1], []], 2), [1.0, 1.0], [2.0, 2.0])
    assert r.iteration_s == 9.0
    assert r.timeline[0] == (
        ("F", 0, 0.0, 1.0),
        ("F", 1, 1.0, 2.0),
        ("B", 0, 4.0, 6.0),
        ("B", 1, 7.0, 9.0),
    )
    assert r.busy_s == (6.0, 6.0)
    assert r.idle_s == (3.0, 3.0)
    assert r.bubble_fraction == pytest.approx(1 / 3)


@pytest.mark.parametrize("kind", ["1f1b", "gpipe"])
@pytest.mark.parametrize(("stages", "m"), [(1, 1), (3, 4), (4, 2), (2, 7)])
def test_balanced_chain_formula(kind, stages, m):
    succs = [[i + 1] for i in range(stages - 1)] + [[]]
    r = simulate(make_schedule(kind, succs, m), [1.0] * stages, [2.0] * stages)
    assert r.iteration_s == pytest.approx((m + stages - 1) * 3.0)


def test_two_branch_join():
    # Stages 0 and 1 feed stage 2. F = (1, 2, 1), B = (2, 4, 2), M = 2.
    # s2: F0[2,3] B0[3,5] F1[5,6] B1[6,8]; s0: B0[5,7] B1[8,10]; s1: B0[5,9] B1[9,13].
    sched = make_schedule("1f1b", [[2], [2], []], 2)
    r = simulate(sched, [1.0, 2.0, 1.0], [2.0, 4.0, 2.0])
    assert r.iteration_s == 13.0
    assert r.timeline[2] == (
        ("F", 0, 2.0, 3.0),
        ("B", 0, 3.0, 5.0),
        ("F", 1, 5.0, 6.0),
        ("B", 1, 6.0, 8.0),
    )
    assert r.peak_in_flight == (2, 2, 1)
    # The gradient all-reduce runs after the last backward of its stage.
    r2 = simulate(sched, [1.0, 2.0, 1.0], [2.0, 4.0, 2.0], allreduce_s=[0.0, 0.5, 0.0])
    assert r2.iteration_s == 13.5
    assert r2.timeline[1][-1] == ("AR", -1, 13.0, 13.5)
    r3 = simulate(sched, [1.0, 2.0, 1.0], [2.0, 4.0, 2.0], allreduce_s=[2.0, 0.0, 0.0])
    assert r3.iteration_s == 13.0  # 10 + 2 < 13: hidden behind the slow branch


def test_bubble_weights_devices():
    sched = make_schedule("1f1b", [[1], []], 1)
    one = simulate(sched, [1.0, 1.0], [1.0, 1.0], devices=[1, 1])
    assert one.iteration_s == 4.0
    assert one.bubble_fraction == pytest.approx(0.5)
    skew = simulate(sched, [1.0, 1.0], [1.0, 1.0], devices=[3, 1])
    assert skew.bubble_fraction == pytest.approx(0.5)


def test_wrong_lengths():
    with pytest.raises(ValueError, match="need 2 values per stage"):
        simulate(make_schedule("1f1b", [[1], []], 2), [1.0], [1.0, 1.0])


@pytest.mark.parametrize("kind", ["1f1b", "gpipe"])
@pytest.mark.parametrize("seed", range(12))
def test_lower_bound_never_exceeds_the_simulation(kind, seed):
    rng = random.Random(seed)
    n = rng.randint(1, 6)
    # A random stage DAG in topological numbering; every stage reaches the sink.
    succs = [
        sorted(rng.sample(range(i + 1, n), rng.randint(1, min(2, n - 1 - i)))) for i in range(n - 1)
    ]
    succs.append([])
    fwd = [rng.uniform(0.1, 2.0) for _ in range(n)]
    bwd = [rng.uniform(0.1, 4.0) for _ in range(n)]
    ar = [rng.choice([0.0, rng.uniform(0.0, 3.0)]) for _ in range(n)]
    m = rng.randint(1, 6)
    sim = simulate(make_schedule(kind, succs, m), fwd, bwd, allreduce_s=ar)
    bound = iteration_lower_bound(succs, fwd, bwd, m, ar)
    assert bound <= sim.iteration_s * (1 + 1e-12)
    # Never vacuous: at least the busiest stage's own work.
    assert bound >= max(m * (f + b) + a for f, b, a in zip(fwd, bwd, ar, strict=True))


def test_lower_bound_is_exact_on_a_balanced_chain():
    succs = [[1], [2], []]
    assert iteration_lower_bound(succs, [1.0] * 3, [2.0] * 3, 4) == pytest.approx((4 + 2) * 3.0)
    with pytest.raises(ValueError, match="topologically"):
        iteration_lower_bound([[], [0]], [1.0] * 2, [1.0] * 2, 2)
