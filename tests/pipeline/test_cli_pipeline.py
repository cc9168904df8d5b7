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
    from jgraph.pipeline.models import ALL_MODEL_NAMES, MODEL_NAMES, MODULE_MODEL_NAMES
    from jgraph.pipeline.planners import PLANNER_NAMES, SCHEDULE_KINDS

    choices = _pipeline_choices()
    assert choices["--model"] == ALL_MODEL_NAMES == MODEL_NAMES + MODULE_MODEL_NAMES
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


# -- a user's own graph: --graph FILE (ModelGraph JSON) --------------------------------

_GB = 1e9


def _user_graph(name="my model/v2"):
    """A hand-built two-branch DAG with costs, as the README shows."""
    from jgraph.pipeline import ModelGraph, Node

    def layer(n, inputs, gflops):
        return Node(name=n, inputs=inputs, flops=gflops * _GB, bwd_flops=2 * gflops * _GB,
                    io_bytes=4e5, weight_bytes=2e7, param_bytes=2e7, activation_bytes=2e5,
                    output_bytes=1e5)  # fmt: skip

    nodes = [layer("embed", (), 1.0)]
    for b in ("text", "image"):
        nodes += [layer(f"{b}0", ("embed",), 4.0), layer(f"{b}1", (f"{b}0",), 4.0)]
    nodes.append(layer("head", ("text1", "image1"), 1.0))
    return ModelGraph(name=name, nodes=tuple(nodes))


def test_plan_a_users_graph_file(tmp_path, capsys):
    from jgraph.pipeline import ClusterConfig

    graph = _user_graph()
    path = tmp_path / "g.json"
    path.write_text(graph.to_json())
    argv = ["pipeline", "plan", "--graph", str(path), "--devices", "4", "--batch", "32",
            "--memory", "16GB", "--out", str(tmp_path / "out"), "--no-png"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "plan for my model/v2 on 4" in capsys.readouterr().out
    (written,) = (tmp_path / "out").glob("*.json")
    assert written.name == "my_model_v2_graphpipe_4dev.json"  # the name's '/' is not a folder
    plan = StagePlan.from_json(written.read_text())
    assert plan.validate(graph, ClusterConfig(num_devices=4, memory_bytes=16e9)) is plan
    assert sorted(plan.node_to_stage) == sorted(graph.topological_order)


def _graph_json(**change):
    d = _user_graph().to_dict()
    for key, value in change.items():
        node, field = key.split("__")
        (n,) = [n for n in d["nodes"] if n["name"] == node]
        n[field] = value
    return json.dumps(d)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "is not JSON"),
        ('{"nodes": []}', "ModelGraph.name"),
        ('{"name": "x", "nodes": "abc"}', "must be a list of nodes"),
        (_graph_json(text0__inputs="embed"), r"inputs.*must be a list of node names"),
        (_graph_json(text0__inputs=["nope"]), "names nodes that are not in the graph"),
        (_graph_json(embed__inputs=["head"]), "cycle"),
        (_graph_json(head__flopz=1), r"\['flopz'\]: are not Node fields"),
        (_graph_json(head__flops=-1), r"Node\(head\)\.flops"),
        (_graph_json(head__kernels=-2), r"Node\(head\)\.kernels"),
        (_graph_json(head__measured=[[1, 2]]), r"Node\(head\)\.measured"),
    ],
)
def test_a_bad_graph_file_is_one_line_exit_2(tmp_path, capsys, text, match):
    path = tmp_path / "g.json"
    path.write_text(text)
    assert cli.main(["pipeline", "--graph", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--graph" in err
    assert re.search(match, err), err


@pytest.mark.parametrize(
    "argv",
    [[], ["--model", "mmt", "--graph", "g.json"], ["--graph", "missing.json"], ["--graph", "."]],
)
def test_exactly_one_graph_source(tmp_path, capsys, argv):
    assert cli.main(["pipeline", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--model" in err or "--graph" in err


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
