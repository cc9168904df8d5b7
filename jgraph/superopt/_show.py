"""Human views of a μGraph: a readable text dump and a PNG picture (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from jgraph.core import atomic_write_bytes
from jgraph.superopt._cost import thread_fusion
from jgraph.superopt._ir import KernelGraph

__all__ = ["draw", "dump"]


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


def draw(graph: KernelGraph, path: str | Path, *, title: str = "") -> Path:
    """Draws the μGraph as a PNG: kernel ops left to right, block graphs in boxes below.

    Returns:
        The path written (atomically).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = graph.shapes
    n_k = len(graph.ops)
    blocks = [op.block for op in graph.ops if op.block is not None]
    depth = max([len(b.inputs) + len(b.ops) for b in blocks] + [0])
    fig_h = 2.2 + 0.45 * depth
    fig, ax = plt.subplots(figsize=(max(6.0, 2.6 * (n_k + 1)), fig_h))
    ax.set_axis_off()
    ax.set_xlim(0, n_k + 1)
    ax.set_ylim(-depth - 1, 2)
    pos: dict[int, tuple[float, float]] = {}
    for k, spec in enumerate(graph.inputs):
        y = 1.5 - 0.5 * k
        pos[k] = (0.3, y)
        ax.text(0.3, y, f"t{k}\n{spec.shape}", ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round", "fc": "#e8f0fe"})  # fmt: skip
    tid = len(graph.inputs)
    for j, op in enumerate(graph.ops):
        x = j + 1.2
        label = (
            op.kind if op.block is None else f"customized\ngrid={op.block.grid} F={op.block.frange}"
        )
        color = "#fde7c8" if op.block is not None else "#e6f4e6"
        ax.text(
            x,
            1.2,
            label,
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": color},
        )
        for i in op.inputs:
            ax.annotate("", xy=(x - 0.35, 1.2), xytext=(pos[i][0] + 0.3, pos[i][1]),
                        arrowprops={"arrowstyle": "->", "color": "gray"})  # fmt: skip
        for s in range(op.n_outputs):
            pos[tid] = (x, 0.6 - 0.25 * s)
            ax.text(x, 0.6 - 0.25 * s, f"t{tid} {shapes[tid]}", ha="center", fontsize=7)
            tid += 1
        if op.block is not None:
            b = op.block
            tiles, post, _ = b.infer([shapes[i] for i in op.inputs])
            rows = [
                f"b{k}: load t{op.inputs[k]} imap={_m(bi.imap)} fmap={bi.fmap}"
                for k, bi in enumerate(b.inputs)
            ]
            n_in = len(b.inputs)
            rows += [
                f"b{n_in + k}: {bop.kind}({', '.join(f'b{i}' for i in bop.inputs)}) {tiles[n_in + k]}"
                + (" *" if post[n_in + k] else "")
                for k, bop in enumerate(b.ops)
            ]
            rows += [f"save b{o.src} omap={_m(o.omap)}" for o in b.outputs]
            ax.text(x, -0.2, "\n".join(rows), ha="center", va="top", fontsize=6.5, family="monospace",
                    bbox={"boxstyle": "square", "fc": "#fff8ee", "ec": "#d08a2a"})  # fmt: skip
    ax.set_title(title or "μGraph  (* = after the for-loop accumulators)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
