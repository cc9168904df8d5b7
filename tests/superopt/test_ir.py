"""μGraph IR: frozen/hashable values, JSON round trip, tiling maps, dumps, pictures, errors."""

import json

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from jgraph.core import ConfigError
from jgraph.superopt import draw, dump, new_kernel_graph, new_threadblock_graph
from jgraph.superopt._ir import output_shape, tile_shape
from jgraph.superopt.ir import KernelGraph, ShapeError
from jgraph.superopt.programs import HANDWRITTEN, get_program, handwritten


def _graphs():
    out = []
    for kind in HANDWRITTEN:
        prog = get_program("gqa" if kind.startswith("gqa") else kind, scale=16)
        out += [prog.graph, handwritten(kind, prog)]
    return out


@pytest.mark.parametrize("graph", _graphs(), ids=lambda g: str(len(g.ops)))
def test_json_round_trip_is_exact_and_hashable(graph):
    text = json.dumps(graph.to_json())
    back = KernelGraph.from_json(json.loads(text))
    assert back == graph
    assert hash(back) == hash(graph)
    assert back.shapes == graph.shapes
    assert {back, graph} == {graph}


def test_graph_is_frozen():
    g = get_program("lora", scale=16).graph
    with pytest.raises(AttributeError):
        g.ops = ()  # type: ignore[misc]  # the write to a frozen field is the point


def test_tile_and_output_shapes_follow_mirage_semantics():
    # RMSNorm+Linear's saved μGraph: grid 256, F=32; W imap x->1, fmap 0.
    assert tile_shape((4096, 6144), (256, 1, 1), (1, -1, -1), 0, 32) == (128, 24)
    assert tile_shape((2, 4096), (256, 1, 1), (-1, -1, -1), 1, 32) == (2, 128)
    assert output_shape((2, 24), (256, 1, 1), (1, -1, -1)) == (2, 6144)
    # a size-1 grid axis is ignored
    assert tile_shape((8, 8), (1, 1, 1), (0, 1, -1), -1, 1) == (8, 8)


def test_bad_maps_raise_shape_errors():
    with pytest.raises(ShapeError, match="does not divide"):
        tile_shape((6, 8), (4, 1, 1), (0, -1, -1), -1, 1)
    with pytest.raises(ShapeError, match="frange 3 does not divide"):
        tile_shape((6, 8), (1, 1, 1), (-1, -1, -1), 1, 3)
    with pytest.raises(ShapeError, match="must map to its own output dim"):
        output_shape((2, 3), (4, 1, 1), (-1, -1, -1))


def test_builder_rejects_mismatched_shapes():
    g = new_kernel_graph()
    x, w = g.new_input((2, 8)), g.new_input((4, 3))
    with pytest.raises(
        ShapeError, match=r"matmul\.inputs=\[\(2, 8\), \(4, 3\)\]: contraction 8 != 4"
    ):
        g.matmul(x, w)
    r = g.reduction(x, 1)  # (2, 1)
    half = g.concat([r, r, r, r], 1)  # (2, 4)
    with pytest.raises(ShapeError, match="dimensions 8 and 4 do not broadcast"):
        g.add(x, half)
    with pytest.raises(ConfigError, match="inputs must be created before ops"):
        g.new_input((2, 2))


def test_block_builder_enforces_accumulator_phases():
    g = new_kernel_graph()
    x = g.new_input((4, 8))
    tb = new_threadblock_graph((2, 1, 1), 1)
    bx = tb.new_input(x, (0,), -1)
    acc = tb.forloop_accum(bx)
    with pytest.raises(ConfigError, match="mixes loop and post-loop tensors"):
        tb.add(bx, acc)
    with pytest.raises(ConfigError, match="accumulates a post-loop tensor"):
        tb.forloop_accum(acc)
    with pytest.raises(ConfigError, match="not after a for-loop accumulator"):
        tb.new_output(bx, (0,))
    tb.new_output(acc, (0,))
    (y,) = g.customized([x], tb)
    assert y.shape == (4, 8)


def test_from_json_rejects_garbage():
    with pytest.raises(ConfigError, match=r"KernelGraph\.json"):
        KernelGraph.from_json({"inputs": [{"shape": [2]}], "ops": [], "outputs": [0]})


def test_dump_and_picture(tmp_path):
    prog = get_program("gqa", scale=16)
    g = handwritten("gqa", prog)
    text = dump(g)
    assert "customized(t0, t1, t2)  grid=(2, 8, 1) frange=4" in text
    assert "accum_redtox_ld[dimx=4]" in text
    assert "save b7 -> t3 omap=(0,2,-)  (2, 16, 32)" in text
    png = draw(g, tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000


@settings(max_examples=25, deadline=None)
@given(
    rows=st.sampled_from([2, 4, 8]),
    cols=st.sampled_from([4, 8, 16]),
    grid=st.sampled_from([1, 2]),
    frange=st.sampled_from([1, 2, 4]),
)
def test_json_round_trip_property(rows, cols, grid, frange):
    g = new_kernel_graph()
    x = g.new_input((rows, cols))
    tb = new_threadblock_graph((grid, 1, 1), frange)
    bx = tb.new_input(x, (0,), 1)
    tb.new_output(tb.forloop_accum(tb.exp(bx), "sum"), (0,))
    (y,) = g.customized([x], tb)
    g.mark_output(y)
    graph = g.graph
    assert KernelGraph.from_json(json.loads(graph.dumps())) == graph
    assert graph.shapes[-1] == (rows, 1)
