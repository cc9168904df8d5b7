"""Schedules for a block-graph structure: grid, maps and for-loop range, from shapes.

Instead of Mirage's fixed imap/omap/grid lists, the schedules are derived from
the structure: symbolic shape inference unifies the tile dimensions that must
be equal (matmul contraction and batch dims, element-wise operands), giving
*dimension classes* of the inputs. A schedule assigns grid axes to distinct
classes (in increasing class order, since permuting grid axes gives the same
μGraph), optionally one class to the for-loop, and power-of-two sizes dividing
the class sizes; every input's ``imap``/``fmap`` follows from its dims' classes.
An output's ``omap`` is forced for axes whose class it has; an axis whose class
it lacks (a split contraction) concatenates the partial results along one of
its dims, and each choice is enumerated. Sizes are ranked by a closed-form
cost (bytes loaded including replication, bytes written including
concatenated partials, and occupancy; vectorized with numpy and cached per map
assignment, since it depends on no op) and the best ``sizes_per_mapping`` per
map assignment are kept (0 keeps all); the shared-memory budget and
the 4096-block limit are enforced. ``maps="mirage"`` restricts all this to
Mirage's fixed candidate lists (``frange`` in {1, 4, 16, 64}, 32 to 4096 blocks,
the 8 imap triples) for comparison.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from jgraph.superopt._ir import BlockGraph, BlockInput, BlockOutput, Op
from jgraph.superopt._ops import ACCUMULATORS, BINARY, UNARY

if TYPE_CHECKING:  # _config imports the verifier, which imports this module
    from jgraph.superopt._config import MapMode

__all__ = ["partial_outputs", "schedules", "shape_consistent"]

_MIRAGE_IMAPS = {
    (0, -1, 1),
    (0, 1, -1),
    (0, 2, -1),
    (-1, 1, -1),
    (0, -1, -1),
    (0, -1, 2),
    (-1, -1, -1),
    (1, -1, -1),
}
_SMS = 132


class _UF:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _symbolic(
    in_shapes: Sequence[tuple[int, ...]], ops: Sequence[Op]
) -> tuple[_UF, list[list[Any]]] | None:
    """Symbolic tile dims per block tensor: ("s", (input, dim)) or ("c", const); None if invalid."""
    uf = _UF()
    # a size-1 input dim is a constant 1, so it broadcasts against any tile dim
    dims: list[list[Any]] = [
        [("c", 1) if d == 1 else ("s", (k, j)) for j, d in enumerate(s)]
        for k, s in enumerate(in_shapes)
    ]
    size = {("s", (k, j)): d for k, s in enumerate(in_shapes) for j, d in enumerate(s)}

    def unify(a: Any, b: Any) -> Any:
        if a[0] == "c" and b[0] == "c":
            return a if a == b else (b if a == ("c", 1) else a if b == ("c", 1) else None)
        if a[0] == "c" or b[0] == "c":
            c, s = (a, b) if a[0] == "c" else (b, a)
            return s if c == ("c", 1) else None
        if size[a] != size[b]:
            return None
        uf.union(a, b)
        return a

    for op in ops:
        ins = [dims[i] for i in op.inputs]
        a = ins[0]
        if op.kind in BINARY or op.kind == "accum_rescale":
            if len(a) != len(ins[1]):
                return None
            out = [unify(x, y) for x, y in zip(a, ins[1], strict=True)]
            if any(o is None for o in out):
                return None
            if op.kind == "accum_rescale":
                out = list(a)
        elif op.kind == "matmul":
            b = ins[1]
            if len(a) != len(b) or len(a) < 2 or unify(a[-1], b[-2]) is None:
                return None
            if any(unify(x, y) is None for x, y in zip(a[:-2], b[:-2], strict=True)):
                return None
            out = [*a[:-1], b[-1]]
        elif op.kind in UNARY or op.kind in ("rms_norm", "accum_sum", "accum_max"):
            out = list(a)
        elif op.kind in ("accum_sum_ld", "accum_mean_ld", "accum_rms_ld"):
            out = [*a[:-1], ("c", 1)]
        elif op.kind == "accum_redtox_ld":
            out = [*a[:-1], ("c", op.attr["dimx"])]
        elif op.kind in ("reduce_sum", "reduce_max"):
            d = op.attr.get("dim", len(a) - 1)
            if not 0 <= d < len(a):
                return None
            out = [*a[:d], ("c", 1), *a[d + 1 :]]
        else:
            return None
        dims.append(out)
    return uf, dims


def shape_consistent(in_shapes: Sequence[tuple[int, ...]], ops: Sequence[Op]) -> bool:
    """Whether some schedule could make ``ops`` fit (unified dims have equal sizes)."""
    return _symbolic(in_shapes, ops) is not None


def partial_outputs(block: BlockGraph, in_shapes: Sequence[tuple[int, ...]]) -> tuple[bool, ...]:
    """Per output saver: whether it writes partial results, concatenated across blocks.

    That is the case when a grid axis of size > 1 splits a dimension the output
    does not have (a split contraction or reduction, e.g. split-KV attention's
    partial numerators and row sums) and the saver places the blocks' tiles
    side by side along another dim. Such outputs are stored in float32, as
    FlashDecoding-style kernels store their partials; a second kernel reduces them.
    """
    sym = _symbolic(in_shapes, block.ops)
    if sym is None:
        return tuple(False for _ in block.outputs)
    uf, dims = sym
    out = []
    for o in block.outputs:
        ds = [uf.find(t) if t[0] == "s" else t for t in dims[o.src]]
        partial = False
        for a in range(3):
            if block.grid[a] == 1:
                continue
            split = {
                uf.find(("s", (k, b.imap[a])))
                for k, b in enumerate(block.inputs)
                if b.imap[a] != -1
            }
            partial |= not split.intersection(ds)
        out.append(partial)
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _pow2_divisors(n: int, cap: int) -> tuple[int, ...]:
    return tuple(2**e for e in range(1, 13) if n % 2**e == 0 and 2**e <= cap)


@functools.lru_cache(maxsize=4096)
def _pow2_tile_cuts(n: int, min_tile: int) -> tuple[int, ...]:
    """Cuts ``g >= 2`` of a dim of size n leaving power-of-two parts of >= min_tile, ascending.

    Triton tiles are powers of two (spec §c.2), so a cut leaving a part of 24 could
    never lower on the GPU. For a power-of-two n these are its power-of-two divisors;
    for n = 6144 they are 3, 6, 12, ... (parts 2048, 1024, 512, ...).
    """
    parts = (2**e for e in range(n.bit_length()) if n % 2**e == 0 and 2**e >= min_tile)
    return tuple(sorted(n // t for t in parts if 2 <= n // t <= 4096))


@functools.lru_cache(maxsize=4096)
def _grid_sizes(n: int, maps: str, any_tile: bool = False) -> tuple[int, ...]:
    """Grid sizes for a dim of size n: power-of-two tiles of >= 16 (or n itself if n <= 16).

    ``any_tile``: the dim is no matmul operand's, so tiles down to one element
    are allowed (`schedules` uses it only as a fallback when nothing else fits).
    """
    if maps == "mirage":
        return tuple(g for g in _pow2_divisors(n, 256) if g >= 2)
    if any_tile:
        return _pow2_tile_cuts(n, 1)
    if n <= 16:
        return (n,) if n > 1 else ()
    return _pow2_tile_cuts(n, 16)


@functools.lru_cache(maxsize=4096)
def _loop_sizes(n: int, maps: str) -> tuple[int, ...]:
    """For-loop ranges for a per-block extent n, chunks near 128 first.

    Power-of-two chunks of >= 8 (Mirage's RMSNorm: 4096 / 32); the shared-memory
    check then takes the first that fits.
    """
    if maps == "mirage":
        opts = [f for f in (4, 16, 64) if n % f == 0]
    else:
        opts = list(_pow2_tile_cuts(n, 8))
    return tuple(sorted(opts, key=lambda f: abs(math.log2(n // f) - 7)))


@functools.lru_cache(maxsize=65536)
def _grid_ranking(
    sizes: tuple[int, ...],
    reps: tuple[tuple[int, ...], ...],
    grid_opts: tuple[tuple[int, ...], ...],
    mirage: bool,
) -> np.ndarray:
    """Grid sizes of one map assignment, cheapest first, one row each (cached: no op in it).

    The score is the bytes moved (every input once per block along the grid
    axes it replicates over, every output times the axes it concatenates partials
    along) divided by the occupancy (blocks / SMs, capped at 1);
    ties prefer more blocks. Vectorized over the product of the per-axis options.
    """
    if not grid_opts:
        return np.ones((1, 0), dtype=np.int64)
    mesh = np.stack(np.meshgrid(*grid_opts, indexing="ij"), -1).reshape(-1, len(grid_opts))
    blocks = mesh.prod(axis=1)
    keep = blocks <= 4096
    if mirage:
        keep &= blocks >= 32
    mesh, blocks = mesh[keep], blocks[keep]
    loaded = np.zeros(len(mesh), dtype=np.float64)
    for sz, rep in zip(sizes, reps, strict=True):
        loaded += sz * (mesh[:, list(rep)].prod(axis=1) if rep else 1)
    score = loaded / np.minimum(1.0, blocks / _SMS)
    ranked = mesh[np.lexsort((-blocks, score))].astype(np.int64)
    ranked.setflags(write=False)
    return ranked


def _fitting(
    ranked: np.ndarray,
    axis_classes: tuple[Any, ...],
    fcls: Any,
    size: dict[Any, int],
    sym_dims: list[tuple[int, list[Any]]],
    smem_budget: int,
    keep: int,
    maps: str,
) -> list[tuple[tuple[int, ...], int]]:
    """The first ``keep`` (all if 0) grid rows of ``ranked`` with a loop range that fits in smem.

    Per row, the loop range is the first of `_loop_sizes` (of the row's per-block
    extent of the loop's class) whose shared-memory footprint fits. The
    footprint of a tile is its constant bytes times, per symbolic dim, the class
    size divided by the grid size along it and by the loop range if it is the
    loop's class: all exact divisions, so the float64 arithmetic is exact.
    Vectorized over the rows (this runs for every map assignment of every structure).
    """
    col = {c: a for a, c in enumerate(axis_classes)}
    n_rows = len(ranked)
    smem_at: list[tuple[float, np.ndarray, int]] = []  # (bytes, grid divisor per row, F exponent)
    for nbytes, syms in sym_dims:
        coef = float(nbytes)
        cols = []
        f_exp = 0
        for t in syms:
            coef *= size[t]
            if t in col:
                cols.append(col[t])
            if t == fcls:
                f_exp += 1
        div = ranked[:, cols].prod(axis=1).astype(np.float64) if cols else np.ones(n_rows)
        smem_at.append((coef, div, f_exp))
    chosen = np.zeros(n_rows, dtype=np.int64)  # the loop range per row, 0 = none fits
    if fcls is None:
        extents = np.ones(n_rows, dtype=np.int64)
    elif fcls in col:
        extents = size[fcls] // ranked[:, col[fcls]]
    else:
        extents = np.full(n_rows, size[fcls], dtype=np.int64)
    for ext in np.unique(extents):
        rows = np.flatnonzero(extents == ext)
        f_opts = (1,) if fcls is None else _loop_sizes(int(ext), maps)
        for f in f_opts:
            smem = np.zeros(len(rows))
            for coef, div, f_exp in smem_at:
                smem += coef / div[rows] / float(f) ** f_exp
            fits = (smem <= smem_budget) & (chosen[rows] == 0)
            chosen[rows[fits]] = f
    picked = np.flatnonzero(chosen)
    if keep:
        picked = picked[:keep]
    return [(tuple(int(g) for g in ranked[i]), int(chosen[i])) for i in picked]


def schedules(
    in_shapes: Sequence[tuple[int, ...]],
    ops: Sequence[Op],
    sinks: Sequence[int],
    *,
    smem_budget: int,
    sizes_per_mapping: int = 2,
    maps: MapMode = "derived",
    dtype_bytes: int = 2,
    split_ok: Callable[[int, int], bool] | None = None,
    loop_dim: tuple[int, int] | Literal["any"] | None = "any",
    small_tiles: bool = False,
) -> Iterator[BlockGraph]:
    """Yields complete block graphs (structure + schedule) for one structure.

    ``split_ok(k, j)`` (optional) says whether dim ``j`` of input ``k`` may be split
    over the grid (a class is split only if all its input dims may be); ``loop_dim``
    fixes the for-loop to the class of that input dim (None: no loop), instead of
    trying every class ("any"). The fusion moves use both to skip schedules they
    would discard. ``small_tiles``: dims that are no matmul's rows or columns (row-wise
    dims, a batched matmul's heads) may always be cut down to one element (not only
    when nothing else fits), so a row-wise kernel on 128 rows can run 128 blocks, not 8.
    """
    sym = _symbolic(in_shapes, ops)
    if sym is None:
        return
    uf, dims = sym
    cls_of: dict[tuple[int, int], Any] = {}
    size: dict[Any, int] = {}
    for k, s in enumerate(in_shapes):
        for j, d in enumerate(s):
            r = uf.find(("s", (k, j)))
            cls_of[(k, j)] = r
            size[r] = d
    classes = sorted(set(cls_of.values()))
    in_classes = [[cls_of[(k, j)] for j in range(len(s))] for k, s in enumerate(in_shapes)]
    tensor_dims = [[uf.find(t) if t[0] == "s" else t for t in ds] for ds in dims]
    n_in = len(in_shapes)
    splittable = set(classes)
    if split_ok is not None:
        splittable -= {cls_of[(k, j)] for (k, j) in cls_of if not split_ok(k, j)}
    f_opts = [None, *classes]
    if loop_dim != "any":
        f_opts = [None if loop_dim is None else cls_of[loop_dim]]
    for n_axes in range(0, 4):
        for axis_classes in itertools.combinations(classes, n_axes):
            if any(size[c] < 2 or c not in splittable for c in axis_classes):
                continue
            for fcls in f_opts:
                if fcls is not None and size[fcls] < 2:
                    continue
                yield from _sized(
                    in_shapes,
                    in_classes,
                    tensor_dims,
                    ops,
                    sinks,
                    n_in,
                    axis_classes,
                    fcls,
                    size,
                    smem_budget,
                    sizes_per_mapping,
                    maps,
                    dtype_bytes,
                    small_tiles,
                )


def _sized(
    in_shapes: Sequence[tuple[int, ...]],
    in_classes: list[list[Any]],
    tensor_dims: list[list[Any]],
    ops: Sequence[Op],
    sinks: Sequence[int],
    n_in: int,
    axis_classes: tuple[Any, ...],
    fcls: Any,
    size: dict[Any, int],
    smem_budget: int,
    keep: int,
    maps: str,
    dtype_bytes: int,
    small_tiles: bool = False,
) -> Iterator[BlockGraph]:
    imaps = []
    for cl in in_classes:
        imap = [cl.index(c) if c in cl else -1 for c in axis_classes] + [-1] * (
            3 - len(axis_classes)
        )
        imaps.append((imap[0], imap[1], imap[2]))
    if axis_classes and all(all(m[a] == -1 for m in imaps) for a in range(len(axis_classes))):
        return
    if maps == "mirage" and any(m not in _MIRAGE_IMAPS for m in imaps):
        return
    fmaps = [cl.index(fcls) if fcls in cl else -1 for cl in in_classes]
    if fcls is not None and all(f == -1 for f in fmaps):
        return
    mm = {d for op in ops if op.kind == "matmul" for t in op.inputs for d in tensor_dims[t]}
    # small tiles: a matmul's batch dims (heads) may be cut to one too, its rows/cols not
    mm_2d = {d for op in ops if op.kind == "matmul" for t in op.inputs for d in tensor_dims[t][-2:]}
    grid_opts = tuple(
        _grid_sizes(size[c], maps, small_tiles and maps != "mirage" and c not in mm_2d)
        for c in axis_classes
    )
    reps = tuple(
        tuple(a for a, c in enumerate(axis_classes) if c not in in_classes[k]) for k in range(n_in)
    )
    sizes = tuple(math.prod(s) for s in in_shapes)
    # outputs count too: an axis whose class a sink lacks (a split contraction)
    # multiplies that output by the axis size (the concatenated partials)
    for t in sinks:
        ds = tensor_dims[t]
        sizes += (math.prod(size[d] if d[0] != "c" else d[1] for d in ds),)
        reps += (tuple(a for a, c in enumerate(axis_classes) if c not in ds),)
    # per tensor: the constant part of its tile and its symbolic dims (the smem check below)
    sym_dims = []
    for k, ds in enumerate(tensor_dims):
        const = 1
        syms = []
        for t in ds:
            if t[0] == "c":
                const *= t[1]
            else:
                syms.append(t)
        acc = k >= n_in and ops[k - n_in].kind in ACCUMULATORS
        sym_dims.append((const * (4 if acc else dtype_bytes), syms))

    def fitting(ranked: np.ndarray) -> list[tuple[tuple[int, ...], int]]:
        return _fitting(ranked, axis_classes, fcls, size, sym_dims, smem_budget, keep, maps)

    scored = fitting(_grid_ranking(sizes, reps, grid_opts, maps == "mirage"))
    if not scored and maps != "mirage":
        # Fallback, tried only when no size with >= 16-element tiles fits: dims no
        # matmul reads (rows of an element-wise or norm kernel) may be split down to
        # one element, e.g. nTrans's (64, 4096) rows: 3 fp16 inputs need <= 4 rows.
        small = tuple(_grid_sizes(size[c], maps, c not in mm) for c in axis_classes)
        if small != grid_opts:
            scored = fitting(_grid_ranking(sizes, reps, small, False))
    for gs, F in scored:
        grid = tuple(gs) + (1,) * (3 - len(gs))
        inputs = tuple(BlockInput(imaps[k], fmaps[k] if F > 1 else -1) for k in range(n_in))
        for omaps in _omaps(tensor_dims, sinks, axis_classes, gs):
            yield BlockGraph(
                (grid[0], grid[1], grid[2]),
                F,
                inputs,
                tuple(ops),
                tuple(BlockOutput(s, o) for s, o in zip(sinks, omaps, strict=True)),
            )


def _omaps(
    tensor_dims: list[list[Any]],
    sinks: Sequence[int],
    axis_classes: tuple[Any, ...],
    gs: tuple[int, ...],
) -> Iterator[tuple[tuple[int, int, int], ...]]:
    per_sink = []
    for s in sinks:
        ds = tensor_dims[s]
        forced = [ds.index(c) if c in ds else None for c in axis_classes]
        free = [a for a, f in enumerate(forced) if f is None and gs[a] > 1]
        taken = {f for f in forced if f is not None}
        options = []
        avail = [j for j in range(len(ds)) if j not in taken]
        for choice in itertools.permutations(avail, len(free)):
            om = list(forced)
            for a, j in zip(free, choice, strict=True):
                om[a] = j
            full = [(-1 if (o is None or gs[a] == 1) else o) for a, o in enumerate(om)]
            full += [-1] * (3 - len(full))
            options.append((full[0], full[1], full[2]))
        if not options:
            return
        per_sink.append(options)
    yield from itertools.product(*per_sink)
