"""Human views of a μGraph: a readable text dump and a PNG picture (matplotlib).

The picture is laid out in points before anything is placed: every box is
measured first, kernel ops go into layers by dependency depth (inputs are layer
0), a layer is a column of cells (an op box with its block graph's box below),
and the figure is sized to hold exactly that content, so boxes never overlap and
the figure has no empty half.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jgraph.core import atomic_write_bytes
from jgraph.superopt._cost import thread_fusion
from jgraph.superopt._ir import KernelGraph

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

__all__ = ["draw", "dump"]

# Layout constants, in points.
_MARGIN = 10.0
_COL_GAP = 44.0  # room for the arrows between layers
_ROW_GAP = 14.0  # between cells of one layer
_BLOCK_GAP = 12.0  # between a kernel's box and its block graph's box
_TEXT_GAP = 8.0  # between the title or the caption and the boxes

_PAD = 0.4  # the rounded boxes' padding, in units of their font size
_OP_FONT = 8.0
_INPUT_STYLE = {"boxstyle": f"round,pad={_PAD}", "fc": "#e8f0fe", "ec": "#4a6fa5"}
_OP_STYLE = {"boxstyle": f"round,pad={_PAD}", "fc": "#e6f4e6", "ec": "#4c8c4a"}
_KERNEL_STYLE = {"boxstyle": f"round,pad={_PAD}", "fc": "#fde7c8", "ec": "#d08a2a"}
_BLOCK_STYLE = {"boxstyle": "square,pad=0.5", "fc": "#fff8ee", "ec": "#d08a2a"}


def _m(t: tuple[int, int, int]) -> str:
    return "(" + ",".join("-" if v == -1 else str(v) for v in t) + ")"


def _attrs(attrs: tuple) -> str:
    return "" if not attrs else "[" + ", ".join(f"{k}={v}" for k, v in attrs) + "]"


def dump(graph: KernelGraph) -> str:
    """A readable listing: kernel tensors ``t*``, block tensors ``b*``, maps and shapes.

    Example:
        >>> from jgraph.superopt.programs import get_program
        >>> print(dump(get_program("rmsnorm_linear", scale=16).graph))
        t0 = input (2, 256) float16
        t1 = input (256, 384) float16
        t2 = rms_norm(t0)  -> (2, 256)
        t3 = matmul(t2, t1)  -> (2, 384)
        outputs: t3
    """
    shapes = graph.shapes
    lines = [f"t{k} = input {s.shape} {s.dtype}" for k, s in enumerate(graph.inputs)]
    tid = len(graph.inputs)
    for op in graph.ops:
        args = ", ".join(f"t{i}" for i in op.inputs)
        if op.block is None:
            lines.append(f"t{tid} = {op.kind}{_attrs(op.attrs)}({args})  -> {shapes[tid]}")
            tid += 1
            continue
        b = op.block
        outs = ", ".join(f"t{tid + k}" for k in range(len(b.outputs)))
        lines.append(f"{outs} = customized({args})  grid={b.grid} frange={b.frange}")
        tiles, post, _ = b.infer([shapes[i] for i in op.inputs])
        groups = {k: g for g in thread_fusion(b) if len(g) > 1 for k in g}
        for k, bi in enumerate(b.inputs):
            lines.append(
                f"    b{k} = load t{op.inputs[k]} imap={_m(bi.imap)} fmap={bi.fmap if bi.fmap >= 0 else '-'}  tile {tiles[k]}"
            )
        n_in = len(b.inputs)
        for k, bop in enumerate(b.ops):
            t = n_in + k
            a = ", ".join(f"b{i}" for i in bop.inputs)
            phase = "after loop" if post[t] else "loop"
            fused = f"  [thread-fused group {min(groups[k])}]" if k in groups else ""
            lines.append(
                f"    b{t} = {bop.kind}{_attrs(bop.attrs)}({a})  {tiles[t]} {phase}{fused}"
            )
        for k, o in enumerate(b.outputs):
            lines.append(f"    save b{o.src} -> t{tid + k} omap={_m(o.omap)}  {shapes[tid + k]}")
        tid += len(b.outputs)
    lines.append("outputs: " + ", ".join(f"t{o}" for o in graph.outputs))
    return "\n".join(lines)


def _block_rows(graph: KernelGraph, op_index: int) -> list[str]:
    """The block graph of a graph-defined kernel as text rows (loads, ops, savers)."""
    op = graph.ops[op_index]
    assert op.block is not None, "only graph-defined kernels have block graphs"
    b, shapes = op.block, graph.shapes
    tiles, post, _ = b.infer([shapes[i] for i in op.inputs])
    n_in = len(b.inputs)
    rows = [
        f"b{k}: load t{op.inputs[k]} imap={_m(bi.imap)} fmap={bi.fmap}  {tiles[k]}"
        for k, bi in enumerate(b.inputs)
    ]
    rows += [
        f"b{n_in + k}: {bop.kind}{_attrs(bop.attrs)}({', '.join(f'b{i}' for i in bop.inputs)})"
        f"  {tiles[n_in + k]}" + (" *" if post[n_in + k] else "")
        for k, bop in enumerate(b.ops)
    ]
    rows += [f"save b{o.src} omap={_m(o.omap)}" for o in b.outputs]
    return rows


@dataclasses.dataclass
class _Box:
    """A boxed text and where the layout puts it (points, from the figure's bottom left)."""

    text: Text
    width: float = 0.0
    height: float = 0.0
    dx: float = 0.0  # the patch's centre minus the text's anchor (measured)
    dy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0

    def place(self, cx: float, cy: float) -> None:
        self.cx, self.cy = cx, cy
        self.text.set_position((cx - self.dx, cy - self.dy))

    @property
    def left(self) -> float:
        return self.cx - self.width / 2

    @property
    def right(self) -> float:
        return self.cx + self.width / 2

    @property
    def top(self) -> float:
        return self.cy + self.height / 2


def _figure(graph: KernelGraph, title: str = "") -> Figure:
    """The μGraph picture as a matplotlib `Figure` (not yet saved; see `draw`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as MplPath
    from matplotlib.transforms import Affine2D

    fig = Figure()
    canvas = FigureCanvasAgg(fig)
    # Everything is placed in points from the bottom left; this stays right when
    # `savefig` renders at another dpi.
    pt = Affine2D().scale(1 / 72) + fig.dpi_scale_trans
    shapes, n_in = graph.shapes, len(graph.inputs)
    outputs = set(graph.outputs)

    def boxed(text: str, style: dict[str, str], **kw: Any) -> _Box:
        t = fig.text(0, 0, text, transform=pt, ha="center", va="center", bbox=style, **kw)
        return _Box(t)

    # -- the boxes, by kernel-graph node (inputs first, then ops) ----------------------
    inputs = [
        boxed(f"t{k}  input\n{spec.shape} {spec.dtype}", _INPUT_STYLE, fontsize=7.5)
        for k, spec in enumerate(graph.inputs)
    ]
    ops: list[_Box] = []
    blocks: dict[int, _Box] = {}
    producer = list(range(n_in))  # kernel tensor -> node (inputs are nodes 0..n_in-1)
    out_line = [0] * n_in  # kernel tensor -> its line in its op's box (the head is line 0)
    tid = n_in
    for j, op in enumerate(graph.ops):
        if op.block is None:
            head, style = f"{op.kind}{_attrs(op.attrs)}", _OP_STYLE
        else:
            head = f"customized  grid={op.block.grid}  F={op.block.frange}"
            style = _KERNEL_STYLE
        lines = [head]
        for _ in range(op.n_outputs):
            mark = "  (output)" if tid in outputs else ""
            lines.append(f"→ t{tid} {shapes[tid]}{mark}")
            producer.append(n_in + j)
            out_line.append(len(lines) - 1)
            tid += 1
        ops.append(boxed("\n".join(lines), style, fontsize=_OP_FONT))
        if op.block is not None:
            blocks[j] = boxed(
                "\n".join(_block_rows(graph, j)),
                _BLOCK_STYLE,
                fontsize=6.5,
                family="monospace",
                multialignment="left",
            )
    title_text = fig.text(0, 0, title or "μGraph", transform=pt, ha="center", va="top", fontsize=10)
    caption = (
        fig.text(0, 0, "* = after the for-loop accumulators;  F = for-loop range",
                 transform=pt, ha="left", va="bottom", fontsize=7, color="#555555")
        if blocks else None
    )  # fmt: skip

    # -- measure (sizes do not depend on positions) -----------------------------------
    canvas.draw()
    to_pt = 72 / fig.dpi
    for box in [*inputs, *ops, *blocks.values()]:
        patch = box.text.get_bbox_patch()
        assert patch is not None, "every box is a text with a bbox"
        ext = patch.get_window_extent()
        box.width, box.height = ext.width * to_pt, ext.height * to_pt
        box.dx = (ext.x0 + ext.x1) / 2 * to_pt  # the anchor is at (0, 0)
        box.dy = (ext.y0 + ext.y1) / 2 * to_pt
    title_ext = title_text.get_window_extent()
    title_w, title_h = title_ext.width * to_pt, title_ext.height * to_pt
    cap_ext = caption.get_window_extent() if caption is not None else None
    cap_w = cap_ext.width * to_pt if cap_ext is not None else 0.0
    cap_h = cap_ext.height * to_pt + _TEXT_GAP if cap_ext is not None else 0.0

    # -- layers and positions (see `_plan`) -------------------------------------------
    nodes = [*inputs, *ops]
    edges = [(producer[i], n_in + j) for j, op in enumerate(graph.ops) for i in op.inputs]
    cells = []
    for node, box in enumerate(nodes):
        block = blocks.get(node - n_in)
        if block is None:
            cells.append((box.width, box.height))
        else:
            cells.append((max(box.width, block.width), box.height + _BLOCK_GAP + block.height))
    plan = _plan(cells, edges)
    width = max(plan.width, title_w, cap_w) + 2 * _MARGIN
    height = _MARGIN + title_h + _TEXT_GAP + plan.height + cap_h + _MARGIN
    fig.set_size_inches(width / 72, height / 72)
    x0 = (width - plan.width) / 2  # the plan's origin: its top left corner
    y0 = height - _MARGIN - title_h - _TEXT_GAP
    for node, box in enumerate(nodes):
        # Left-aligned in their layer: arrows end on the layer's left edge, where
        # nothing of that layer is in their way (a wide block box below included).
        left, top = x0 + plan.cell_left[node], y0 - plan.cell_top[node]
        box.place(left + box.width / 2, top - box.height / 2)
        block = blocks.get(node - n_in)
        if block is not None:
            block.place(left + block.width / 2, top - box.height - _BLOCK_GAP - block.height / 2)
    title_text.set_position((width / 2, height - _MARGIN))
    if caption is not None:
        caption.set_position(((width - cap_w) / 2, _MARGIN))

    # -- arrows: producer's right side to the consumer's left, one port per operand;
    # an arrow that skips layers runs through its lane in each (nothing else is there).
    def arrow(path: list[tuple[float, float]], **kw: Any) -> None:
        fig.add_artist(FancyArrowPatch(path=MplPath(path), transform=pt, zorder=1, **kw))

    for j, op in enumerate(graph.ops):
        dst = ops[j]
        n = len(op.inputs)
        for p, i in enumerate(op.inputs):
            src = nodes[producer[i]]
            if producer[i] < n_in:
                route = [(src.right, src.cy)]
            else:  # from the line that names the tensor
                n_lines = graph.ops[producer[i] - n_in].n_outputs + 1
                line_h = (src.height - 2 * _PAD * _OP_FONT) / n_lines
                route = [(src.right, src.top - _PAD * _OP_FONT - (out_line[i] + 0.5) * line_h)]
            for left, right, y in plan.lanes(producer[i], n_in + j):
                route += [(x0 + left, y0 - y), (x0 + right, y0 - y)]
            route.append((dst.left, dst.top - dst.height * (p + 1) / (n + 1)))
            arrow(route, arrowstyle="-|>", mutation_scale=9, color="#888888", lw=0.9)
        if j in blocks:
            x = dst.left + min(dst.width, blocks[j].width) / 2
            route = [(x, dst.cy - dst.height / 2), (x, blocks[j].top)]
            arrow(route, arrowstyle="-", color="#d08a2a", lw=0.9, linestyle=(0, (2, 2)))
    return fig


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Where the layout puts each node, in points from its top left corner (y downwards)."""

    width: float
    height: float
    cell_left: tuple[float, ...]  # the left edge of a node's cell (its layer's)
    cell_top: tuple[float, ...]  # the top of a node's cell
    layer: tuple[int, ...]
    columns: tuple[tuple[float, float], ...]  # each layer's left and right edge
    lane_y: dict[tuple[int, int], float]  # (source node, layer) -> the lane's centre line

    def lanes(self, src: int, dst: int) -> list[tuple[float, float, float]]:
        """(left, right, y) of each lane an arrow from ``src`` to ``dst`` runs through."""
        return [
            (*self.columns[lv], self.lane_y[(src, lv)])
            for lv in range(self.layer[src] + 1, self.layer[dst])
        ]


_LANE = 4.0  # the height reserved for a lane


def _plan(cells: list[tuple[float, float]], edges: list[tuple[int, int]]) -> _Plan:
    """A layered layout (Sugiyama-style) of nodes with the given cell sizes.

    A node's layer is one more than its latest producer's (sources: layer 0), so
    every arrow goes right. An arrow that skips layers gets a lane (an empty slot,
    one per source and layer) in each layer it crosses, so it never runs through a
    box. Within a layer, nodes and lanes are ordered by the mean position of what
    feeds them in the layer before (one barycentre sweep), which keeps most arrows
    short and uncrossed; then stacked top-down.

    Args:
        cells: (width, height) of each node's cell; nodes are in topological order.
        edges: (producer, consumer) node pairs.
    """
    layer: list[int] = []
    for node in range(len(cells)):
        layer.append(1 + max((layer[s] for s, d in edges if d == node), default=-1))
    Slot = int | tuple[int, int]  # a node, or the lane (source, layer)
    columns: list[list[Slot]] = [[] for _ in range(max(layer) + 1)]
    for node, lv in enumerate(layer):
        columns[lv].append(node)
    for s, d in dict.fromkeys(edges):
        for lv in range(layer[s] + 1, layer[d]):
            if (s, lv) not in columns[lv]:
                columns[lv].append((s, lv))

    def feeder(src: int, lv: int) -> Slot:  # what carries ``src`` in layer ``lv``
        return src if layer[src] == lv else (src, lv)

    rank: dict[Slot, int] = {slot: k for k, slot in enumerate(columns[0])}
    for lv in range(1, len(columns)):

        def key(slot: Slot, lv: int = lv) -> tuple[float, int, int]:
            if isinstance(slot, int):
                feeds = [rank[feeder(s, lv - 1)] for s, d in edges if d == slot]
                return sum(feeds) / len(feeds), 0, slot
            return rank[feeder(slot[0], lv - 1)], 1, slot[0]

        columns[lv].sort(key=key)
        rank.update({slot: k for k, slot in enumerate(columns[lv])})

    cell_left, cell_top = [0.0] * len(cells), [0.0] * len(cells)
    lane_y: dict[tuple[int, int], float] = {}
    bounds, x, height = [], 0.0, 0.0
    for col in columns:
        w = max(cells[slot][0] for slot in col if isinstance(slot, int))
        y = 0.0
        for slot in col:
            if isinstance(slot, int):
                cell_left[slot], cell_top[slot] = x, y
                y += cells[slot][1] + _ROW_GAP
            else:
                lane_y[slot] = y + _LANE / 2
                y += _LANE + _ROW_GAP
        bounds.append((x, x + w))
        height = max(height, y - _ROW_GAP)
        x += w + _COL_GAP
    return _Plan(
        width=x - _COL_GAP,
        height=height,
        cell_left=tuple(cell_left),
        cell_top=tuple(cell_top),
        layer=tuple(layer),
        columns=tuple(bounds),
        lane_y=lane_y,
    )


def draw(graph: KernelGraph, path: str | Path, *, title: str = "") -> Path:
    """Draws the μGraph as a PNG.

    Kernel ops are laid out left to right by dependency depth (the inputs first),
    each graph-defined kernel with its block graph (loads with imap/fmap and tile
    shapes, block ops, savers) in a box below it; the figure is sized to fit.

    Args:
        graph: the μGraph.
        path: where to write the PNG.
        title: a title (default: "μGraph").

    Returns:
        The path written (atomically).
    """
    import io

    fig = _figure(graph, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())
