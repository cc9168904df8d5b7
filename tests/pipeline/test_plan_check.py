"""Plan files are checked on load, and `StagePlan.validate` checks a plan against its graph.

Each corruption below is one fault class a hand-edited, truncated or mismatched plan
file can have; every one must be refused with a `ConfigError` naming the field, and
never read as a different plan or crash with a raw KeyError/TypeError.
"""

import copy
import json
import math

import pytest

from jgraph.core import ConfigError
from jgraph.pipeline import ClusterConfig, ModelGraph, Node, StagePlan, plan_pipeline
from jgraph.pipeline.models import mmt, synthetic_branches

GRAPH = synthetic_branches(3)  # a fork-join stage DAG: stages 0,1,2 -> 3 on 4 devices
CLUSTER = ClusterConfig(num_devices=4, memory_bytes=4e9)


@pytest.fixture(scope="module")
def plan():
    p = plan_pipeline(GRAPH, CLUSTER, batch=64)
    # The corruptions below assume this shape.
    assert len(p.stages) == 4
    assert len(p.edges) == 3
    return p


def _set(path, value):
    def corrupt(d):
        *head, last = path
        for key in head:
            d = d[key]
        d[last] = value

    return corrupt


def _delete(path):
    def corrupt(d):
        *head, last = path
        for key in head:
            d = d[key]
        del d[last]

    return corrupt


def _swap_nodes(d):  # one node in two stages
    d["stages"][1]["nodes"].append(d["stages"][0]["nodes"][0])


def _drop_schedule_op(d):
    d["schedule"]["order"][0] = d["schedule"]["order"][0][:-1]


def _swap_first_ticks(d):  # stage 3 runs F0 at tick 0, before its inputs exist
    ops, mb = d["schedule"]["ops"], d["schedule"]["microbatch"]
    t = next(t for t, row in enumerate(ops) if row[3] == "F")
    ops[0][3], mb[0][3], ops[t][3], mb[t][3] = ops[t][3], mb[t][3], ops[0][3], mb[0][3]


def _backward_first(d):
    order = d["schedule"]["order"][0]
    i, j = order.index("F0"), order.index("B0")
    order[i], order[j] = order[j], order[i]


CORRUPTIONS = {
    # field types and presence
    "devices is a string": (
        _set(["stages", 0, "devices"], "abc"),
        r"stages\[0\]\.devices.*JSON list",
    ),
    "device id is a float": (_set(["stages", 0, "devices"], [0.5]), r"stages\[0\]\.devices\[0\]"),
    "missing stages": (_delete(["stages"]), r"StagePlan\.stages=None: is missing"),
    "missing stage field": (_delete(["stages", 1, "fwd_s"]), r"stages\[1\]\.fwd_s.*missing"),
    "stages not a list": (_set(["stages"], 5), r"StagePlan\.stages.*JSON list"),
    "stage not an object": (_set(["stages", 0], [1, 2]), r"stages\[0\].*JSON object"),
    "schedule not an object": (_set(["schedule"], "x"), r"StagePlan\.schedule.*JSON object"),
    "edge not a pair": (_set(["edges", 0], [0]), r"edges\[0\].*pair of ints"),
    "node name not a string": (_set(["stages", 0, "nodes", 0], 7), r"stages\[0\]\.nodes\[0\]"),
    "batch as a string": (_set(["batch_size"], "64"), r"StagePlan\.batch_size.*must be an int"),
    "bad op token": (_set(["schedule", "order", 0, 0], "X1"), r"order\[0\].*'F<k>' or 'B<k>'"),
    "unknown schedule kind": (_set(["schedule", "kind"], "zb"), r"schedule\.kind.*not one of"),
    # numbers
    "NaN stage time": (_set(["stages", 2, "fwd_s"], math.nan), r"stages\[2\]\.fwd_s.*finite"),
    "infinite iteration": (_set(["iteration_s"], math.inf), r"iteration_s.*finite"),
    "negative memory": (_set(["stages", 0, "memory_bytes"], -1.0), r"memory_bytes.*>= 0"),
    "zero iteration time": (_set(["iteration_s"], 0.0), r"iteration_s.*> 0"),
    "bubble above 1": (_set(["bubble_fraction"], 1.5), r"bubble_fraction.*<= 1"),
    "micro-batch 0": (_set(["micro_batch_size"], 0), r"micro_batch_size.*>= 1"),
    "micro-batch not dividing": (_set(["micro_batch_size"], 48), r"does not divide batch_size 64"),
    "memory over the limit": (
        _set(["stages", 0, "memory_bytes"], 5e9),
        r"stages\[0\]\.memory_bytes.*exceeds memory_limit_bytes",
    ),
    # devices
    "device out of range": (_set(["stages", 3, "devices"], [4]), r"out of range for num_devices=4"),
    "devices overlap": (
        _set(["stages", 1, "devices"], [0]),
        r"stages\[1\]\.devices.*also used by stage 0",
    ),
    "device twice in a stage": (_set(["stages", 3, "devices"], [3, 3]), r"also used by this stage"),
    "no devices": (_set(["stages", 3, "devices"], []), r"stages\[3\]\.devices.*empty"),
    # nodes and stage DAG
    "node in two stages": (_swap_nodes, r"stages\[1\]\.nodes.*also in stage 0"),
    "empty stage": (_set(["stages", 2, "nodes"], []), r"stages\[2\]\.nodes.*empty"),
    "stage index out of place": (
        _set(["stages", 2, "index"], 5),
        r"stages\[2\]\.index.*position 2",
    ),
    "cycle": (_set(["edges"], [[0, 3], [1, 3], [2, 3], [3, 0]]), r"edges\[3\].*cycle"),
    "self edge": (_set(["edges", 0], [3, 3]), r"edges\[0\].*cycle"),
    "edge to a missing stage": (_set(["edges", 0], [0, 9]), r"edges\[0\]=\[0, 9\]: must go from"),
    "repeated edge": (_set(["edges"], [[0, 3], [1, 3], [2, 3], [2, 3]]), r"repeat an edge"),
    # schedule
    "schedule for other edges": (_set(["schedule", "succs", 0], []), r"schedule\.succs.*edges"),
    "micro-batch count": (_set(["schedule", "num_microbatches"], 3), r"num_microbatches.*= 2"),
    "a micro-batch skipped": (_drop_schedule_op, r"order\[0\].*once each"),
    "a stage's order missing": (
        _delete(["schedule", "order", 3]),
        r"schedule\.order=3: must list 4",
    ),
    "backward before forward": (_backward_first, r"backward before its forward"),
    "tick table breaks a dependency": (
        _swap_first_ticks,
        r"schedule\.ops.*stages 0->3, micro-batch 0.*before the stage it depends on",
    ),
    "depth disagrees": (
        _set(["stages", 0, "depth"], 5),
        r"stages\[0\].*disagree with the schedule",
    ),
    # file level
    "old schema": (_set(["schema_version"], 0), r"schema_version=0"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_plan_files_are_refused(plan, name):
    corrupt, match = CORRUPTIONS[name]
    d = copy.deepcopy(plan.to_dict())
    corrupt(d)
    with pytest.raises(ConfigError, match=match):
        StagePlan.from_json(json.dumps(d))


def test_the_untouched_plan_loads_and_validates(plan):
    # The negative check of the table: the same file, uncorrupted, is accepted.
    assert StagePlan.from_json(plan.to_json()).validate(GRAPH, CLUSTER) == plan


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "null", '"plan"'])
def test_a_file_that_is_not_a_plan_object_is_refused(text):
    with pytest.raises(ConfigError, match=r"StagePlan"):
        StagePlan.from_json(text)


@pytest.mark.parametrize("planner", ["graphpipe", "pipedream", "piper", "gpipe"])
@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_every_planner_writes_plans_that_pass_the_checks(planner, schedule):
    from jgraph.pipeline import PlannerConfig

    g, c = mmt(branches=2, layers=2), ClusterConfig(num_devices=8, memory_bytes=8e9)
    p = plan_pipeline(g, c, PlannerConfig(schedule=schedule), batch=32, planner=planner)
    assert StagePlan.from_json(p.to_json()).validate(g, c) == p


def _other_graph(rename=None, extra=False):
    nodes = [
        Node(
            name=(rename.get(n.name, n.name) if rename else n.name),
            inputs=tuple(rename.get(i, i) if rename else i for i in n.inputs),
        )
        for n in GRAPH.nodes
    ]
    if extra:
        nodes.append(Node(name="extra", inputs=(nodes[-1].name,)))
    return ModelGraph(name="other", nodes=tuple(nodes))


def test_validate_refuses_a_plan_for_another_graph(plan):
    first = GRAPH.topological_order[0]
    with pytest.raises(ConfigError, match=r"are not nodes of graph 'other'"):
        plan.validate(_other_graph(rename={first: "renamed"}), CLUSTER)
    with pytest.raises(ConfigError, match=r"\['extra'\].*in no stage"):
        plan.validate(_other_graph(extra=True), CLUSTER)


def test_validate_refuses_a_stage_dag_that_drops_a_graph_edge(plan):
    d = plan.to_dict()
    d["edges"] = [e for e in d["edges"] if e != [2, 3]]
    d["schedule"] = plan.schedule.to_dict()
    d["schedule"]["succs"][2] = []
    from jgraph.pipeline import make_schedule

    succs = [[j for i, j in d["edges"] if i == s] for s in range(4)]
    sched = make_schedule("1f1b", succs, plan.num_microbatches)
    d["schedule"] = sched.to_dict()
    for i, st in enumerate(d["stages"]):
        st["depth"], st["peak_in_flight"] = sched.depth[i], sched.peak_in_flight()[i]
    broken = StagePlan.from_json(json.dumps(d))  # consistent by itself...
    with pytest.raises(ConfigError, match=r"StagePlan\.edges.*does not carry this graph edge"):
        broken.validate(GRAPH, CLUSTER)  # ...but not with the graph


def test_validate_refuses_another_cluster(plan):
    with pytest.raises(ConfigError, match=r"num_devices.*ClusterConfig\.num_devices=8"):
        plan.validate(GRAPH, ClusterConfig(num_devices=8, memory_bytes=4e9))
    with pytest.raises(ConfigError, match=r"memory_limit_bytes.*ClusterConfig\.memory_bytes"):
        plan.validate(GRAPH, ClusterConfig(num_devices=4, memory_bytes=1e9))
    # More memory than planned for is fine.
    assert plan.validate(GRAPH, ClusterConfig(num_devices=4, memory_bytes=8e9)) is plan
