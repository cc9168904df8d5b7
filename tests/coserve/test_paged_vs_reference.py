"""Paged attention over a packed, ragged batch equals dense causal attention per request."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jgraph.coserve.attention import INVALID, paged_attention_reference, write_pages
from jgraph.testing import assert_trees_close

HQ, HKV, D, P, NPAGES, MAXP = 4, 2, 8, 4, 16, 4


def _dense(q, k, v):
    """Causal GQA in float64 numpy for one request: q [n, Hq, d] at the last n positions."""
    T, n = k.shape[0], q.shape[0]
    kr = np.repeat(k, HQ // HKV, axis=1)
    vr = np.repeat(v, HQ // HKV, axis=1)
    s = np.einsum("thd,shd->hts", q, kr) / math.sqrt(D)
    pos = np.arange(T - n, T)
    s = np.where(np.arange(T)[None, None, :] <= pos[None, :, None], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", a, vr)


def test_paged_equals_dense_for_mixed_prefill_and_decode():
    rng = np.random.default_rng(0)
    # Request lengths so far (after this step) and tokens processed in this step.
    lens, new = [9, 5, 14], [1, 5, 3]  # decode, full prefill, prefill chunk
    pages = rng.permutation(NPAGES)[: 3 * MAXP].reshape(3, MAXP).astype(np.int32)
    pages[1, 2:] = INVALID  # a short request holds only two pages
    page_table = jnp.asarray(pages)
    ks = [rng.normal(size=(n, HKV, D)).astype(np.float32) for n in lens]
    vs = [rng.normal(size=(n, HKV, D)).astype(np.float32) for n in lens]
    kp = jnp.asarray(rng.normal(size=(NPAGES, P, HKV, D)).astype(np.float32))  # stale junk
    vp = jnp.asarray(rng.normal(size=(NPAGES, P, HKV, D)).astype(np.float32))
    # History (written in earlier steps).
    for r, (n, m) in enumerate(zip(lens, new, strict=True)):
        if n - m:
            slots, pos = jnp.full(n - m, r), jnp.arange(n - m)
            kp = write_pages(kp, jnp.asarray(ks[r][: n - m]), page_table, slots, pos)
            vp = write_pages(vp, jnp.asarray(vs[r][: n - m]), page_table, slots, pos)
    # This step's packed batch, with two padding rows in between.
    slots = np.concatenate([np.full(m, r) for r, m in enumerate(new)] + [[INVALID] * 2])
    pos = np.concatenate([np.arange(n - m, n) for n, m in zip(lens, new, strict=True)] + [[0, 0]])
    knew = np.concatenate([ks[r][n - m :] for r, (n, m) in enumerate(zip(lens, new, strict=True))])
    vnew = np.concatenate([vs[r][n - m :] for r, (n, m) in enumerate(zip(lens, new, strict=True))])
    knew = np.concatenate([knew, np.full((2, HKV, D), 1e6, np.float32)])  # padding: must not land
    vnew = np.concatenate([vnew, np.full((2, HKV, D), 1e6, np.float32)])
    before = np.asarray(kp)
    kp = write_pages(kp, jnp.asarray(knew), page_table, jnp.asarray(slots), jnp.asarray(pos))
    vp = write_pages(vp, jnp.asarray(vnew), page_table, jnp.asarray(slots), jnp.asarray(pos))
    assert np.abs(np.asarray(kp)).max() < 1e5, "a padding row was written into the pool"
    assert np.sum(np.any(np.asarray(kp) != before, axis=(2, 3))) == sum(new)
    q = rng.normal(size=(len(slots), HQ, D)).astype(np.float32)
    out = jax.jit(paged_attention_reference)(
        jnp.asarray(q), kp, vp, page_table, jnp.asarray(slots), jnp.asarray(pos)
    )
    assert np.all(np.isfinite(np.asarray(out)))
    row = 0
    for r, m in enumerate(new):
        ref = _dense(q[row : row + m].astype(np.float64), ks[r], vs[r])
        assert_trees_close(np.asarray(out[row : row + m]), ref, kind="forward")
        row += m
    # Negative check: another request's context gives a different answer.
    wrong = _dense(q[0:1].astype(np.float64), ks[2][:9], vs[2][:9])
    assert np.abs(np.asarray(out[0:1]) - wrong).max() > 1e-2
