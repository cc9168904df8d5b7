"""Cost model: roofline efficiency curve, measured profiles, communication, validation."""

import itertools

import pytest

from jgraph.core import ConfigError
from jgraph.pipeline import ClusterConfig, CostModel, ModelGraph, Node, PlannerConfig
from jgraph.pipeline._config import V100_FP32_FLOPS, V100_HBM_BYTES_PER_S
from jgraph.pipeline.models import synthetic_branches


def test_roofline_gives_a_micro_batch_efficiency_curve():
    cm = CostModel(synthetic_branches(1, layers=1), ClusterConfig(), PlannerConfig())
    i = cm.index["b0.ff0"]
    per_sample = [(cm.node_times(x)[0][i] / x) for x in (1, 4, 16, 64, 256)]
    assert all(a > b for a, b in itertools.pairwise(per_sample))
    # Large micro-batches reach the compute roof: 2 * 4096^2 FLOPs per sample.
    flops = 2 * 4096 * 4096
    assert per_sample[-1] == pytest.approx(flops / V100_FP32_FLOPS, rel=0.05)
    # Micro-batch 1 is bound by streaming the weights from HBM.
    weights = (4096 * 4096 + 4096) * 4
    assert cm.node_times(1)[0][i] == pytest.approx(
        weights / V100_HBM_BYTES_PER_S + 2 * 5e-6, rel=0.01
    )


def test_measured_profile_replaces_the_roofline():
    node = Node(name="m", measured=((1, 1e-3, 2e-3), (4, 2e-3, 4e-3)))
    cm = CostModel(ModelGraph(name="g", nodes=(node,)), ClusterConfig(), PlannerConfig())
    assert cm.node_times(1) == ([1e-3], [2e-3]) or tuple(map(list, cm.node_times(1))) == (
        [1e-3],
        [2e-3],
    )
    f, b = cm.node_times(2)
    assert f[0] == pytest.approx(1e-3 + 1e-3 / 3)
    assert b[0] == pytest.approx(2e-3 + 2e-3 / 3)
    f, b = cm.node_times(8)  # saturated beyond the largest profiled size
    assert f[0] == pytest.approx(4e-3)
    assert b[0] == pytest.approx(8e-3)


def test_communication_is_affine_and_allreduce_is_a_ring():
    cl = ClusterConfig(
        intra_alpha_s=1e-5,
        intra_bandwidth=1e9,
        inter_alpha_s=2e-5,
        inter_bandwidth=1e8,
        devices_per_node=4,
    )
    cm = CostModel(synthetic_branches(1, layers=1), cl, PlannerConfig())
    assert cm.p2p_s(1e6, False) == pytest.approx(1e-5 + 1e-3)
    assert cm.p2p_s(1e6, True) == pytest.approx(2e-5 + 1e-2)
    assert cm.p2p_s(0, True) == 0.0
    assert cm.allreduce_s(4e6, 4) == pytest.approx(6 * 1e-5 + 1.5 * 4e6 / 1e9)
    assert cm.allreduce_s(4e6, 8) == pytest.approx(14 * 2e-5 + 1.75 * 4e6 / 1e8)
    assert cm.allreduce_s(4e6, 1) == 0.0


def test_stage_memory_counts_in_flight_activations():
    cm = CostModel(synthetic_branches(1, layers=2), ClusterConfig(), PlannerConfig())
    c = cm.stage_cost(["b0.ff0", "b0.ff1"], devices=2, micro_batch=8, batch=64)
    per_sample_act = 2 * (4096 + 4096) * 4
    assert c.activation_bytes_per_mb == 4 * per_sample_act  # 8 / 2 samples per device
    assert c.static_bytes == 4 * 2 * (4096 * 4096 + 4096) * 4  # weights, grads, Adam m and v
    assert c.memory(3) - c.memory(1) == 2 * c.activation_bytes_per_mb


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_devices": 0}, "ClusterConfig.num_devices=0"),
        ({"memory_bytes": 0}, r"ClusterConfig.memory_bytes=0: must be > 0"),
        ({"inter_bandwidth": -1.0}, "ClusterConfig.inter_bandwidth=-1.0"),
        ({"intra_alpha_s": -1e-6}, "ClusterConfig.intra_alpha_s"),
    ],
)
def test_cluster_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ClusterConfig(**kwargs)


def test_planner_config_validation():
    with pytest.raises(ConfigError, match=r"PlannerConfig.schedule='zb'"):
        PlannerConfig(schedule="zb")
    with pytest.raises(ConfigError, match=r"PlannerConfig.micro_batch_sizes=\[4\]"):
        PlannerConfig(micro_batch_sizes=[4])
    with pytest.raises(ConfigError, match=r"PlannerConfig.rerank_top=0"):
        PlannerConfig(rerank_top=0)


@pytest.mark.parametrize("overlap", [False, True])
def test_vectorised_stage_arrays_equal_the_scalar_costs(overlap):
    import numpy as np

    from jgraph.pipeline.models import dlrm

    # DLRM spans two nodes at 8 devices: slow links, multi-node all-reduces.
    cm = CostModel(dlrm(), ClusterConfig(num_devices=8), PlannerConfig(overlap_comm=overlap))
    rng = np.random.default_rng(0)
    sets = rng.random((20, len(cm.nodes))) < 0.3
    sets[0] = True  # the whole graph: no cut at all
    degrees = [1, 2, 4, 8]
    arrays = cm.stage_arrays(sets, micro_batch=16, batch=128, degrees=degrees)
    for r in range(len(sets)):
        ids = np.nonzero(sets[r])[0].tolist()
        for t, d in enumerate(degrees):
            c = cm.stage_cost(ids, devices=d, micro_batch=16, batch=128)
            want = (c.tps, c.static_bytes, c.activation_bytes_per_mb, c.workspace_bytes)
            got = tuple(float(a[r, t]) for a in arrays)
            assert got == pytest.approx(want, rel=1e-12), (r, d)
