"""The Pallas ragged paged-attention kernel (CPU: Pallas interpreter) against the pure-JAX
reference and float64 dense attention, and its lowering to Triton for CUDA."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from jgraph.core import ConfigError
from jgraph.coserve.attention import (
    INVALID,
    paged_attention_pallas,
    paged_attention_reference,
    write_pages,
)
from jgraph.testing import assert_trees_close

NPAGES, MAXP = 24, 4


def _dense(q, k, v, positions):
    """Causal GQA in float64 numpy for one request: q [n, Hq, d] at ``positions``."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    kr = np.repeat(k, hq // hkv, axis=1)
    vr = np.repeat(v, hq // hkv, axis=1)
    s = np.einsum("thd,shd->hts", q, kr) / math.sqrt(d)
    s = np.where(np.arange(k.shape[0])[None, None, :] <= positions[None, :, None], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", a, vr)


def _case(hq, hkv, d, psize, reqs, *, seed=0, pad=2, dtype=np.float32, shuffle=False):
    """A pool with history written, and this step's packed rows.

    ``reqs``: (length after this step, tokens in this step) per request slot.
    Returns (args, per-request (rows, k, v, positions)) for the dense check.
    """
    rng = np.random.default_rng(seed)
    R = len(reqs)
    pt = rng.permutation(NPAGES)[: R * MAXP].reshape(R, MAXP).astype(np.int32)
    for r, (n, _) in enumerate(reqs):
        pt[r, -(-n // psize) :] = INVALID  # a request holds only the pages it needs
    kp = jnp.asarray(rng.normal(size=(NPAGES, psize, hkv, d)), dtype)  # stale junk
    vp = jnp.asarray(rng.normal(size=(NPAGES, psize, hkv, d)), dtype)
    ks = [rng.normal(size=(n, hkv, d)).astype(dtype) for n, _ in reqs]
    vs = [rng.normal(size=(n, hkv, d)).astype(dtype) for n, _ in reqs]
    pt_j = jnp.asarray(pt)
    for r, (n, _) in enumerate(reqs):
        kp = write_pages(kp, jnp.asarray(ks[r]), pt_j, jnp.full(n, r), jnp.arange(n))
        vp = write_pages(vp, jnp.asarray(vs[r]), pt_j, jnp.full(n, r), jnp.arange(n))
    slots = np.concatenate([np.full(m, r) for r, (_, m) in enumerate(reqs)] + [[INVALID] * pad])
    pos = np.concatenate([np.arange(n - m, n) for n, m in reqs] + [[0] * pad])
    order = rng.permutation(len(slots)) if shuffle else np.arange(len(slots))
    slots, pos = slots[order].astype(np.int32), pos[order].astype(np.int32)
    q = rng.normal(size=(len(slots), hq, d)).astype(dtype)
    args = (jnp.asarray(q), kp, vp, pt_j, jnp.asarray(slots), jnp.asarray(pos))
    dense = [(np.flatnonzero(slots == r), ks[r], vs[r]) for r in range(R)]
    return args, dense


# (Hq, Hkv, d, page, requests): decode-only, prefill chunks, mixed, GQA groups 1 / 3 (padded
# to 4) / 4 / 8, pages of 4 (broadcast-reduce path) and 16 (dot path), partially filled pages.
CASES = {
    "decode_only": (4, 2, 16, 4, [(9, 1), (5, 1), (16, 1), (1, 1)]),
    "prefill_chunks": (4, 2, 16, 4, [(7, 7), (15, 6)]),
    "mixed": (4, 2, 16, 4, [(9, 1), (5, 5), (14, 3)]),
    "mha_group1": (2, 2, 16, 16, [(40, 1), (23, 9), (64, 16)]),
    "gqa_group3": (6, 2, 32, 16, [(33, 1), (17, 17), (50, 2)]),
    "gqa_group4_dot": (8, 2, 16, 16, [(20, 1), (3, 3), (31, 12)]),
    "gqa_group8": (8, 1, 16, 8, [(11, 1), (25, 10)]),
}


# `make test-fast` keeps mixed (shuffled decode + prefill), prefill chunks and the padded GQA
# group on the dot path; the other shapes run in `make test` and CI.
_FAST_CASES = ("mixed", "prefill_chunks", "gqa_group3")


@pytest.mark.parametrize(
    "name",
    [n if n in _FAST_CASES else pytest.param(n, marks=pytest.mark.slow) for n in sorted(CASES)],
)
def test_kernel_equals_reference_and_dense(name):
    hq, hkv, d, psize, reqs = CASES[name]
    args, dense = _case(hq, hkv, d, psize, reqs, shuffle=name == "mixed")
    ref = jax.jit(paged_attention_reference)(*args)
    out = jax.jit(lambda *a: paged_attention_pallas(*a, interpret=True))(*args)
    valid = np.asarray(args[4]) >= 0
    assert_trees_close(np.asarray(out)[valid], np.asarray(ref)[valid], kind="forward")
    assert np.all(np.asarray(out)[~valid] == 0.0)  # padding rows: zeros, never NaN
    q, pos = np.asarray(args[0], np.float64), np.asarray(args[5])
    for rows, k, v in dense:
        want = _dense(q[rows], k.astype(np.float64), v.astype(np.float64), pos[rows])
        assert_trees_close(np.asarray(out)[rows], want, kind="forward")


@pytest.mark.parametrize(
    ("hq", "hkv", "block_q", "kv_splits", "pages_per_step"),
    [
        pytest.param(16, 1, 1, 1, 1, marks=pytest.mark.slow),  # (16, 1, 1, 2, 3) is the fast twin
        (4, 2, 16, 3, 1),
        (4, 2, 32, 8, 1),
        (4, 2, 16, 1, 2),
        (16, 1, 1, 2, 3),
    ],
)
def test_block_sizes_and_kv_splits(hq, hkv, block_q, kv_splits, pages_per_step):
    """One row per program (a GQA group of 16 fills the dot), and blocks of 16/32 rows that
    hold several requests (shuffled, so a request's rows are not adjacent: each slot must
    still be read exactly once per block); the context split over 3 programs (uneven shares)
    and over 8 (more splits than some requests have pages: empty shares must merge as 0);
    2 and 3 pages per online-softmax step (3 pages per request share: the last step is
    partly past the share and must be masked)."""
    reqs = [(30, 4), (12, 1), (45, 7), (2, 2)]
    args, _ = _case(hq, hkv, 16, 16, reqs, seed=3, shuffle=True)
    ref = paged_attention_reference(*args)
    out = jax.jit(
        lambda *a: paged_attention_pallas(
            *a,
            block_q=block_q,
            kv_splits=kv_splits,
            pages_per_step=pages_per_step,
            interpret=True,
        )
    )(*args)
    valid = np.asarray(args[4]) >= 0
    assert_trees_close(np.asarray(out)[valid], np.asarray(ref)[valid], kind="forward")
    assert np.all(np.asarray(out)[~valid] == 0.0)


def test_bfloat16_kernel_matches_reference():
    args, _ = _case(8, 2, 16, 16, [(20, 1), (31, 12)], dtype=jnp.bfloat16, seed=5)
    ref = paged_attention_reference(*args)
    out = jax.jit(lambda *a: paged_attention_pallas(*a, interpret=True))(*args)
    assert out.dtype == jnp.bfloat16
    valid = np.asarray(args[4]) >= 0
    assert_trees_close(np.asarray(out)[valid], np.asarray(ref)[valid], kind="forward")


def test_corrupted_page_table_changes_the_output():
    args, _ = _case(4, 2, 16, 4, [(9, 1), (14, 3)], seed=1)
    q, kp, vp, pt, slots, pos = args
    kernel = jax.jit(lambda *a: paged_attention_pallas(*a, interpret=True))
    good = kernel(*args)
    bad_pt = pt.at[0, 0].set(pt[1, 1])  # slot 0's first page now points at slot 1's data
    bad = kernel(q, kp, vp, bad_pt, slots, pos)
    row0 = np.asarray(slots) == 0
    assert np.abs(np.asarray(bad - good)[row0]).max() > 1e-2
    # The reference sees the same corruption the same way (the kernel reads through the table).
    assert_trees_close(
        np.asarray(bad)[row0],
        np.asarray(paged_attention_reference(q, kp, vp, bad_pt, slots, pos))[row0],
        kind="forward",
    )


def test_bad_shapes_are_rejected():
    args, _ = _case(4, 2, 16, 4, [(5, 5)])
    q, kp, vp, pt, slots, pos = args
    six = jnp.zeros((NPAGES, 6, 2, 16))
    with pytest.raises(ConfigError, match=r"page_size=6: must be a power of two"):
        paged_attention_pallas(q, six, six, pt, slots, pos, interpret=True)
    with pytest.raises(ConfigError, match=r"head_dim=12: must be a power of two"):
        paged_attention_pallas(q[..., :12], kp[..., :12], vp[..., :12], pt, slots, pos)
    with pytest.raises(ConfigError, match=r"kv_splits=0: must be >= 1"):
        paged_attention_pallas(*args, kv_splits=0, interpret=True)
    with pytest.raises(ConfigError, match=r"pages_per_step=0: must be >= 1"):
        paged_attention_pallas(*args, pages_per_step=0, interpret=True)
    with pytest.raises(ConfigError, match=r"block_q=3: must be a power of two"):
        paged_attention_pallas(*args, block_q=3, interpret=True)
    with pytest.raises(ConfigError, match=r"block_q=2: gives 4 query vectors.*use block_q >= 8"):
        paged_attention_pallas(*args, block_q=2, interpret=True)


# Both inner paths (dot for pages >= 16, broadcast-reduce below), GQA padding, and bf16.
@pytest.mark.parametrize(
    ("hq", "hkv", "d", "psize", "dtype"),
    [(8, 2, 16, 16, jnp.float32), (6, 2, 32, 16, jnp.bfloat16), (4, 2, 16, 4, jnp.float32)],
)
def test_kernel_lowers_to_triton_for_cuda(hq, hkv, d, psize, dtype):
    """Lowers through Pallas' Triton backend on this CPU machine (no GPU needed): the block
    shapes, dot sizes and ops are all accepted by the Triton lowering rules."""
    args, _ = _case(hq, hkv, d, psize, [(9, 1), (30, 5)], dtype=dtype)
    exported = jax.export.export(
        jax.jit(lambda *a: paged_attention_pallas(*a, num_warps=4, num_stages=2)),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*args)
    text = exported.mlir_module()
    assert "__gpu$xla.gpu.triton" in text
    assert "jgraph_ragged_paged_attention" in text
    assert exported.out_avals[0].shape == args[0].shape


def test_triton_compiler_params_are_the_public_api():
    # The kernel relies on these names (jax 0.10.2 here, 0.11.2 on the GPU image).
    assert hasattr(pl, "triton")
    assert hasattr(pl.triton, "CompilerParams")
    pl.triton.CompilerParams(num_warps=4, num_stages=2)


@pytest.mark.parametrize(("block_q", "kv_splits", "pps"), [(None, None, 1), (16, 1, 4)])
def test_llama8b_shapes_lower_to_triton(block_q, kv_splits, pps):
    """The shapes the GPU benchmark runs (Hq 32, Hkv 8, d 128, bf16, 4096-token contexts;
    by default 8 KV splits), traced abstractly: nothing is allocated."""
    t, pages, maxp = 160, 4097, 256
    sds = jax.ShapeDtypeStruct
    args = (
        sds((t, 32, 128), jnp.bfloat16),
        sds((pages, 16, 8, 128), jnp.bfloat16),
        sds((pages, 16, 8, 128), jnp.bfloat16),
        sds((32, maxp), jnp.int32),
        sds((t,), jnp.int32),
        sds((t,), jnp.int32),
    )
    exported = jax.export.export(
        jax.jit(
            lambda *a: paged_attention_pallas(
                *a, block_q=block_q, kv_splits=kv_splits, pages_per_step=pps
            )
        ),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*args)
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()


@pytest.mark.gpu
@pytest.mark.parametrize(("kv_splits", "pps"), [(1, 1), (3, 1), (1, 3)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_triton_kernel_equals_reference(name, kv_splits, pps):
    """On a GPU: the kernel compiled by Triton (not interpreted) against the reference."""
    hq, hkv, d, psize, reqs = CASES[name]
    args, _ = _case(hq, hkv, d, psize, reqs, shuffle=True)
    ref = jax.jit(paged_attention_reference)(*args)
    out = jax.jit(lambda *a: paged_attention_pallas(*a, kv_splits=kv_splits, pages_per_step=pps))(
        *args
    )
    valid = np.asarray(args[4]) >= 0
    assert_trees_close(np.asarray(out)[valid], np.asarray(ref)[valid], kind="forward")
