"""The pipeline part of `jgraph demo`."""

import pytest

import jgraph.pipeline._demo as demo_module
from jgraph.pipeline import StagePlan, demo


@pytest.fixture
def no_training(monkeypatch):
    """The planning half alone (the training half has its own test below)."""
    monkeypatch.setattr(demo_module, "_train_demo", lambda out_dir: ([], "training skipped", []))


def test_demo_writes_plans_and_charts(tmp_path, no_training):
    report = demo(tmp_path)
    assert "best sequential-pipeline plan" in report.headline
    assert {p.suffix for p in report.artifacts} == {".json", ".png"}
    for p in report.artifacts:
        assert p.exists()
        assert p.stat().st_size > 0
        if p.suffix == ".json":
            assert StagePlan.from_json(p.read_text()).planner == "graphpipe"
    labels = [label for label, _ in report.rows]
    assert "mmt / graphpipe" in labels
    assert "candle_uno / pipedream" in labels


def test_demo_shows_a_planners_whole_reason(tmp_path, monkeypatch, no_training):
    # Small graphs and a tiny Piper state cap keep this fast and make Piper give up.
    from jgraph.pipeline import PlannerConfig, plan_pipeline
    from jgraph.pipeline.models import candle_uno, mmt

    config = PlannerConfig(piper_max_downsets=5)
    monkeypatch.setattr(demo_module, "mmt", lambda: mmt(branches=2, layers=2))
    monkeypatch.setattr(demo_module, "candle_uno", lambda: candle_uno(branches=2, layers=2))
    monkeypatch.setattr(
        demo_module,
        "plan_pipeline",
        lambda graph, cluster, **kw: plan_pipeline(graph, cluster, config, **kw),
    )
    rows = dict(demo(tmp_path).rows)
    why = rows["mmt / piper"]
    # The whole sentence and the fix, not a prefix cut mid-word.
    assert why == (
        "no plan: the Piper-style planner hit its state cap (graph 'mmt' has more downsets than "
        "that); fix: raise the cap (search time and memory grow with it) or use the graphpipe "
        "planner"
    )
    assert "samples/s (simulated)" in rows["mmt / graphpipe"]
    # Rows follow the planners' order whether or not a planner found a plan.
    assert [label for label in rows if label.startswith("mmt")] == [
        "mmt / graphpipe",
        "mmt / pipedream",
        "mmt / piper",
        "mmt / gpipe",
    ]


@pytest.mark.slow  # profiles, plans and trains mmt-tiny (~1 min on 2 busy cores)
def test_demo_trains_a_real_pipeline_matching_one_device(tmp_path):
    import json

    import numpy as np

    from jgraph.testing import assert_trees_close

    _rows, line, artifacts = demo_module._train_demo(tmp_path)
    record = json.loads(artifacts[0].read_text())
    plan = StagePlan.from_dict(record["plan"])
    assert len(plan.stages) > 1
    assert plan.num_microbatches > 1
    losses = record["losses"]
    assert_trees_close(
        np.float32(losses[0]), np.float32(record["reference_first_loss"]), kind="gradient"
    )
    assert losses[-1] < losses[0]
    assert "trained pipelined" in line
