"""Paged KV cache: a page pool shared by all requests, a page table per request slot, and ragged
attention of a packed token batch over it (pure JAX; runs on every backend).

Layout: ``k_pages``/``v_pages`` [num_pages, page_size, Hkv, d] per layer; ``page_table``
[max_requests, max_pages_per_request] maps a slot's logical page i (tokens ``i*P .. i*P+P-1``)
to a pool page, `INVALID` (-1) where unused. A token row of the packed batch carries its slot
(`INVALID` for rows that are not inference tokens) and absolute position; it sees every key of
its slot at a position <= its own, which includes the keys written by this step's earlier
tokens of the same request (chunked prefill) because the write happens before the read.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jgraph.coserve._model import attend_segments

__all__ = ["INVALID", "paged_attention_reference", "paged_context", "write_pages"]

INVALID = -1
"""Marks an unused page-table entry or a batch row with no request slot."""


def write_pages(
    pages: jax.Array,
    new: jax.Array,
    page_table: jax.Array,
    slots: jax.Array,
    positions: jax.Array,
) -> jax.Array:
    """Scatters each row's key (or value) into its page; rows without a slot are dropped."""
    num_pages, psize = pages.shape[0], pages.shape[1]
    logical = jnp.clip(positions // psize, 0, page_table.shape[1] - 1)
    page = page_table[jnp.clip(slots, 0, page_table.shape[0] - 1), logical]
    ok = (slots >= 0) & (page >= 0) & (positions // psize < page_table.shape[1])
    page = jnp.where(ok, page, num_pages)  # out of range: mode="drop" skips the write
    return pages.at[page, positions % psize].set(new.astype(pages.dtype), mode="drop")


def paged_context(
    k_pages: jax.Array,
    v_pages: jax.Array,
    page_table: jax.Array,
    slots: jax.Array,
    positions: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-row keys, values [T, maxp*P, Hkv, d] and visibility mask [T, maxp*P] (causal, own slot).

    This gathers each row's whole page list: the simple reference; a fused kernel (Pallas/TPU
    ragged paged attention, FlashInfer) reads the pages in place instead.
    """
    T = slots.shape[0]
    maxp, psize = page_table.shape[1], k_pages.shape[1]
    rows = page_table[jnp.clip(slots, 0, page_table.shape[0] - 1)]  # [T, maxp]
    safe = jnp.clip(rows, 0, k_pages.shape[0] - 1)
    keys = k_pages[safe].reshape(T, maxp * psize, *k_pages.shape[2:])
    vals = v_pages[safe].reshape(T, maxp * psize, *v_pages.shape[2:])
    j = jnp.arange(maxp * psize, dtype=positions.dtype)
    page_ok = jnp.repeat(rows >= 0, psize, axis=1)
    mask = (slots >= 0)[:, None] & page_ok & (j[None, :] <= positions[:, None])
    return keys, vals, mask


def paged_attention_reference(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    page_table: jax.Array,
    slots: jax.Array,
    positions: jax.Array,
) -> jax.Array:
    """Ragged causal GQA of a packed batch (decode and prefill rows mixed) over the page pool.

    Args:
        q: post-RoPE queries [T, Hq, d].
        k_pages: key pool [num_pages, page_size, Hkv, d] (this step's keys already written).
        v_pages: value pool, same shape.
        page_table: [max_requests, max_pages_per_request] pool page per logical page.
        slots: request slot per row, `INVALID` for padding.
        positions: absolute position per row.

    Returns:
        [T, Hq, d]; padding rows get an arbitrary finite value.

    Example:
        >>> import jax.numpy as jnp
        >>> q = jnp.ones((1, 2, 4)); kp = jnp.ones((3, 2, 1, 4))
        >>> pt = jnp.array([[2, 0]])
        >>> out = paged_attention_reference(q, kp, kp, pt, jnp.array([0]), jnp.array([2]))
        >>> out.shape
        (1, 2, 4)
    """
    keys, vals, mask = paged_context(k_pages, v_pages, page_table, slots, positions)
    return attend_segments(q, [(keys, vals, mask)])
