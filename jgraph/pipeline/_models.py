"""Analytic specs of the GraphPipe paper's benchmark models, at paper scale.

No weights are materialised: each layer's FLOPs, bytes and activation sizes are
computed from its shapes (float32, 4 bytes per element, as for the V100 FP32
peak in `ClusterConfig`). Configs follow GraphPipe Appendix A.2:

* MMT: 4 branches x 8 Transformer layers (seq 256, hidden 1024, 16 heads,
  FFN 4096), concatenated, then a projection head (4*hidden -> hidden).
* DLRM: 7 dense branches of 4 FF layers (hidden 4096) + 7 embedding-bag
  branches (1M rows, dim 64, bag 100); concat; post-interaction FF 4096.
* CANDLE-Uno: 7 branches x 4 FF layers (hidden 4096); concat; FF 4096 head.
* Sequential Transformer: 32 layers of the MMT config in one chain.
* Synthetic: k CANDLE-Uno-like branches (the branch sweep of Fig. 7).

Where the paper is silent (head sizes, input widths) the choice is written next
to the code; the heads are small next to the branches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from jgraph.core import check_choice, check_int
from jgraph.pipeline._graph import ModelGraph, Node

__all__ = [
    "MODEL_NAMES",
    "PAPER_MODELS",
    "candle_uno",
    "dlrm",
    "mmt",
    "paper_model",
    "sequential_transformer",
    "synthetic_branches",
]

F32 = 4  # bytes per element


def _input(name: str, elements_per_sample: float) -> Node:
    return Node(name=name, kind="input", output_bytes=elements_per_sample * F32, kernels=0)


def transformer_layer(
    name: str, inp: str, *, seq: int = 256, hidden: int = 1024, heads: int = 16, ffn: int = 4096
) -> Node:
    """A pre-LN Transformer encoder layer (MHA + 2-layer FFN) on one sample."""
    s, h, a, f = seq, hidden, heads, ffn
    params = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    # Matmuls (QKV, output projection, FFN) plus attention scores and mixing.
    flops = 2 * s * (4 * h * h + 2 * h * f) + 4 * s * s * h
    # Kept for backward, in elements: LN1 in/out, Q, K, V, context, attention
    # output, LN2 in/out, FFN hidden pre/post activation (17 s*h), plus scores
    # and softmax probabilities (2 a s^2). Korthikanti et al. 2022 count the
    # same tensors (34 s h + 5 a s^2 bytes in fp16, which adds dropout masks).
    act = 17 * s * h + 2 * a * s * s
    return Node(
        name=name,
        inputs=(inp,),
        kind="transformer_layer",
        flops=float(flops),
        bwd_flops=float(2 * flops),
        io_bytes=float(2 * act * F32),
        weight_bytes=float(params * F32),
        param_bytes=float(params * F32),
        activation_bytes=float(act * F32),
        output_bytes=float(s * h * F32),
        kernels=12,
    )


def ff_layer(name: str, inputs: tuple[str, ...], d_in: int, d_out: int, *, tokens: int = 1) -> Node:
    """A dense layer with bias and ReLU applied to ``tokens`` vectors per sample."""
    params = d_in * d_out + d_out
    return Node(
        name=name,
        inputs=inputs,
        kind="ff",
        flops=float(2 * d_in * d_out * tokens),
        bwd_flops=float(4 * d_in * d_out * tokens),
        io_bytes=float((d_in + 2 * d_out) * tokens * F32),
        weight_bytes=float(params * F32),
        param_bytes=float(params * F32),
        # Input (for the weight gradient) and pre-activation (for ReLU's).
        activation_bytes=float((d_in + d_out) * tokens * F32),
        output_bytes=float(d_out * tokens * F32),
        kernels=2,
    )


def embedding_bag(name: str, inp: str, *, rows: int, dim: int, bag: int) -> Node:
    """Sum of ``bag`` gathered rows of a ``rows x dim`` table (a gather: no weight stream)."""
    return Node(
        name=name,
        inputs=(inp,),
        kind="embedding_bag",
        flops=float(bag * dim),
        bwd_flops=float(2 * bag * dim),
        io_bytes=float(bag * dim * F32 + bag * 8),
        weight_bytes=0.0,
        param_bytes=float(rows * dim * F32),
        activation_bytes=float(bag * 8),  # the int64 indices, for the scatter-add
        output_bytes=float(dim * F32),
        kernels=2,
    )


def _chain(
    nodes: list[Node], source: str, names: Iterable[str], make: Callable[[str, str], Node]
) -> str:
    """Appends ``make(name, previous)`` for each name, fed from ``source``; returns the tail."""
    prev = source
    for cur in names:
        nodes.append(make(cur, prev))
        prev = cur
    return prev


def concat(name: str, inputs: tuple[str, ...], out_elements: float) -> Node:
    return Node(
        name=name,
        inputs=inputs,
        kind="concat",
        io_bytes=2.0 * out_elements * F32,
        output_bytes=out_elements * F32,
        kernels=1,
    )


def mmt(
    *, branches: int = 4, layers: int = 8, seq: int = 256, hidden: int = 1024, heads: int = 16,
    ffn: int = 4096, name: str = "mmt",
) -> ModelGraph:  # fmt: skip
    """Multi-Modal Transformer: ``branches`` encoders of ``layers`` layers, concatenated.

    Example:
        >>> g = mmt()
        >>> len(g.nodes), round(sum(n.param_bytes for n in g.nodes) / 4e6)  # nodes, M params
        (38, 407)
    """
    check_int("mmt.branches", branches, minimum=1)
    check_int("mmt.layers", layers, minimum=1)
    nodes: list[Node] = []
    tails = []

    def layer(cur: str, prev: str) -> Node:
        return transformer_layer(cur, prev, seq=seq, hidden=hidden, heads=heads, ffn=ffn)

    for br in range(branches):
        nodes.append(_input(f"in{br}", seq * hidden))
        tails.append(_chain(nodes, f"in{br}", (f"b{br}.layer{li}" for li in range(layers)), layer))
    nodes.append(concat("concat", tuple(tails), branches * seq * hidden))
    nodes.append(ff_layer("head", ("concat",), branches * hidden, hidden, tokens=seq))
    return ModelGraph(name=name, nodes=tuple(nodes))


def sequential_transformer(
    *, layers: int = 32, seq: int = 256, hidden: int = 1024, heads: int = 16, ffn: int = 4096
) -> ModelGraph:
    """A chain of Transformer layers with the MMT layer config (the parity check)."""
    check_int("sequential_transformer.layers", layers, minimum=1)
    nodes = [_input("in", seq * hidden)]
    prev = _chain(
        nodes,
        "in",
        (f"layer{li}" for li in range(layers)),
        lambda cur, prev: transformer_layer(
            cur, prev, seq=seq, hidden=hidden, heads=heads, ffn=ffn
        ),
    )
    nodes.append(ff_layer("head", (prev,), hidden, hidden, tokens=seq))
    return ModelGraph(name="transformer", nodes=tuple(nodes))


def synthetic_branches(
    branches: int, *, layers: int = 4, hidden: int = 4096, name: str | None = None
) -> ModelGraph:
    """CANDLE-Uno-like: ``branches`` chains of FF layers, concat, a 2-layer FF head.

    Example:
        >>> [n.name for n in synthetic_branches(2, layers=1).nodes]
        ['in0', 'b0.ff0', 'in1', 'b1.ff0', 'concat', 'head0', 'head1']
    """
    check_int("synthetic_branches.branches", branches, minimum=1)
    check_int("synthetic_branches.layers", layers, minimum=1)
    nodes: list[Node] = []
    tails = []

    def ff(cur: str, prev: str) -> Node:
        return ff_layer(cur, (prev,), hidden, hidden)

    for br in range(branches):
        nodes.append(_input(f"in{br}", hidden))
        tails.append(_chain(nodes, f"in{br}", (f"b{br}.ff{li}" for li in range(layers)), ff))
    nodes.append(concat("concat", tuple(tails), branches * hidden))
    nodes.append(ff_layer("head0", ("concat",), branches * hidden, hidden))
    nodes.append(ff_layer("head1", ("head0",), hidden, hidden))
    return ModelGraph(name=name or f"synthetic{branches}", nodes=tuple(nodes))


def candle_uno(*, branches: int = 7, layers: int = 4, hidden: int = 4096) -> ModelGraph:
    """CANDLE-Uno: 7 feature branches x 4 FF layers (hidden 4096), concat, FF head."""
    return synthetic_branches(branches, layers=layers, hidden=hidden, name="candle_uno")


def dlrm(
    *, dense_branches: int = 7, sparse_branches: int = 7, layers: int = 4, hidden: int = 4096,
    rows: int = 1_000_000, dim: int = 64, bag: int = 100,
) -> ModelGraph:  # fmt: skip
    """DLRM: dense FF towers + embedding-bag towers, concat, post-interaction FF.

    The post-interaction MLP is 2 FF layers of width ``hidden`` and a 1-unit
    output (the paper gives only its width).
    """
    check_int("dlrm.dense_branches", dense_branches, minimum=0)
    check_int("dlrm.sparse_branches", sparse_branches, minimum=0)
    nodes: list[Node] = []
    tails = []

    def ff(cur: str, prev: str) -> Node:
        return ff_layer(cur, (prev,), hidden, hidden)

    for br in range(dense_branches):
        src = f"dense_in{br}"
        nodes.append(_input(src, hidden))
        tails.append(_chain(nodes, src, (f"d{br}.ff{li}" for li in range(layers)), ff))
    for br in range(sparse_branches):
        idx = f"sparse_in{br}"
        # Indices are int64: 2 "float32 elements" each.
        nodes.append(_input(idx, 2 * bag))
        cur = f"emb{br}"
        nodes.append(embedding_bag(cur, idx, rows=rows, dim=dim, bag=bag))
        tails.append(cur)
    width = dense_branches * hidden + sparse_branches * dim
    nodes.append(concat("interaction", tuple(tails), width))
    nodes.append(ff_layer("top0", ("interaction",), width, hidden))
    nodes.append(ff_layer("top1", ("top0",), hidden, hidden))
    nodes.append(ff_layer("top2", ("top1",), hidden, 1))
    return ModelGraph(name="dlrm", nodes=tuple(nodes))


# The four models of the paper's main evaluation.
PAPER_MODELS = ("mmt", "dlrm", "candle_uno", "transformer")

# Every model `paper_model` builds, by name (the CLI's --model choices). ``branches``
# is read by "synthetic" only.
_BY_NAME: dict[str, Callable[[int | None], ModelGraph]] = {
    "mmt": lambda branches: mmt(),
    "dlrm": lambda branches: dlrm(),
    "candle_uno": lambda branches: candle_uno(),
    "transformer": lambda branches: sequential_transformer(),
    "synthetic": lambda branches: synthetic_branches(branches if branches is not None else 4),
    # GraphPipe §7.5: two branches of 4 Transformer layers joined by a concat.
    "case_study": lambda branches: mmt(branches=2, layers=4, name="case_study"),
}
MODEL_NAMES: tuple[str, ...] = tuple(_BY_NAME)


def paper_model(name: str, *, branches: int | None = None) -> ModelGraph:
    """A benchmark model by name (one of `MODEL_NAMES`).

    Args:
        name: mmt, dlrm, candle_uno, transformer (the paper's models at paper
            scale), synthetic (CANDLE-Uno-like branches) or case_study (GraphPipe
            §7.5: two 4-layer Transformer branches joined by a concat).
        branches: branches of ``synthetic`` (default 4); ignored by the others.

    Raises:
        ConfigError: an unknown name.
    """
    check_choice("paper_model.name", name, MODEL_NAMES)
    return _BY_NAME[name](branches)
