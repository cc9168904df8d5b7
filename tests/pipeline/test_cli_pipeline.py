"""`jgraph pipeline plan`: output files, one-line errors with exit status 2."""

import json
import re

import pytest

from jgraph import cli
from jgraph.core import ConfigError
from jgraph.pipeline import StagePlan


def test_plan_writes_json_and_png(tmp_path, capsys):
    argv = ["pipeline", "plan", "--model", "synthetic", "--branches", "2", "--devices", "4",
            "--batch", "32", "--memory", "16GB", "--out", str(tmp_path), "--compare"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "samples/s (simulated)" in out
    assert "bubble" in out
    assert "GB/device" in out
    plan = StagePlan.from_json((tmp_path / "synthetic2_graphpipe_4dev.json").read_text())
    assert plan.planner == "graphpipe"
    assert plan.num_devices == 4
    assert (tmp_path / "synthetic2_graphpipe_4dev.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("pipedream", "piper", "gpipe"):
        assert name in out
    assert (
        json.loads((tmp_path / "synthetic2_graphpipe_4dev.json").read_text())["schema_version"] == 1
    )


def test_plan_is_the_default_action(tmp_path):
    argv = ["pipeline", "--model", "synthetic", "--branches", "2", "--devices", "2", "--batch", "8",
            "--out", str(tmp_path), "--no-png", "--planner", "pipedream"]  # fmt: skip
    assert cli.main(argv) == 0
    assert (tmp_path / "synthetic2_pipedream_2dev.json").exists()
    assert not (tmp_path / "synthetic2_pipedream_2dev.png").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--memory", "16XB"], "'16XB' is not a memory size"),
        (["--memory", "0GB"], "must be > 0"),
        (["--planner", "alpa"], "invalid choice: 'alpa'"),
        (["--memory", "0.01GB"], "the smallest per-device memory that fits is"),
        (["--micro-batch", "3"], "must divide the mini-batch size 8"),
    ],
)
def test_errors_are_one_line_exit_2(argv, expected, capsys, tmp_path):
    base = ["pipeline", "plan", "--model", "synthetic", "--branches", "2", "--devices", "2",
            "--batch", "8", "--out", str(tmp_path), "--no-png"]  # fmt: skip
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1


def _pipeline_choices():
    """{option: choices} of `jgraph pipeline`, read from the real parser."""
    import argparse

    parser = cli._build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        a.option_strings[0]: tuple(a.choices)
        for a in sub.choices["pipeline"]._actions
        if a.option_strings and a.choices is not None
    }


def test_cli_choices_are_the_library_lists():
    from jgraph.pipeline.models import MODEL_NAMES
    from jgraph.pipeline.planners import PLANNER_NAMES, SCHEDULE_KINDS

    choices = _pipeline_choices()
    assert choices["--model"] == MODEL_NAMES
    assert choices["--planner"] == PLANNER_NAMES
    assert choices["--schedule"] == SCHEDULE_KINDS


def test_every_listed_model_builds():
    from jgraph.pipeline import ModelGraph
    from jgraph.pipeline.models import MODEL_NAMES, PAPER_MODELS, paper_model

    assert set(PAPER_MODELS) <= set(MODEL_NAMES)
    for name in MODEL_NAMES:
        graph = paper_model(name, branches=3)
        assert isinstance(graph, ModelGraph)
        assert len(graph.nodes) > 2
    assert len(paper_model("synthetic", branches=3).nodes) < len(
        paper_model("synthetic", branches=5).nodes
    )
    with pytest.raises(ConfigError, match=r"paper_model\.name='resnet': not one of 'mmt'"):
        paper_model("resnet")


def test_every_listed_planner_and_schedule_plans():
    from jgraph.pipeline import ClusterConfig, PlannerConfig, plan_pipeline
    from jgraph.pipeline._planners import _REGISTRY
    from jgraph.pipeline.models import synthetic_branches
    from jgraph.pipeline.planners import PLANNER_NAMES, SCHEDULE_KINDS

    assert tuple(_REGISTRY) == PLANNER_NAMES
    graph = synthetic_branches(2, layers=2)
    for schedule in SCHEDULE_KINDS:
        for name in PLANNER_NAMES:
            plan = plan_pipeline(
                graph,
                ClusterConfig(num_devices=4),
                PlannerConfig(schedule=schedule),
                batch=16,
                planner=name,
            )
            assert plan.planner == name
            # The GPipe baseline always runs the GPipe schedule.
            assert plan.schedule.kind == ("gpipe" if name == "gpipe" else schedule)


def test_compare_prints_whole_reasons(tmp_path, capsys):
    argv = ["pipeline", "plan", "--model", "synthetic", "--branches", "3", "--devices", "4",
            "--batch", "16", "--out", str(tmp_path), "--no-png", "--compare",
            "--piper-max-downsets", "5"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "[1] piper: no plan: the Piper-style planner hit its state cap (graph 'synthetic3' has "
        "more downsets than that); fix: raise the cap (search time and memory grow with it) or "
        "use the graphpipe planner\n"
    ) in out


@pytest.mark.parametrize(
    ("argv", "fix"),
    [
        # One node alone needs ~0.54 GB: only more memory helps.
        (["--memory", "0.2GB"], r"fix: use more memory per device, --memory [0-9.]+GB, or a smaller model$"),
        # Every node fits in 1 GB, the whole model not on one device.
        (["--memory", "1GB", "--devices", "1"], r"fix: use --memory [0-9.]+GB, more devices \(--devices\), or a smaller batch \(--batch\)$"),
    ],
)  # fmt: skip
def test_no_plan_advice_names_this_commands_flags(argv, fix, capsys, tmp_path):
    # The library's advice names ClusterConfig fields; the CLI shows its flags.
    base = ["pipeline", "--model", "synthetic", "--branches", "2", "--batch", "8",
            "--out", str(tmp_path), "--no-png"]  # fmt: skip
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(fix, err), err
    assert "fix: " in err
    assert "ClusterConfig" not in err.split("fix: ")[1]
