"""plan_pipeline: planners, errors that name the fix, JSON round trip."""

import dataclasses

import pytest

from jgraph.core import ConfigError
from jgraph.pipeline import ClusterConfig, NoPlanError, PlannerConfig, StagePlan, plan_pipeline
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
