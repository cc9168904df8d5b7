"""Cost profiles: JSON validation, interpolation rules, applying curves, the cost model using them."""

import copy
import dataclasses
import json
import math

import pytest

from jgraph.core import ConfigError
from jgraph.pipeline import ClusterConfig, CostModel, ModelGraph, Node, PlannerConfig
from jgraph.pipeline._cost import _roofline
from jgraph.pipeline._curve import PROFILE_FORMAT, CostProfile, EfficiencyCurve, apply_profile
from jgraph.pipeline._measured_shape import QUOTED_H200_LAYER_S_PER_SAMPLE, measured_shape_profile
from jgraph.pipeline._models import mmt, transformer_layer


def ff_curve(**kw) -> EfficiencyCurve:
    args = {
        "match": "kind",
        "key": "ff",
        "micro_batches": (1, 4, 16),
        "fwd_s_per_sample": (8e-5, 2e-5, 1e-5),
        "bwd_s_per_sample": (1.6e-4, 4e-5, 2e-5),
        "ref_flops": 1e6,
        "block": "test",
    }
    return EfficiencyCurve(**{**args, **kw})


def profile(*curves: EfficiencyCurve, **kw) -> CostProfile:
    args = {
        "device": "Test Card",
        "source": "measured",
        "jax_version": "0.10.2",
        "date": "2026-12-07",
        "curves": curves or (ff_curve(),),
        "note": "unit test",
    }
    return CostProfile(**{**args, **kw})


def test_json_round_trip_and_file(tmp_path):
    p = profile(ff_curve(), ff_curve(match="node", key="head"))
    d = json.loads(p.to_json())
    assert d["format"] == PROFILE_FORMAT
    assert d["curves"][1]["key"] == "head"
    assert CostProfile.from_json(p.to_json()) == p
    p.save(tmp_path / "p.json")
    assert CostProfile.load(tmp_path / "p.json") == p


GOOD = json.loads(profile().to_json())


def mutate(path, value):
    d = copy.deepcopy(GOOD)
    *parents, last = path
    target = d
    for k in parents:
        target = target[k]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("format",), "jgraph.pipeline.cost_profile/0", "CostProfile.format"),
        (("format",), KeyError, "CostProfile.format"),
        (("device",), KeyError, "CostProfile"),  # listed as missing
        (("device",), "", "CostProfile.device"),
        (("source",), "guessed", "CostProfile.source"),
        (("date",), "yesterday", "CostProfile.date"),
        (("curves",), [], "CostProfile.curves"),
        (("curves",), {"ff": {}}, "CostProfile.curves"),
        (("colour",), "blue", "CostProfile"),
        (("curves", 0, "match"), "op", "CostProfile.curves[0]('ff').match"),
        (("curves", 0, "key"), "", "CostProfile.curves[0]('').key"),
        (("curves", 0, "micro_batches"), [4, 1, 16], "CostProfile.curves[0]('ff').micro_batches"),
        (("curves", 0, "micro_batches"), [0, 4, 16], "CostProfile.curves[0]('ff').micro_batches"),
        (("curves", 0, "micro_batches"), [1.0, 4, 16], "CostProfile.curves[0]('ff').micro_batches"),
        (("curves", 0, "micro_batches"), "1,4,16", "CostProfile.curves[0].micro_batches"),
        (("curves", 0, "fwd_s_per_sample"), [1e-5], "CostProfile.curves[0]('ff').fwd_s_per_sample"),
        (
            ("curves", 0, "bwd_s_per_sample", 1),
            -1.0,
            "CostProfile.curves[0]('ff').bwd_s_per_sample[1]",
        ),
        (
            ("curves", 0, "bwd_s_per_sample", 1),
            "fast",
            "CostProfile.curves[0]('ff').bwd_s_per_sample[1]",
        ),
        (("curves", 0, "ref_flops"), -1, "CostProfile.curves[0]('ff').ref_flops"),
        (("curves", 0, "unit"), "us", "CostProfile.curves[0]"),
        (("curves", 0, "key"), KeyError, "CostProfile.curves[0]"),
        (("curves", 0), "ff", "CostProfile.curves[0]"),
    ],
)
def test_bad_fields_are_refused_by_name(path, value, field):
    with pytest.raises(ConfigError) as err:
        CostProfile.from_dict(mutate(path, value))
    assert err.value.field.startswith(field), err.value.field
    # Negative check: the unmutated profile loads.
    assert CostProfile.from_dict(copy.deepcopy(GOOD)) == profile()


def test_profile_level_checks():
    with pytest.raises(ConfigError, match="repeats a"):
        profile(ff_curve(), ff_curve())
    with pytest.raises(ConfigError, match="must say what it was derived from"):
        profile(source="derived", note="")
    with pytest.raises(ConfigError, match="is not JSON"):
        CostProfile.from_json("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        CostProfile.load("/nonexistent/profile.json")


def test_per_sample_is_log_log_between_points_and_held_beyond():
    c = ff_curve()
    assert c.per_sample(4) == pytest.approx((2e-5, 4e-5))  # at a point: exact
    assert c.per_sample(2) == pytest.approx((4e-5, 8e-5))  # geometric mean of 1 and 4
    f8, _ = c.per_sample(8)
    assert f8 == pytest.approx(math.sqrt(2e-5 * 1e-5))
    assert c.per_sample(64) == pytest.approx((1e-5, 2e-5))  # saturated: per sample held
    # Below the smallest point the per-call time is held.
    low = ff_curve(micro_batches=(2, 4, 16))
    assert low.per_sample(1)[0] == pytest.approx(2 * low.fwd_s_per_sample[0])
    # A zero end has no logarithm: linear there.
    z = ff_curve(bwd_s_per_sample=(0.0, 4e-5, 2e-5))
    assert z.per_sample(2)[1] == pytest.approx(4e-5 / 2)  # halfway in log(b)


def test_rows_cover_the_points_and_the_powers_of_two_between():
    c = ff_curve(micro_batches=(1, 6, 64), fwd_s_per_sample=(3, 2, 1), bwd_s_per_sample=(3, 2, 1))
    assert [r[0] for r in c.rows()] == [1, 2, 4, 6, 8, 16, 32, 64]
    b, f, g = c.rows(factor=2.0)[-1]
    assert (b, f, g) == (64, 64 * 1 * 2.0, 64 * 1 * 2.0)  # per call = per sample x b x factor


def test_apply_profile_scales_kind_curves_by_flops_and_prefers_node_curves():
    nodes = (
        Node(name="in0", kind="input", output_bytes=4.0),
        transformer_layer("small", "in0", hidden=512),
        transformer_layer("big", "small", hidden=1024),
        transformer_layer("pinned", "big", hidden=1024),
    )
    g = ModelGraph(name="chain", nodes=nodes)
    ref = transformer_layer("ref", "in")
    curve = EfficiencyCurve(
        match="kind", key="transformer_layer", micro_batches=(1, 64),
        fwd_s_per_sample=(1e-3, 1e-4), bwd_s_per_sample=(2e-3, 2e-4), ref_flops=ref.flops,
    )  # fmt: skip
    pinned = EfficiencyCurve(
        match="node", key="pinned", micro_batches=(1,), fwd_s_per_sample=(7e-3,),
        bwd_s_per_sample=(7e-3,),
    )  # fmt: skip
    out = apply_profile(g, profile(curve, pinned))
    small, big = out.by_name["small"], out.by_name["big"]
    assert big.measured[0] == pytest.approx((1, 1e-3, 2e-3))  # same size as the reference
    ratio = g.by_name["small"].flops / ref.flops
    assert 0.2 < ratio < 0.5
    assert small.measured[0] == pytest.approx((1, 1e-3 * ratio, 2e-3 * ratio))
    assert out.by_name["pinned"].measured == ((1, 7e-3, 7e-3),)  # node curve wins
    assert out.by_name["in0"] == g.by_name["in0"]  # no curve: unchanged
    unscaled = apply_profile(g, profile(curve), scale="none")
    assert unscaled.by_name["small"].measured[0] == pytest.approx((1, 1e-3, 2e-3))
    assert g.by_name["big"].measured == ()  # the input graph is not changed
    with pytest.raises(ConfigError, match="names a node that is not in graph"):
        apply_profile(g, profile(ff_curve(match="node", key="nope")))
    with pytest.raises(ConfigError, match=r"apply_profile\.scale"):
        apply_profile(g, profile(curve), scale="bytes")  # type: ignore[arg-type]


def node_ps(graph: ModelGraph, name: str, b: int) -> float:
    cm = CostModel(graph, ClusterConfig(num_devices=4), PlannerConfig())
    f, g = cm.node_times(b)
    i = cm.index[name]
    return (f[i] + g[i]) / b


def test_cost_model_follows_the_measured_shape_curve():
    base = mmt(branches=1, layers=1)
    shaped = apply_profile(base, measured_shape_profile())
    (b1, t1), (b64, t64) = QUOTED_H200_LAYER_S_PER_SAMPLE
    layer = "b0.layer0"
    # Per-sample time at 1 vs 64 follows the quoted measurement's ratio (8.05x) ...
    assert node_ps(shaped, layer, b1) / node_ps(shaped, layer, b64) == pytest.approx(t1 / t64)
    # ... anchored on the roofline at 64, log-log between ...
    ref = transformer_layer("r", "in")
    roof64 = sum(_roofline(ref, 64, ClusterConfig())) / 64
    assert node_ps(shaped, layer, 64) == pytest.approx(roof64)
    assert node_ps(shaped, layer, 8) == pytest.approx(roof64 * (t1 / t64) ** 0.5)
    # ... and held per sample beyond the last point.
    assert node_ps(shaped, layer, 256) == pytest.approx(roof64)
    # Negative check: without the curve the cost model is the roofline (ratio ~1.14, not 8).
    roof_ratio = node_ps(base, layer, 1) / node_ps(base, layer, 64)
    assert roof_ratio == pytest.approx(1462.3 / 1285.1, rel=1e-3)
    # The FF head has no curve: identical under both.
    assert node_ps(shaped, "head", 4) == node_ps(base, "head", 4)
    # Stage TPS (the planner's quantity) moves with it.
    cm_s = CostModel(shaped, ClusterConfig(num_devices=4), PlannerConfig())
    cm_r = CostModel(base, ClusterConfig(num_devices=4), PlannerConfig())
    order = shaped.topological_order
    tps = {
        (name, mb): cm.stage_cost(order, devices=1, micro_batch=mb, batch=64).tps
        for name, cm in (("shaped", cm_s), ("roof", cm_r))
        for mb in (1, 64)
    }
    assert tps["shaped", 1] / tps["shaped", 64] > 5 > 1.2 > tps["roof", 1] / tps["roof", 64]


def test_measured_shape_profile_is_labelled_derived_and_follows_the_cluster():
    p = measured_shape_profile()
    assert p.source == "derived"
    assert "DERIVED, not measured" in p.note
    assert "1151" in p.note
    assert "143" in p.note
    assert [c.key for c in p.curves] == ["transformer_layer"]
    fast = ClusterConfig(peak_flops=2 * ClusterConfig().peak_flops)
    ratio = sum(p.curves[0].per_sample(64)) / sum(
        measured_shape_profile(fast).curves[0].per_sample(64)
    )
    assert ratio == pytest.approx(
        2.0, rel=0.05
    )  # compute-bound at 64: twice the peak, half the time


def test_from_graph_saves_profiled_nodes_for_reapplying():
    measured = ((1, 2e-3, 4e-3), (4, 4e-3, 8e-3))
    base = mmt(branches=1, layers=2)
    timed = ModelGraph(
        name=base.name,
        nodes=tuple(
            dataclasses.replace(n, measured=measured) if n.name == "b0.layer1" else n
            for n in base.nodes
        ),
    )
    p = CostProfile.from_graph(timed, device="cpu", jax_version="0.10.2", date="2026-12-07")
    assert [(c.match, c.key) for c in p.curves] == [("node", "b0.layer1")]
    again = apply_profile(base, CostProfile.from_json(p.to_json()))
    rows = {b: (f, g) for b, f, g in again.by_name["b0.layer1"].measured}
    assert rows[1] == pytest.approx((2e-3, 4e-3))
    assert rows[4] == pytest.approx((4e-3, 8e-3))
    assert rows[2] == pytest.approx((2 * math.sqrt(2e-3 * 1e-3), 2 * math.sqrt(4e-3 * 2e-3)))
    assert again.by_name["b0.layer0"].measured == ()
