"""The pipeline part of `jgraph demo`."""

from jgraph.pipeline import StagePlan, demo


def test_demo_writes_plans_and_charts(tmp_path):
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
