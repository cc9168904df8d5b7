"""Series-parallel (SP) decomposition of a model DAG into the tree GraphPipe's DP walks.

A node set is split recursively:

* **parallel**: its weakly connected components (independent branches);
* **series**: cut points where every node before the cut reaches every node
  after it. The boundary before a parallel composition is its *fork junction*,
  the boundary after it its *join junction*: a stage that ends at a fork sends
  to every branch, a branch stage ends at the join;
* otherwise the set is not series-parallel. We then pick the topological cut
  that loses the fewest orderings and add dependency edges from the prefix's
  sinks to the suffix's sources. Adding edges only removes concurrency, so the
  result is a valid (conservative) schedule constraint; the plan lists them.

Every tree node and every contiguous range of its children gets a canonical
id: two ranges with the same id have the same nodes' costs, the same internal
edges and the same boundary, so the DP computes them once (the 4 identical
branches of MMT cost one branch's work).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["SPNode", "SPTree", "decompose"]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SPNode:
    """A node of the SP tree: a leaf (one graph node) or a series/parallel composition."""

    kind: Literal["leaf", "series", "parallel"]
    children: tuple[SPNode, ...] = ()
    node: int = -1  # topological index, leaves only
    members: tuple[int, ...] = ()  # graph nodes below, sorted

    def describe(self, names: Sequence[str]) -> str:
        if self.kind == "leaf":
            return names[self.node]
        sep = " ; " if self.kind == "series" else " | "
        return "(" + sep.join(c.describe(names) for c in self.children) + ")"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SPTree:
    """The decomposition: root, edges added to make the DAG SP, and edge lists used."""

    root: SPNode
    added_edges: tuple[tuple[int, int], ...]
    preds: tuple[tuple[int, ...], ...]  # including added edges
    succs: tuple[tuple[int, ...], ...]


def decompose(n: int, preds: Sequence[Sequence[int]]) -> SPTree:
    """Decomposes a DAG given in topological order (``preds[v]`` are all ``< v``).

    Args:
        n: number of nodes, numbered in a topological order.
        preds: producers of each node.

    Returns:
        The `SPTree`, with any conservative edges it had to add.

    Example:
        >>> t = decompose(4, [[], [0], [0], [1, 2]])  # a diamond
        >>> t.root.describe("abcd"), t.added_edges
        ('(a ; (b | c) ; d)', ())
    """
    pred = [set(p) for p in preds]
    succ: list[set[int]] = [set() for _ in range(n)]
    for v, ps in enumerate(pred):
        for u in ps:
            if not 0 <= u < v:
                raise ValueError(f"decompose: nodes must be topologically numbered (edge {u}->{v})")
            succ[u].add(v)
    anc = _ancestors(n, pred)
    added: list[tuple[int, int]] = []

    def build(nodes: list[int]) -> SPNode:
        nonlocal anc
        if len(nodes) == 1:
            return SPNode(kind="leaf", node=nodes[0], members=(nodes[0],))
        comps = _components(nodes, pred, succ)
        if len(comps) > 1:
            kids = tuple(build(c) for c in comps)
            return SPNode(kind="parallel", children=kids, members=tuple(sorted(nodes)))
        cuts = _series_cuts(nodes, anc)
        if not cuts:
            new = _serialize(nodes, anc, pred, succ)
            for u, v in new:
                pred[v].add(u)
                succ[u].add(v)
            added.extend(new)
            anc = _ancestors(n, pred)
            cuts = _series_cuts(nodes, anc)
            assert cuts, "serialisation must create a series cut"
        pieces, start = [], 0
        for c in [*cuts, len(nodes)]:
            pieces.append(nodes[start:c])
            start = c
        kids = tuple(build(p) for p in pieces)
        return SPNode(kind="series", children=kids, members=tuple(sorted(nodes)))

    root = build(list(range(n)))
    return SPTree(
        root=root,
        added_edges=tuple(sorted(added)),
        preds=tuple(tuple(sorted(p)) for p in pred),
        succs=tuple(tuple(sorted(s)) for s in succ),
    )


def _ancestors(n: int, pred: Sequence[set[int]]) -> list[int]:
    """Bitset of ancestors (including itself) per node."""
    anc = [0] * n
    for v in range(n):
        a = 1 << v
        for u in pred[v]:
            a |= anc[u]
        anc[v] = a
    return anc


def _components(
    nodes: list[int], pred: Sequence[set[int]], succ: Sequence[set[int]]
) -> list[list[int]]:
    inside = set(nodes)
    seen: set[int] = set()
    comps = []
    for s in nodes:
        if s in seen:
            continue
        stack, comp = [s], []
        seen.add(s)
        while stack:
            v = stack.pop()
            comp.append(v)
            for w in (*pred[v], *succ[v]):
                if w in inside and w not in seen:
                    seen.add(w)
                    stack.append(w)
        comps.append(sorted(comp))
    return comps


def _leading(nodes: list[int], anc: Sequence[int]) -> list[int]:
    """lead[q] = how many of the first nodes (in order) are all ancestors of nodes[q]."""
    lead = []
    for q, v in enumerate(nodes):
        k = 0
        while k < q and anc[v] >> nodes[k] & 1:
            k += 1
        lead.append(k)
    return lead


def _series_cuts(nodes: list[int], anc: Sequence[int]) -> list[int]:
    """Positions p (1..len-1) where nodes[:p] all reach all of nodes[p:]."""
    lead = _leading(nodes, anc)
    m = len(nodes)
    suffix_min = [m] * (m + 1)
    for q in range(m - 1, -1, -1):
        suffix_min[q] = min(suffix_min[q + 1], lead[q])
    return [p for p in range(1, m) if suffix_min[p] >= p]


def _serialize(
    nodes: list[int], anc: Sequence[int], pred: Sequence[set[int]], succ: Sequence[set[int]]
) -> list[tuple[int, int]]:
    """Edges that make the best topological cut a series cut (fewest lost orderings)."""
    m = len(nodes)
    best: tuple[int, int, int] | None = None
    for p in range(1, m):
        mask = 0
        for u in nodes[:p]:
            mask |= 1 << u
        missing = sum(p - (anc[v] & mask).bit_count() for v in nodes[p:])
        key = (missing, abs(m - 2 * p), p)
        if best is None or key < best:
            best = key
    assert best is not None
    p = best[2]
    before, after = set(nodes[:p]), set(nodes[p:])
    sinks = [u for u in nodes[:p] if not succ[u] & before]
    sources = [v for v in nodes[p:] if not pred[v] & after]
    return [(u, v) for u in sinks for v in sources if not anc[v] >> u & 1]


class Canon:
    """Interns structural keys of node ranges into small ints (see module docstring)."""

    def __init__(self, signatures: Sequence[Any], out_bytes: Sequence[float], tree: SPTree) -> None:
        self.sig = signatures
        self.out = out_bytes
        self.tree = tree
        self._ids: dict[Any, int] = {}
        self._cache: dict[tuple[int, int, int], int] = {}

    def range_id(self, node: SPNode, i: int, j: int) -> int:
        """Canonical id of children i..j (inclusive) of ``node`` (a leaf: i = j = 0)."""
        memo = (id(node), i, j)
        got = self._cache.get(memo)
        if got is not None:
            return got
        if node.kind == "leaf":
            members: list[int] = [node.node]
            kids: tuple[Any, ...] = ()
        else:
            chosen = node.children[i : j + 1]
            kids = tuple(self.range_id(c, 0, max(len(c.children) - 1, 0)) for c in chosen)
            members = [v for c in chosen for v in c.members]
        local = {v: k for k, v in enumerate(members)}
        producers: dict[int, int] = {}
        edges_in, edges, outs = [], [], []
        for v in members:
            for u in self.tree.preds[v]:
                if u in local:
                    edges.append((local[u], local[v]))
                else:
                    cls = producers.setdefault(u, len(producers))
                    edges_in.append((local[v], cls, self.out[u]))
            outs.append(sum(1 for w in self.tree.succs[v] if w not in local))
        key = (
            node.kind,
            kids,
            tuple(self.sig[v] for v in members) if node.kind == "leaf" else (),
            tuple(sorted(edges)),
            tuple(sorted(edges_in)),
            tuple(outs),
        )
        cid = self._ids.setdefault(key, len(self._ids))
        self._cache[memo] = cid
        return cid
