"""The μGraph IR: a kernel graph whose graph-defined ops carry block graphs.

Tensors are numbered in creation order. In a `KernelGraph` the inputs come
first, then every op's outputs in op order (a ``customized`` op has one output
per block-graph output saver). In a `BlockGraph` the input iterators come first
(block input ``k`` reads the ``k``-th operand of its ``customized`` op), then
one tensor per block op.

Tiling semantics (Mirage's CPU fingerprint interpreter): a grid axis ``a`` of
size ``g_a > 1`` that an input's ``imap`` maps to data dim ``j`` cuts ``j`` into
``g_a`` contiguous parts, block ``b_a`` owning part ``b_a``; an axis the input
does not map (``-1``) replicates the input along it. The input's ``fmap`` dim is
further cut into ``frange`` chunks: block ``b`` loads chunk ``i`` of its part at
for-loop iteration ``i``. Output savers write the accumulated tile of block
``b`` at offset ``b_a * tile_j`` along the dim ``omap`` maps axis ``a`` to.

Everything is frozen and hashable; shapes are derived (`KernelGraph.shapes`),
never stored, so a graph cannot disagree with itself.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jgraph.core import ConfigError
from jgraph.superopt._ops import ACCUMULATORS, ShapeError, op_shape

__all__ = [
    "BlockGraph",
    "BlockInput",
    "BlockOutput",
    "KernelGraph",
    "Op",
    "TensorSpec",
    "output_shape",
    "tile_shape",
]

Attrs = tuple[tuple[str, Any], ...]
Triple = tuple[int, int, int]


def _attrs(attrs: Mapping[str, Any] | Attrs | None) -> Attrs:
    items = attrs.items() if isinstance(attrs, Mapping) else (attrs or ())
    return tuple(sorted((str(k), v) for k, v in items))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """A device-memory tensor: shape and dtype name."""

    shape: tuple[int, ...]
    dtype: str = "float16"


@dataclasses.dataclass(frozen=True)
class Op:
    """A pre-defined op (kernel level) or a block op: kind, operand ids, attributes."""

    kind: str
    inputs: tuple[int, ...]
    attrs: Attrs = ()

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)


@dataclasses.dataclass(frozen=True)
class BlockInput:
    """An input iterator: ``imap`` (grid axis -> data dim or -1) and ``fmap`` (loop dim or -1)."""

    imap: Triple
    fmap: int


@dataclasses.dataclass(frozen=True)
class BlockOutput:
    """An output saver: block tensor ``src`` written with ``omap`` (grid axis -> dim or -1)."""

    src: int
    omap: Triple


def tile_shape(
    shape: Sequence[int], grid: Triple, imap: Triple, fmap: int, frange: int
) -> tuple[int, ...]:
    """The shared-memory tile one block loads per iteration (see the module docstring).

    Example:
        >>> tile_shape((4096, 6144), (256, 1, 1), (1, -1, -1), 0, 32)
        (128, 24)
    """
    tile = list(shape)
    used: set[int] = set()
    for axis, (g, d) in enumerate(zip(grid, imap, strict=True)):
        if g == 1 or d == -1:
            continue
        if not 0 <= d < len(tile) or d in used:
            raise ShapeError(
                "BlockInput.imap", imap, f"axis {axis} maps to bad dim {d}", "map distinct dims"
            )
        if tile[d] % g:
            raise ShapeError(
                "BlockInput.imap", imap, f"grid {g} does not divide dim {d} ({tile[d]})", "fix it"
            )
        used.add(d)
        tile[d] //= g
    if fmap != -1:
        if not 0 <= fmap < len(tile) or tile[fmap] % frange:
            raise ShapeError(
                "BlockInput.fmap", fmap, f"frange {frange} does not divide the tile", "fix it"
            )
        tile[fmap] //= frange
    return tuple(tile)


def output_shape(tile: Sequence[int], grid: Triple, omap: Triple) -> tuple[int, ...]:
    """The device tensor an output saver writes: the tile times the grid along ``omap``."""
    out = list(tile)
    used: set[int] = set()
    for axis, (g, d) in enumerate(zip(grid, omap, strict=True)):
        if g == 1:
            continue
        if d == -1 or not 0 <= d < len(out) or d in used:
            raise ShapeError(
                "BlockOutput.omap",
                omap,
                f"grid axis {axis} (size {g}) must map to its own output dim",
                "map every grid axis of size > 1 to a distinct dim, so blocks write disjoint tiles",
            )
        used.add(d)
        out[d] *= g
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class BlockGraph:
    """A graph-defined kernel's body: grid, for-loop range, iterators, ops, savers."""

    grid: Triple
    frange: int
    inputs: tuple[BlockInput, ...]
    ops: tuple[Op, ...]
    outputs: tuple[BlockOutput, ...]

    def infer(
        self, input_shapes: Sequence[tuple[int, ...]]
    ) -> tuple[list[tuple[int, ...]], list[bool], list[tuple[int, ...]]]:
        """Tile shapes and post-loop flags of every block tensor, and the output shapes.

        Raises:
            ShapeError: a map, an op or a saver does not fit.
        """
        if len(input_shapes) != len(self.inputs):
            raise ConfigError(
                "BlockGraph.inputs", len(self.inputs), "count differs from the kernel operands", ""
            )
        n_blocks = self.grid[0] * self.grid[1] * self.grid[2]
        if min(self.grid) < 1 or self.frange < 1 or n_blocks > 4096:
            raise ShapeError(
                "BlockGraph.grid", (self.grid, self.frange), "sizes out of range", "1..4096 blocks"
            )
        shapes = [
            tile_shape(s, self.grid, b.imap, b.fmap, self.frange)
            for s, b in zip(input_shapes, self.inputs, strict=True)
        ]
        post = [False] * len(shapes)
        for op in self.ops:
            if any(not 0 <= i < len(shapes) for i in op.inputs):
                raise ConfigError("BlockGraph.ops", op, "operand id out of range", "")
            phases = {post[i] for i in op.inputs}
            if op.kind in ACCUMULATORS:
                if phases != {False}:
                    raise ShapeError(
                        op.kind, op.inputs, "accumulates a post-loop tensor", "feed loop tiles"
                    )
                phase = True
            else:
                if len(phases) != 1:
                    raise ShapeError(
                        op.kind, op.inputs, "mixes loop and post-loop tensors", "accumulate first"
                    )
                phase = phases.pop()
            shapes.append(op_shape(op.kind, [shapes[i] for i in op.inputs], op.attr))
            post.append(phase)
        outs = []
        for o in self.outputs:
            if not 0 <= o.src < len(shapes) or not post[o.src]:
                raise ShapeError(
                    "BlockOutput.src",
                    o.src,
                    "an output must be the result of a for-loop accumulator",
                    "accumulate it (accum_sum with frange 1 is a no-op)",
                )
            outs.append(output_shape(shapes[o.src], self.grid, o.omap))
        return shapes, post, outs


@dataclasses.dataclass(frozen=True)
class KernelOp:
    """A kernel-level op: pre-defined (``block`` is None) or ``customized`` with a block graph."""

    kind: str
    inputs: tuple[int, ...]
    attrs: Attrs = ()
    block: BlockGraph | None = None

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)

    @property
    def n_outputs(self) -> int:
        return len(self.block.outputs) if self.block is not None else 1


@dataclasses.dataclass(frozen=True)
class KernelGraph:
    """A μGraph: inputs, kernel ops and the ids of its outputs."""

    inputs: tuple[TensorSpec, ...]
    ops: tuple[KernelOp, ...]
    outputs: tuple[int, ...]

    @functools.cached_property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape of every tensor, by id.

        Raises:
            ShapeError: an op does not fit its operands.
        """
        shapes = [tuple(s.shape) for s in self.inputs]
        for op in self.ops:
            if any(not 0 <= i < len(shapes) for i in op.inputs):
                raise ConfigError("KernelGraph.ops", op.kind, "operand id out of range", "")
            ins = [shapes[i] for i in op.inputs]
            if op.kind == "customized":
                if op.block is None:
                    raise ConfigError("KernelOp.block", None, "customized op without a block", "")
                shapes.extend(op.block.infer(ins)[2])
            else:
                shapes.append(op_shape(op.kind, ins, op.attr))
        for o in self.outputs:
            if not 0 <= o < len(shapes):
                raise ConfigError("KernelGraph.outputs", o, "no such tensor", "")
        return tuple(shapes)

    @property
    def n_tensors(self) -> int:
        return len(self.inputs) + sum(op.n_outputs for op in self.ops)

    def producers(self) -> list[tuple[int, int]]:
        """(op index, output slot) per tensor id; inputs are (-1, k)."""
        prod = [(-1, k) for k in range(len(self.inputs))]
        for i, op in enumerate(self.ops):
            prod += [(i, s) for s in range(op.n_outputs)]
        return prod

    def summary(self) -> str:
        """One line: each kernel op, graph-defined ones with grid, loop range and block ops.

        Example:
            >>> g = KernelGraph((TensorSpec(shape=(2, 3)),), (KernelOp("exp", (0,)),), (1,))
            >>> g.summary()
            'exp'
        """
        parts = []
        for op in self.ops:
            if op.block is None:
                parts.append(op.kind)
            else:
                b = op.block
                body = "+".join(o.kind.replace("accum_", "acc_") for o in b.ops)
                parts.append(f"K[grid={'x'.join(map(str, b.grid))},F={b.frange}:{body}]")
        return " ; ".join(parts)

    def validate(self) -> KernelGraph:
        """Checks shapes now (they are otherwise derived lazily) and returns ``self``."""
        _ = self.shapes
        return self

    # -- serialization -----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_json` inverts it exactly."""
        return {
            "inputs": [{"shape": list(s.shape), "dtype": s.dtype} for s in self.inputs],
            "ops": [_op_json(op) for op in self.ops],
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KernelGraph:
        """Rebuilds a graph written by `to_json` (validated).

        Raises:
            ConfigError: the data is not a μGraph.
        """
        try:
            graph = cls(
                inputs=tuple(
                    TensorSpec(shape=tuple(int(d) for d in s["shape"]), dtype=str(s["dtype"]))
                    for s in data["inputs"]
                ),
                ops=tuple(_op_from_json(o) for o in data["ops"]),
                outputs=tuple(int(o) for o in data["outputs"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                "KernelGraph.json", type(exc).__name__, str(exc), "pass to_json output"
            ) from None
        return graph.validate()

    def dumps(self) -> str:
        """The JSON text of `to_json`."""
        return json.dumps(self.to_json(), sort_keys=True)


def _op_json(op: KernelOp) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": op.kind, "inputs": list(op.inputs), "attrs": dict(op.attrs)}
    if op.block is not None:
        b = op.block
        out["block"] = {
            "grid": list(b.grid),
            "frange": b.frange,
            "inputs": [{"imap": list(i.imap), "fmap": i.fmap} for i in b.inputs],
            "ops": [
                {"kind": o.kind, "inputs": list(o.inputs), "attrs": dict(o.attrs)} for o in b.ops
            ],
            "outputs": [{"src": o.src, "omap": list(o.omap)} for o in b.outputs],
        }
    return out


def _triple(x: Sequence[Any]) -> Triple:
    a, b, c = (int(v) for v in x)
    return (a, b, c)


def _op_from_json(d: Mapping[str, Any]) -> KernelOp:
    block = None
    if d.get("block") is not None:
        b = d["block"]
        block = BlockGraph(
            grid=_triple(b["grid"]),
            frange=int(b["frange"]),
            inputs=tuple(BlockInput(_triple(i["imap"]), int(i["fmap"])) for i in b["inputs"]),
            ops=tuple(
                Op(str(o["kind"]), tuple(int(i) for i in o["inputs"]), _attrs(o.get("attrs")))
                for o in b["ops"]
            ),
            outputs=tuple(BlockOutput(int(o["src"]), _triple(o["omap"])) for o in b["outputs"]),
        )
    return KernelOp(
        str(d["kind"]), tuple(int(i) for i in d["inputs"]), _attrs(d.get("attrs")), block
    )


def make_attrs(attrs: Mapping[str, Any] | None = None) -> Attrs:
    """Canonical (sorted) attribute tuple, the form stored in `Op` and `KernelOp`."""
    return _attrs(attrs)
