"""GraphPipe's DP against brute-force enumeration of its whole search space.

The reference enumerates every partition the SP search space allows (each
range as one stage, or split into a first group and the rest; parallel
children grouped contiguously; whole branches folded with the elements after
their join), every data-parallel degree per stage, and
checks memory with the exact stage-graph depth. The DP's best bottleneck TPS
must equal the brute-force optimum, and its plan must be feasible.
"""

import itertools
import random

import pytest

from jgraph.pipeline import ClusterConfig, CostModel, ModelGraph, Node, PlannerConfig, plan_pipeline
from jgraph.pipeline._baselines import linearisations, pipedream_dp
from jgraph.pipeline._graphpipe import GraphPipeSearch
from jgraph.pipeline._schedule import longest_path_to_sink


def node(name, *inputs, t=1e-3, params=1e6, act=1e5, out=1e4):
    # Measured times: sub-linear in the micro-batch (an efficiency curve).
    return Node(
        name=name, inputs=inputs, kind="op", param_bytes=params, weight_bytes=params,
        activation_bytes=act, output_bytes=out,
        measured=((1, t, 2 * t), (2, 1.5 * t, 3 * t), (4, 2.5 * t, 5 * t), (8, 4.5 * t, 9 * t)),
    )  # fmt: skip


def branchy() -> ModelGraph:
    return ModelGraph(
        name="branchy",
        nodes=(
            node("x", t=2e-4),
            node("a1", "x", t=3e-3, act=4e5),
            node("a2", "a1", t=1e-3),
            node("b1", "x", t=2.5e-3, params=4e6),
            node("c1", "x", t=5e-4),
            node("j", "a2", "b1", "c1", t=3e-4),
            node("h", "j", t=1.2e-3),
        ),
    )


def chain() -> ModelGraph:
    times = [1e-3, 3e-3, 2e-3, 1e-3, 4e-3, 1e-3]
    nodes = [node("n0", t=times[0])]
    nodes += [node(f"n{i}", f"n{i - 1}", t=t, act=1e5 * (i + 1)) for i, t in enumerate(times) if i]
    return ModelGraph(name="chain", nodes=tuple(nodes))


def sp_partitions(run, node_, i, j):
    if node_.kind == "leaf":
        return [[[node_.node]]]
    if i == j:
        c = node_.children[i]
        return sp_partitions(run, c, 0, max(len(c.children) - 1, 0))
    out = [[run._members(node_, i, j)]]
    for p in range(i, j):
        firsts = (
            sp_partitions(run, node_.children[i], 0, max(len(node_.children[i].children) - 1, 0))
            if p == i
            else [[run._members(node_, i, p)]]
        )
        out += [f + r for f in firsts for r in sp_partitions(run, node_, p + 1, j)]
    par = node_.children[i]
    if node_.kind == "series" and par.kind == "parallel":
        # Join folding: branches 0..k share a stage with elements i+1..q.
        for q in range(i + 1, j + 1):
            tail = run._members(node_, i + 1, q)
            rests = sp_partitions(run, node_, q + 1, j) if q < j else [[]]
            for k in range(len(par.children) - 1):
                merged = run._members(par, 0, k) + tail
                for others in sp_partitions(run, par, k + 1, len(par.children) - 1):
                    out += [[merged, *others, *r] for r in rests]
    return out


def exact_feasible(cm, stages, degrees, b, batch, extra_edges=()):
    """Max TPS if the plan fits (exact stage-graph depth), else None."""
    owner = {v: s for s, members in enumerate(stages) for v in members}
    succ = [set() for _ in stages]
    for v, ps in enumerate(cm.preds):
        for u in [*ps, *(a for a, c in extra_edges if c == v)]:
            if owner[u] != owner[v]:
                succ[owner[u]].add(owner[v])
    depth = longest_path_to_sink([sorted(s) for s in succ])
    m = batch // b
    worst = 0.0
    for s, (members, d) in enumerate(zip(stages, degrees, strict=True)):
        c = cm.stage_cost(members, devices=d, micro_batch=b, batch=batch)
        if c.memory(min(m, depth[s])) > cm.cluster.memory_bytes:
            return None
        worst = max(worst, c.tps)
    return worst


def brute_force(cm, partitions, b, batch, extra_edges=()):
    D = cm.cluster.num_devices
    degs = [d for d in (1, 2, 4, 8) if d <= min(b, D) and b % d == 0]
    best = None
    for stages in partitions:
        for degrees in itertools.product(degs, repeat=len(stages)):
            if sum(degrees) > D:
                continue
            got = exact_feasible(cm, stages, degrees, b, batch, extra_edges)
            if got is not None and (best is None or got < best):
                best = got
    return best


CASES = [
    # (graph, devices, memory bytes, micro-batch, batch)
    (branchy, 4, 16e9, 2, 16),
    (branchy, 4, 16e9, 4, 16),
    (branchy, 5, 16e9, 1, 8),
    (branchy, 4, 2.2e7, 2, 16),
    (branchy, 4, 2.4e7, 4, 16),
    (branchy, 4, 2e7, 4, 16),  # tight memory: the constraint binds (see below)
    (branchy, 4, 1.8e7, 2, 16),  # tight memory too
    (chain, 4, 16e9, 2, 16),
    (chain, 3, 1.5e7, 1, 8),
]


@pytest.mark.parametrize(("make", "devices", "memory", "b", "batch"), CASES)
def test_dp_matches_brute_force(make, devices, memory, b, batch):
    cm = CostModel(make(), ClusterConfig(num_devices=devices, memory_bytes=memory), PlannerConfig())
    search = GraphPipeSearch(cm, batch=batch)
    from jgraph.pipeline._sp_tables import SPTables

    run = SPTables(search, b)
    run.solve(float("inf"))
    root = search.root
    parts = sp_partitions(run, root, 0, max(len(root.children) - 1, 0))
    reference = brute_force(cm, parts, b, batch, search.added_edges)
    plans = search.best(micro_batch=b)
    if reference is None:
        assert plans == []
        return
    stages, degrees = plans[0]
    assert sum(degrees) <= devices
    got = exact_feasible(cm, stages, degrees, b, batch, search.added_edges)
    assert got is not None, "the DP's plan must fit in memory"
    assert got == pytest.approx(reference, rel=1e-12)
    # Negative check: with less memory the optimum cannot improve.
    tighter = CostModel(
        make(), ClusterConfig(num_devices=devices, memory_bytes=memory * 0.6), PlannerConfig()
    )
    t_plans = GraphPipeSearch(tighter, batch=batch).best(micro_batch=b)
    if t_plans:
        t_got = exact_feasible(tighter, *t_plans[0], b, batch)
        assert t_got is not None
        assert t_got >= got - 1e-15


@pytest.mark.parametrize(("make", "devices", "memory", "b", "batch"), CASES)
def test_largest_candidate_target_is_as_feasible_as_no_target(make, devices, memory, b, batch):
    # `best` relies on this instead of probing the largest target.
    from jgraph.pipeline._sp_tables import SPTables

    cm = CostModel(make(), ClusterConfig(num_devices=devices, memory_bytes=memory), PlannerConfig())
    run = SPTables(GraphPipeSearch(cm, batch=batch), b)
    unbounded = run.solve(float("inf"))
    if unbounded is None:
        return
    assert run.solve(max(run.candidate_tps())) == unbounded
    # Negative check: below the smallest candidate nothing meets the target.
    assert run.solve(min(run.candidate_tps()) * 0.5) is None


def test_memory_constraint_binds_in_a_tested_case():
    def optimum(memory):
        cm = CostModel(
            branchy(), ClusterConfig(num_devices=4, memory_bytes=memory), PlannerConfig()
        )
        return exact_feasible(cm, *GraphPipeSearch(cm, batch=16).best(micro_batch=4)[0], 4, 16)

    assert optimum(2e7) > optimum(16e9) * 1.05


def chain_compositions(n):
    for cuts in itertools.product([0, 1], repeat=n - 1):
        stages, cur = [], [0]
        for i, c in enumerate(cuts, start=1):
            if c:
                stages.append(cur)
                cur = []
            cur.append(i)
        stages.append(cur)
        yield stages


@pytest.mark.parametrize(("devices", "memory", "b"), [(4, 16e9, 2), (3, 1.5e7, 1), (4, 2e7, 4)])
def test_chain_planners_match_independent_brute_force(devices, memory, b):
    cm = CostModel(
        chain(), ClusterConfig(num_devices=devices, memory_bytes=memory), PlannerConfig()
    )
    reference = brute_force(cm, list(chain_compositions(len(cm.nodes))), b, 16)
    assert reference is not None
    gp = GraphPipeSearch(cm, batch=16).best(micro_batch=b)[0]
    assert exact_feasible(cm, *gp, b, 16) == pytest.approx(reference, rel=1e-12)
    pd = pipedream_dp(cm, b, 16, linearisations(cm)[0])
    assert exact_feasible(cm, *pd, b, 16) == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("memory", [3e7, 5e7, 16e9])
@pytest.mark.parametrize("planner", ["graphpipe", "pipedream", "piper", "gpipe"])
def test_returned_plans_fit_in_memory(memory, planner):
    from jgraph.pipeline import NoPlanError

    cluster = ClusterConfig(num_devices=4, memory_bytes=memory)
    try:
        plan = plan_pipeline(branchy(), cluster, batch=16, planner=planner)
    except NoPlanError as exc:
        pytest.fail(f"{planner} found no plan at {memory:.3g} bytes: {exc}")
    assert plan.max_memory_bytes <= memory
    assert all(s.memory_bytes <= memory for s in plan.stages)
    assert plan.devices_used <= 4


def test_tables_read_the_search_and_never_write_it():
    # `SPTables` sees the search through the read-only `SearchContext` protocol.
    cm = CostModel(branchy(), ClusterConfig(num_devices=4), PlannerConfig())
    search = GraphPipeSearch(cm, batch=16)

    def state():  # containers by content (a cache filled in place must show)
        return {k: repr(v) if isinstance(v, dict | list) else v for k, v in vars(search).items()}

    before = state()
    assert search.best(micro_batch=2)
    assert search.fits(micro_batch=4)
    assert state() == before


def fan(seed: int, branches: int, max_len: int) -> ModelGraph:
    """A source, ``branches`` parallel chains of 1..max_len nodes, and a join; random costs."""
    rng = random.Random(seed)

    def rand_node(name, *inputs):
        return node(
            name, *inputs, t=rng.uniform(2e-4, 4e-3), params=rng.uniform(5e5, 8e6),
            act=rng.uniform(5e4, 8e5),
        )  # fmt: skip

    nodes, tails = [rand_node("src")], []
    for br in range(branches):
        prev = "src"
        for k in range(rng.randint(1, max_len)):
            nodes.append(rand_node(f"b{br}_{k}", prev))
            prev = f"b{br}_{k}"
        tails.append(prev)
    nodes.append(rand_node("join", *tails))
    return ModelGraph(name=f"fan{seed}", nodes=tuple(nodes))


# Fewer devices than branches, so some stage holds nodes of several branches.
# With 4 devices and 5-6 branches the optimum groups parallel children that are
# not the last ones of their parallel node (a planner that only groups a whole
# suffix of branches plans up to ~30% slower there); with 2-3 devices it groups
# a whole suffix or folds branches into the join's stage.
FAN_CASES = [
    # (seed, branches, max branch length, devices, memory bytes, micro-batch, batch)
    (0, 3, 2, 2, 16e9, 1, 8),
    (1, 4, 1, 3, 16e9, 1, 8),
    (2, 4, 2, 3, 16e9, 2, 8),
    (3, 4, 2, 3, 1e8, 2, 8),  # memory binds
    (4, 5, 2, 2, 16e9, 2, 8),
    (5, 4, 3, 3, 16e9, 1, 8),
    (0, 5, 2, 4, 16e9, 1, 8),
    (0, 5, 3, 4, 16e9, 1, 8),
    (3, 5, 2, 4, 16e9, 2, 8),
    (2, 6, 1, 4, 16e9, 1, 8),
    (3, 5, 1, 4, 16e9, 2, 8),  # one stage data parallel on 2 devices
    (7, 5, 2, 4, 16e9, 2, 8),  # likewise
    (8, 5, 1, 4, 4e7, 2, 8),  # memory binds
    (10, 5, 1, 4, 6e7, 2, 8),  # memory binds
]


def fan_optimum(seed, branches, max_len, devices, memory, b, batch):
    """(the DP's best plan, its exact max TPS, the brute-force optimum) of a `fan` graph."""
    from jgraph.pipeline._sp_tables import SPTables

    graph = fan(seed, branches, max_len)
    cm = CostModel(graph, ClusterConfig(num_devices=devices, memory_bytes=memory), PlannerConfig())
    search = GraphPipeSearch(cm, batch=batch)
    run = SPTables(search, b)
    run.solve(float("inf"))
    root = search.root
    parts = sp_partitions(run, root, 0, max(len(root.children) - 1, 0))
    # Every stage takes a device: more stages than devices never fit.
    parts = [p for p in parts if len(p) <= devices]
    reference = brute_force(cm, parts, b, batch, search.added_edges)
    plans = search.best(micro_batch=b)
    if not plans:
        return None, None, reference
    got = exact_feasible(cm, *plans[0], b, batch, search.added_edges)
    return plans[0], got, reference


@pytest.mark.parametrize(
    ("seed", "branches", "max_len", "devices", "memory", "b", "batch"), FAN_CASES
)
def test_dp_groups_parallel_branches_like_brute_force(
    seed, branches, max_len, devices, memory, b, batch
):
    assert devices < branches
    plan, got, reference = fan_optimum(seed, branches, max_len, devices, memory, b, batch)
    assert reference is not None, "each case has a feasible plan"
    assert plan is not None, "the brute force found a plan, so must the DP"
    stages, degrees = plan
    assert sum(degrees) <= devices
    assert got is not None, "the DP's plan must fit in memory"
    assert got == pytest.approx(reference, rel=1e-12)
    # Pigeonhole: some stage holds nodes of two branches.
    names = [n.name for n in fan(seed, branches, max_len).nodes]
    owners = [{names[v].split("_")[0] for v in s} - {"src", "join"} for s in stages]
    assert max(len(o) for o in owners) >= 2


def test_memory_binds_in_a_fan_case():
    # The "memory binds" cases above: the optimum is slower than with ample memory.
    for seed, branches, max_len, devices, memory, b, batch in (FAN_CASES[3], FAN_CASES[12]):
        _, tight, _ = fan_optimum(seed, branches, max_len, devices, memory, b, batch)
        _, ample, _ = fan_optimum(seed, branches, max_len, devices, 16e9, b, batch)
        assert tight > ample * 1.01


def test_equal_ranges_priced_together_share_their_floats():
    # A star whose 13 branches fall into three classes of equal nodes (found by
    # the random-DAG test of tests/pipeline/test_planner_vs_sequential.py). Equal
    # ranges of the parallel node priced in one vectorised call came out a bit
    # apart (the matrix products sum rows in different orders); the DP table
    # used one copy and the reconstruction the other, so at a target equal to
    # those TPS no choice reproduced the table ("a bug").
    def leaf(name, t, curve, params):
        curve_s = tuple((x, t * x**curve, 2 * t * x**curve) for x in (1, 2, 4, 8, 16))
        return Node(
            name=name, inputs=("n0",) if name != "n0" else (), param_bytes=params,
            weight_bytes=params, activation_bytes=1e4, measured=curve_s,
        )  # fmt: skip

    def cost(v):  # (fwd seconds at 1 sample, growth exponent, params), in node order
        if v == 0:
            return 4.483121066585271e-4, 0.375, 0.0
        if v <= 3:
            return 1e-4, 1.0, 0.0
        return 1e-4, 0.3046875, 0.3046875 if v <= 8 or v == 13 else 0.0

    graph = ModelGraph(name="star", nodes=tuple(leaf(f"n{v}", *cost(v)) for v in range(14)))
    cm = CostModel(graph, ClusterConfig(num_devices=4), PlannerConfig())
    search = GraphPipeSearch(cm, batch=2)
    from jgraph.pipeline._sp_tables import SPTables

    run = SPTables(search, 2)
    run.solve(float("inf"))
    par = search.root.children[1]
    tps, _, _ = run._series_costs(par)
    last = len(par.children) - 1
    for i in range(last + 1):
        for p in range(i, last + 1):
            key = search.canon.range_id(par, i, p)
            assert (tps[i, p] == run.base_costs[key][0]).all(), (i, p)
    assert search.best(micro_batch=2)
    assert plan_pipeline(graph, ClusterConfig(num_devices=4), batch=2).stages
