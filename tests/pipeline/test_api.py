"""plan_pipeline: planners, errors that name the fix, JSON round trip."""

import dataclasses

import pytest

from jgraph.core import ConfigError
from jgraph.pipeline import (
    ClusterConfig,
    ModelGraph,
    Node,
    NoPlanError,
    PlannerConfig,
    StagePlan,
    plan_pipeline,
)
from jgraph.pipeline._api import smallest_fitting_memory
from jgraph.pipeline.models import mmt, synthetic_branches


def test_graphpipe_runs_branches_concurrently():
    g = synthetic_branches(4, layers=2, hidden=1024)
    gp = plan_pipeline(g, ClusterConfig(num_devices=8), batch=64)
    pd = plan_pipeline(g, ClusterConfig(num_devices=8), batch=64, planner="pipedream")
    # Sequential plans are chains: depth = number of stages.
    assert pd.depth == len(pd.stages)
    # They run as a chain; data may still skip stages (those edges carry transfers).
    assert {(i, i + 1) for i in range(len(pd.stages) - 1)} <= set(pd.edges)
    # GraphPipe's stage graph is shallower than its stage count when it uses branches.
    assert gp.depth < len(gp.stages)
    assert gp.throughput > pd.throughput
    for p in (gp, pd):
        assert sorted(n for s in p.stages for n in s.nodes) == sorted(g.topological_order)
        assert p.max_memory_bytes <= p.memory_limit_bytes
        assert p.num_microbatches * p.micro_batch_size == 64


def test_json_round_trip_is_exact():
    plan = plan_pipeline(mmt(branches=2, layers=2), ClusterConfig(num_devices=4), batch=32)
    again = StagePlan.from_json(plan.to_json())
    assert again == plan
    assert again.simulation().iteration_s == plan.iteration_s
    d = plan.to_dict()
    d["schema_version"] = 99
    with pytest.raises(ConfigError, match=r"StagePlan.schema_version=99"):
        StagePlan.from_dict(d)


def test_not_fitting_names_the_smallest_memory_that_fits():
    g = mmt(branches=2, layers=2)
    cluster = ClusterConfig(num_devices=2, memory_bytes=0.3e9)
    with pytest.raises(
        NoPlanError, match=r"smallest per-device memory that fits is ([0-9.]+) GB"
    ) as info:
        plan_pipeline(g, cluster, batch=32)
    need = smallest_fitting_memory(g, cluster, PlannerConfig(), batch=32)
    assert f"{need / 1e9:.3g} GB" in str(info.value)
    # The named size works, and 5% less does not.
    plan = plan_pipeline(g, dataclasses.replace(cluster, memory_bytes=need), batch=32)
    assert plan.max_memory_bytes <= need
    with pytest.raises(NoPlanError, match="does not fit"):
        plan_pipeline(g, dataclasses.replace(cluster, memory_bytes=need * 0.95), batch=32)


def test_piper_reports_no_plan_on_wide_graphs():
    g = synthetic_branches(4, layers=4)
    cfg = PlannerConfig(piper_max_downsets=100)
    with pytest.raises(NoPlanError, match=r"piper_max_downsets=100: no plan: .*state cap"):
        plan_pipeline(g, ClusterConfig(num_devices=8), cfg, batch=32, planner="piper")
    small = synthetic_branches(2, layers=2)
    plan = plan_pipeline(small, ClusterConfig(num_devices=4), cfg, batch=32, planner="piper")
    assert plan.depth == len(plan.stages)


def test_piper_space_contains_pipedream_space():
    g = synthetic_branches(2, layers=3, hidden=2048)
    for d in (2, 4):
        cfg = PlannerConfig(micro_batch_sizes=(8,))
        pi = plan_pipeline(g, ClusterConfig(num_devices=d), cfg, batch=32, planner="piper")
        pd = plan_pipeline(g, ClusterConfig(num_devices=d), cfg, batch=32, planner="pipedream")
        assert (
            pi.bottleneck_tps <= pd.bottleneck_tps * (1 + 1e-9) or pi.iteration_s <= pd.iteration_s
        )


def test_gpipe_baseline_uses_the_gpipe_schedule():
    plan = plan_pipeline(
        synthetic_branches(2, layers=2), ClusterConfig(num_devices=4), batch=32, planner="gpipe"
    )
    assert plan.schedule.kind == "gpipe"
    assert all(s.peak_in_flight == plan.num_microbatches for s in plan.stages)


def test_bad_arguments():
    g = synthetic_branches(2, layers=1)
    with pytest.raises(ConfigError, match=r"plan_pipeline.planner='alpa'"):
        plan_pipeline(g, ClusterConfig(), batch=8, planner="alpa")
    with pytest.raises(ConfigError, match=r"plan_pipeline.batch=0"):
        plan_pipeline(g, ClusterConfig(), batch=0)
    with pytest.raises(
        ConfigError, match=r"micro_batch_sizes=\[3\]: must divide the mini-batch size 8"
    ):
        plan_pipeline(g, ClusterConfig(), PlannerConfig(micro_batch_sizes=(3,)), batch=8)


@pytest.mark.parametrize("planner", ["graphpipe", "pipedream"])
def test_lower_bound_pruning_keeps_the_best_plan(monkeypatch, planner):
    import jgraph.pipeline._plan as plan_module
    from jgraph.pipeline.models import sequential_transformer

    graph, cluster = sequential_transformer(layers=8), ClusterConfig(num_devices=8)
    pruned = plan_pipeline(graph, cluster, batch=64, planner=planner)
    calls = []

    def no_bound(*args, **kwargs):
        calls.append(1)
        return 0.0

    monkeypatch.setattr(plan_module, "iteration_lower_bound", no_bound)
    full = plan_pipeline(graph, cluster, batch=64, planner=planner)
    assert calls, "the bound was never consulted"
    assert pruned.iteration_s == full.iteration_s
    assert [s.nodes for s in pruned.stages] == [s.nodes for s in full.stages]


def _three(huge_params: float = 1e6) -> ModelGraph:
    """a -> mid -> c; each node alone needs 4 * params + act + 2 * out bytes (4.12 MB at 1e6)."""

    def op(name, *inputs, params=1e6):
        return Node(name=name, inputs=inputs, param_bytes=params, activation_bytes=1e5,
                    output_bytes=1e4, measured=((1, 1e-3, 2e-3), (8, 4e-3, 8e-3)))  # fmt: skip

    return ModelGraph(
        name="three", nodes=(op("a"), op("mid", "a", params=huge_params), op("c", "mid"))
    )


def test_one_node_too_big_advises_memory_not_devices_or_batch():
    # "mid" alone: 4 x 1e9 bytes of weights + optimizer state, plus one sample's
    # activations (1e5) and workspace (2 x 1e4). Data parallelism does not shard
    # weights, so no number of devices and no batch size makes it fit in 1 GB.
    least = 4 * 1e9 + 1e5 + 2 * 1e4
    for devices, batch in ((8, 64), (64, 1)):
        with pytest.raises(NoPlanError) as info:
            plan_pipeline(
                _three(huge_params=1e9), ClusterConfig(num_devices=devices, memory_bytes=1e9),
                batch=batch,
            )  # fmt: skip
        text = str(info.value)
        assert "node 'mid'" in text
        assert f"{least:.0f} bytes" in text
        assert "4 GB" in text
        assert "above the 1 GB per device" in text
        assert "more memory per device" in info.value.fix
        assert "ClusterConfig.memory_bytes" in info.value.fix
        assert "devices" not in text.lower()
        assert "batch" not in text.lower()
    # Negative check: with room for "mid" the same graph plans.
    plan = plan_pipeline(
        _three(huge_params=1e9), ClusterConfig(num_devices=8, memory_bytes=5e9), batch=64
    )
    assert plan.max_memory_bytes <= 5e9


def test_too_few_devices_advises_devices():
    # Each node fits alone (4.12 MB of 10 MB), all three on one device do not.
    cluster = ClusterConfig(num_devices=1, memory_bytes=1e7)
    with pytest.raises(NoPlanError, match="does not fit on 1 device with") as info:
        plan_pipeline(_three(), cluster, batch=8)
    assert "more devices (ClusterConfig.num_devices)" in info.value.fix
    assert "ClusterConfig.memory_bytes >= " in info.value.fix
    assert "smaller batch (batch=)" in info.value.fix
    assert "node " not in str(info.value)
    # The advice works: three devices give each node its own stage.
    plan = plan_pipeline(_three(), dataclasses.replace(cluster, num_devices=3), batch=8)
    assert plan.max_memory_bytes <= 1e7
    # Only micro-batch sizes the caller chose are named.
    cfg = PlannerConfig(micro_batch_sizes=(8,))
    with pytest.raises(NoPlanError, match=r"or smaller PlannerConfig\.micro_batch_sizes"):
        plan_pipeline(_three(), cluster, cfg, batch=8)


def _library_errors():
    yield lambda: plan_pipeline(
        _three(huge_params=1e9), ClusterConfig(num_devices=8, memory_bytes=1e9), batch=8
    )
    yield lambda: plan_pipeline(_three(), ClusterConfig(num_devices=1, memory_bytes=1e7), batch=8)
    yield lambda: plan_pipeline(
        _three(), ClusterConfig(num_devices=1, memory_bytes=1e7),
        PlannerConfig(micro_batch_sizes=(8,)), batch=8, planner="gpipe",
    )  # fmt: skip
    yield lambda: plan_pipeline(
        _three(), ClusterConfig(), PlannerConfig(micro_batch_sizes=(3,)), batch=8
    )
    yield lambda: plan_pipeline(
        synthetic_branches(4, layers=4), ClusterConfig(num_devices=8),
        PlannerConfig(piper_max_downsets=100), batch=32, planner="piper",
    )  # fmt: skip
    for planner in ("pipedream", "piper"):
        yield lambda planner=planner: plan_pipeline(
            _three(), ClusterConfig(num_devices=1, memory_bytes=1e7), batch=8, planner=planner
        )


def test_library_errors_name_no_cli_flags():
    seen = 0
    for call in _library_errors():
        with pytest.raises(NoPlanError) as info:
            call()
        assert "--" not in str(info.value), str(info.value)
        seen += 1
    assert seen == 7


def test_library_sources_name_no_cli_flags_in_strings():
    # Error texts are built from string literals: none in jgraph/pipeline names a
    # flag (docstrings may mention the CLI).
    import ast
    import pathlib
    import re

    import jgraph.pipeline

    root = pathlib.Path(jgraph.pipeline.__file__).parent
    found = []
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        }
        for n in ast.walk(tree):
            if (
                isinstance(n, ast.Constant)
                and isinstance(n.value, str)
                and id(n) not in docstrings
                and re.search(r"--[a-z]", n.value)
            ):
                found.append(f"{path.name}:{n.lineno}: {n.value!r}")
    assert found == []
