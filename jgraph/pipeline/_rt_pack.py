"""Per-stage pytrees packed into flat per-dtype buffers of one shape on every device.

SPMD devices run one program, so every device's parameter (and optimizer
state) buffer has the same shape: one flat vector per dtype, as long as the
largest stage needs. Each stage reads its own layout out of it with static
slices. A device therefore holds its own stage's state plus padding, never the
other stages'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PackSpec", "buffer_sizes", "pack", "pack_host", "pack_spec", "unpack"]


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """Where each leaf of one pytree lives: ``(dtype key, offset, shape)``."""

    treedef: Any
    leaves: tuple[tuple[str, int, tuple[int, ...]], ...]
    sizes: Mapping[str, int]


def pack_spec(tree: Any) -> PackSpec:
    """The layout of ``tree`` (arrays or ShapeDtypeStructs)."""
    leaves, treedef = jax.tree.flatten(tree)
    sizes: dict[str, int] = {}
    out = []
    for leaf in leaves:
        key = np.dtype(leaf.dtype).name
        n = int(np.prod(leaf.shape, dtype=np.int64))
        out.append((key, sizes.get(key, 0), tuple(leaf.shape)))
        sizes[key] = sizes.get(key, 0) + n
    return PackSpec(treedef=treedef, leaves=tuple(out), sizes=sizes)


def buffer_sizes(specs: Sequence[PackSpec]) -> dict[str, int]:
    """Per dtype, the longest any spec needs (at least 1 so no buffer is empty)."""
    keys = sorted({k for s in specs for k in s.sizes})
    return {k: max(1, max(s.sizes.get(k, 0) for s in specs)) for k in keys}


def unpack(spec: PackSpec, bufs: Mapping[str, Any]) -> Any:
    """The pytree from flat buffers (static slices; works on jnp and np arrays)."""
    leaves = []
    for key, off, shape in spec.leaves:
        n = int(np.prod(shape, dtype=np.int64))
        leaves.append(bufs[key][off : off + n].reshape(shape))
    return jax.tree.unflatten(spec.treedef, leaves)


def pack(spec: PackSpec, tree: Any, sizes: Mapping[str, int]) -> dict[str, jax.Array]:
    """Flat buffers of ``sizes`` holding ``tree`` in ``spec``'s layout, zero padded."""
    leaves = jax.tree.leaves(tree)
    parts: dict[str, list[Any]] = {k: [] for k in sizes}
    for (key, _, _), leaf in zip(spec.leaves, leaves, strict=True):
        parts[key].append(jnp.ravel(leaf).astype(key))
    out = {}
    for key, n in sizes.items():
        used = spec.sizes.get(key, 0)
        flat = parts[key] + [jnp.zeros((n - used,), key)]
        out[key] = jnp.concatenate(flat) if len(flat) > 1 else flat[0]
    return out


def pack_host(spec: PackSpec, tree: Any, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """`pack` in numpy on the host (building the initial sharded state)."""
    leaves = jax.tree.leaves(tree)
    out = {k: np.zeros((n,), k) for k, n in sizes.items()}
    for (key, off, shape), leaf in zip(spec.leaves, leaves, strict=True):
        n = int(np.prod(shape, dtype=np.int64))
        out[key][off : off + n] = np.asarray(leaf, dtype=key).ravel()
    return out
