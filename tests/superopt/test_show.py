"""The μGraph picture: no two boxes overlap and the content fills the figure.

The boxes are measured on the drawn figure (the matplotlib patches of the boxed
texts, and the title and caption texts), not taken from the layout's own numbers.
"""

import itertools

import pytest
from matplotlib.transforms import Bbox

from jgraph.superopt import draw, new_kernel_graph, new_threadblock_graph
from jgraph.superopt._show import _figure
from jgraph.superopt.ir import KernelGraph
from jgraph.superopt.programs import HANDWRITTEN, PROGRAMS, get_program, handwritten


def _synthetic(n_in: int, n_kernels: int) -> KernelGraph:
    """A chain of ``n_kernels`` kernels over ``n_in`` inputs spread among them.

    A kernel with more than two operands (or the first one) is graph-defined and
    sums them in its block graph; one with two is a pre-defined ``add``, one with
    a single operand an ``exp``; so every mix of wide and narrow boxes occurs.
    """
    g = new_kernel_graph()
    xs = [g.new_input((8, 16)) for _ in range(n_in)]
    prev = None
    for k in range(n_kernels):
        operands = xs[k::n_kernels] + ([prev] if prev is not None else [])
        if len(operands) == 1:
            prev = g.exp(operands[0])
        elif len(operands) == 2 and k % 2 == 1:
            prev = g.add(*operands)
        else:
            tb = new_threadblock_graph((2, 1, 1), 1)
            bs = [tb.new_input(t, (0,), -1) for t in operands]
            acc = bs[0]
            for b in bs[1:]:
                acc = tb.add(acc, b)
            tb.new_output(tb.forloop_accum(acc), (0,))
            (prev,) = g.customized(operands, tb)
    g.mark_output(prev)
    graph = g.graph
    assert len(graph.ops) == n_kernels
    return graph


def _graphs() -> dict[str, KernelGraph]:
    graphs = {
        f"{n_in} inputs, {n_k} kernels": _synthetic(n_in, n_k)
        for n_in in range(2, 9)
        for n_k in range(1, 5)
    }
    for name in HANDWRITTEN:
        prog = get_program("gqa" if name.startswith("gqa") else name, scale=16)
        graphs[f"hand-written {name}"] = handwritten(name, prog)
    for name in PROGRAMS:
        graphs[f"reference {name}"] = get_program(name, scale=16).graph
    return graphs


_GRAPHS = _graphs()


@pytest.mark.parametrize("name", sorted(_GRAPHS))
def test_boxes_do_not_overlap_and_fill_the_figure(name):
    fig = _figure(_GRAPHS[name], title=name)
    fig.canvas.draw()
    boxes = [(t.get_bbox_patch() or t).get_window_extent() for t in fig.texts]
    n_boxed = sum(t.get_bbox_patch() is not None for t in fig.texts)
    graph = _GRAPHS[name]
    n_blocks = sum(op.block is not None for op in graph.ops)
    assert n_boxed == len(graph.inputs) + len(graph.ops) + n_blocks
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    width, height = fig.bbox.width, fig.bbox.height
    for box in boxes:
        assert fig.bbox.containsx(box.x0), box
        assert fig.bbox.containsx(box.x1), box
        assert fig.bbox.containsy(box.y0), box
        assert fig.bbox.containsy(box.y1), box
    used = Bbox.union(boxes)  # the content spans the figure: no empty half
    assert used.width >= 0.75 * width, (used, width)
    assert used.height >= 0.75 * height, (used, height)
    area = sum(b.width * b.height for b in boxes)
    assert area >= 0.12 * width * height


def test_draw_writes_the_whole_laid_out_figure(tmp_path):
    from PIL import Image

    graph = _GRAPHS["hand-written gqa"]
    png = draw(graph, tmp_path / "gqa.png", title="gqa")
    width_in, height_in = _figure(graph, title="gqa").get_size_inches()
    with Image.open(png) as im:  # saved at 110 dpi, not cropped
        assert abs(im.size[0] - width_in * 110) <= 1
        assert abs(im.size[1] - height_in * 110) <= 1
