"""Analytic paper models: structure and sizes from GraphPipe Appendix A.2."""

import pytest

from jgraph.core import ConfigError
from jgraph.pipeline.models import candle_uno, dlrm, mmt, paper_model, sequential_transformer


def params(g):
    return sum(n.param_bytes for n in g.nodes) / 4


def test_mmt_structure_and_size():
    g = mmt()
    layers = [n for n in g.nodes if n.kind == "transformer_layer"]
    assert len(layers) == 32
    # 4 h^2 + 2 h f + biases and layer norms, h = 1024, f = 4096: ~12.6M per layer.
    assert layers[0].param_bytes / 4 == pytest.approx(12.6e6, rel=0.01)
    assert g.by_name["concat"].inputs == ("b0.layer7", "b1.layer7", "b2.layer7", "b3.layer7")


def test_dlrm_and_candle():
    d = dlrm()
    assert sum(n.kind == "embedding_bag" for n in d.nodes) == 7
    assert sum(n.kind == "ff" for n in d.nodes) == 7 * 4 + 3
    assert d.by_name["emb0"].param_bytes == 1_000_000 * 64 * 4
    assert d.by_name["emb0"].weight_bytes == 0  # a gather reads only the bag's rows
    c = candle_uno()
    assert sum(n.kind == "ff" for n in c.nodes) == 7 * 4 + 2
    assert params(c) == 28 * 4096 * 4097 + (7 * 4096 * 4096 + 4096) + 4096 * 4097


def test_sequential_transformer_matches_mmt_layers():
    s, m = sequential_transformer(), mmt()
    assert s.by_name["layer0"].signature() == m.by_name["b0.layer0"].signature()
    assert len(s.topological_order) == 34


def test_paper_model_names():
    assert paper_model("synthetic", branches=3).name == "synthetic3"
    assert paper_model("case_study").name == "case_study"
    with pytest.raises(ConfigError, match=r"paper_model.name='resnet'"):
        paper_model("resnet")
    with pytest.raises(ConfigError, match=r"mmt.branches=0"):
        mmt(branches=0)
