"""Model graph validation and series-parallel decomposition."""

import pytest

from jgraph.core import ConfigError
from jgraph.pipeline import ClusterConfig, ModelGraph, Node, plan_pipeline
from jgraph.pipeline._sp import decompose


def ff(name, *inputs):
    return Node(name=name, inputs=inputs, kind="ff", flops=1e9, bwd_flops=2e9, param_bytes=1e6,
                weight_bytes=1e6, activation_bytes=1e5, output_bytes=1e4)  # fmt: skip


def test_cycle_names_the_offending_nodes():
    nodes = (ff("x"), ff("a", "x", "c"), ff("b", "a"), ff("c", "b"))
    with pytest.raises(
        ConfigError,
        match=r"ModelGraph\(cyc\)='(a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)': the graph has a cycle",
    ):
        ModelGraph(name="cyc", nodes=nodes)


def test_disconnected_names_the_parts():
    nodes = (ff("a"), ff("b", "a"), ff("c"), ff("d", "c"))
    with pytest.raises(ConfigError, match=r"\{a, b\}; \{c, d\}.*disconnected \(2 parts\)"):
        ModelGraph(name="two", nodes=nodes)


def test_unknown_and_duplicate_and_self_inputs():
    with pytest.raises(
        ConfigError, match=r"nodes\[b\]\.inputs=\['zz'\]: names nodes that are not in the graph"
    ):
        ModelGraph(name="g", nodes=(ff("a"), ff("b", "zz")))
    with pytest.raises(ConfigError, match=r"\['a'\]: node names must be unique"):
        ModelGraph(name="g", nodes=(ff("a"), ff("a")))
    with pytest.raises(ConfigError, match="repeats an input or names the node itself"):
        ModelGraph(name="g", nodes=(ff("a"), ff("b", "a", "a")))
    with pytest.raises(ConfigError, match=r"Node\(a\)\.flops=-1"):
        Node(name="a", flops=-1)


def test_json_round_trip():
    g = ModelGraph(name="g", nodes=(ff("a"), ff("b", "a")))
    assert ModelGraph.from_dict(g.to_dict()) == g


def test_decompose_diamond_and_fork_join():
    t = decompose(4, [[], [0], [0], [1, 2]])
    assert t.root.describe("abcd") == "(a ; (b | c) ; d)"
    assert t.added_edges == ()
    # two sources, two chains, join, head: sources are split in parallel.
    t = decompose(6, [[], [], [0], [1], [2, 3], [4]])
    assert t.root.describe("abcdef") == "(((a ; c) | (b ; d)) ; e ; f)"


def test_non_series_parallel_graph_gets_conservative_edges():
    # The "N" graph: a -> c, a -> d, b -> d. No series cut and connected.
    t = decompose(4, [[], [], [0], [0, 1]])
    assert t.added_edges  # it had to serialise something
    for u, v in t.added_edges:
        assert u < v  # forward edges only: the topological order stays valid
    names = "abcd"
    assert sorted(t.root.members) == [0, 1, 2, 3]
    assert ";" in t.root.describe(names)


def test_plan_reports_added_edges():
    nodes = (ff("a"), ff("b"), ff("c", "a"), ff("d", "a", "b"))
    plan = plan_pipeline(ModelGraph(name="n", nodes=nodes), ClusterConfig(num_devices=2), batch=8)
    assert plan.added_edges
    assert all(u in "abcd" and v in "abcd" for u, v in plan.added_edges)
    ok = plan_pipeline(
        ModelGraph(name="chain", nodes=(ff("a"), ff("b", "a"))),
        ClusterConfig(num_devices=2),
        batch=8,
    )
    assert ok.added_edges == ()


def _wide(branches, layers=4):
    """A synthetic-branches-shaped graph built directly: many chains into one join."""
    nodes, tails = [], []
    for b in range(branches):
        prev = f"in{b}"
        nodes.append(Node(name=prev, kind="input", output_bytes=4.0))
        for i in range(layers):
            cur = f"b{b}.ff{i}"
            nodes.append(ff(cur, prev))
            prev = cur
        tails.append(prev)
    nodes.append(ff("join", *tails))
    return nodes


def test_large_graph_validates_in_linear_time():
    import time

    nodes = _wide(5000)  # 25,001 nodes, 25,000 edges
    start = time.perf_counter()
    g = ModelGraph(name="wide", nodes=tuple(nodes))
    elapsed = time.perf_counter() - start
    assert len(g.topological_order) == len(nodes)
    assert g.topological_order[-1] == "join"
    # The former duplicate check (list.count per node) took ~10 s here; a linear
    # validation takes well under a second, so 5 s leaves room for a slow machine.
    assert elapsed < 5.0, f"validating {len(nodes)} nodes took {elapsed:.1f}s"


def test_duplicates_in_a_large_graph_are_named():
    nodes = _wide(2000)
    with pytest.raises(
        ConfigError, match=r"ModelGraph.nodes=\['b7.ff2'\]: node names must be unique"
    ):
        ModelGraph(name="wide", nodes=(*nodes, ff("b7.ff2")))
    # Many repeats: the first ten are shown, with the count.
    with pytest.raises(
        ConfigError, match=r"node names must be unique \(2000 names repeat; the first 10 shown\)"
    ) as info:
        ModelGraph(name="wide", nodes=(*nodes, *nodes[:2000]))
    assert len(info.value.value) == 10
