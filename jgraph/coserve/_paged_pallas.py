"""Ragged paged attention as a Pallas kernel (Triton on GPU; interpret mode on CPU for tests).

The same math as `jgraph.coserve.attention.paged_attention_reference` (pure JAX): each row of
a packed batch attends, causally by absolute position, to the keys of its own request slot, read
in place from the page pool through the page table. Nothing of size [rows, context] is gathered
and no S x S score matrix is formed: keys are visited one page at a time with an online softmax.

Kernel layout. Queries are regrouped by KV head, ``[Hkv, T * Gp, d]`` (GQA: the ``G = Hq / Hkv``
query heads that share a KV head are adjacent; ``Gp`` is G padded to a power of two), and the
grid is ``(query blocks, KV heads, KV splits)``. A program owns ``block_q`` consecutive rows
times ``Gp`` heads (M = ``block_q * Gp`` >= 16 query vectors, the smallest Triton dot tile). Rows
of one block may belong to different requests (a packed batch mixes decode and prefill), so the
program loops over the distinct slots of its rows and, for each, over the slot's pages up to the
largest position its rows need; a row only takes keys of its own slot at positions <= its own.
The first block row of each slot does the work, later duplicates skip (their page count is
zero), so a request is read once per block even if its rows are not adjacent. With
``kv_splits`` > 1 each program takes only its share of every slot's pages and writes
unnormalized float32 partials (accumulator, running max, running sum); a small JAX epilogue
merges the splits (flash-decoding), which gives long-context decode batches enough programs to
fill a GPU.

Triton constraints (`jgraph.core.pallas.triton_tile_problem`): every loaded tile has
power-of-two sides, so ``page_size`` and ``head_dim`` must be powers of two; dots need >= 16
(``TRITON_MIN_DOT``) in each dimension, so a page smaller than 16 tokens (or a head smaller
than 16) uses broadcast-multiply-reduce instead of `jax.lax.dot_general`. Float32 dots run at
``Precision.HIGHEST`` (IEEE, not TF32) so the kernel meets the float32 forward tolerance of the
reference.

References:
    Kwon et al., "Efficient Memory Management for LLM Serving with PagedAttention", SOSP 2023;
    Dao et al., "FlashAttention", NeurIPS 2022 (online softmax); the JAX Pallas TPU "ragged paged
    attention" kernel for the packed-batch formulation.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jgraph.core import ConfigError
from jgraph.core.pallas import TRITON_MIN_DOT, interpret_on, is_pow2, next_pow2, triton_params
from jgraph.core.pallas import device_platform as device_platform

__all__ = [
    "device_platform",
    "paged_attention_pallas",
    "pallas_block_q",
    "resolve_attention_impl",
]

_WHOLE = pl.BlockSpec()  # the whole array (a pointer on Triton)


def resolve_attention_impl(
    impl: str,
    platform: str,
    *,
    head_dim: int = 128,
    page_size: int = 16,
    tensor_parallel: bool = False,
) -> tuple[str, bool]:
    """Maps ``CoServeConfig.attention_impl`` to ("reference" | "pallas", interpret) for a
    backend platform ("cpu", "cuda", "rocm", "gpu", "tpu"; see `device_platform`).

    "auto" picks the kernel where it was measured to be faster: on NVIDIA GPUs ("cuda"), when
    ``head_dim`` and ``page_size`` are powers of two (Triton tiles) and there is no
    tensor-parallel mesh. On an H200 (jax 0.11.2, Llama-3.1-8B attention shapes, bf16) it beat
    the reference 1.9-6.2x on decode, prefill and mixed batches and made a whole co-serving
    step 1.06-1.14x faster (BENCHMARKS.md). Everywhere else "auto" is the reference: ROCm is
    unmeasured, on CPU the kernel only runs in the Pallas interpreter (tests, not speed), and
    under `jax.shard_map` the kernel is untested.

    Raises:
        ConfigError: "pallas" with a head size that is not a power of two, with a
            tensor-parallel mesh, or on a TPU (the kernel is written for Triton; use
            "reference"). Page sizes are checked by `CoServeConfig`.

    Example:
        >>> resolve_attention_impl("auto", "cpu"), resolve_attention_impl("pallas", "cpu")
        (('reference', False), ('pallas', True))
        >>> resolve_attention_impl("auto", "cuda"), resolve_attention_impl("auto", "rocm")
        (('pallas', False), ('reference', False))
    """
    if impl == "reference":
        return "reference", False
    if impl == "auto":
        tiles_ok = is_pow2(head_dim) and is_pow2(page_size)
        if platform == "cuda" and tiles_ok and not tensor_parallel:
            return "pallas", False
        return "reference", False
    if not is_pow2(head_dim):
        raise ConfigError(
            "LlamaConfig.head_dim",
            head_dim,
            "must be a power of two with attention_impl='pallas' (Triton tile shapes)",
            "use attention_impl='reference' for this model",
        )
    if tensor_parallel:
        # The Pallas interpreter rejects shard_map's varying-axis checks (jax 0.10.2), so the
        # kernel under tensor parallelism could not be tested here: refuse rather than guess.
        raise ConfigError(
            "CoServeConfig.attention_impl",
            impl,
            "is not supported with a tensor-parallel mesh yet",
            "use attention_impl='reference' (or 'auto') with mesh=...",
        )
    if platform in ("gpu", "cuda", "rocm", "cpu"):
        return "pallas", interpret_on(platform)
    raise ConfigError(
        "CoServeConfig.attention_impl",
        impl,
        f"has no kernel for platform {platform!r} (the Pallas kernel targets Triton GPUs)",
        "use attention_impl='reference' (or 'auto')",
    )


def pallas_block_q(n_heads: int, n_kv_heads: int, block_q: int | None = None) -> int:
    """Rows per program: the default makes M = rows * padded group the 16-row dot minimum."""
    gp = next_pow2(n_heads // n_kv_heads)
    if block_q is None:
        return max(1, TRITON_MIN_DOT // gp)
    if not is_pow2(block_q):
        raise ConfigError("block_q", block_q, "must be a power of two >= 1", "use 1, 2, 4, ...")
    if block_q * gp < TRITON_MIN_DOT:
        raise ConfigError(
            "block_q",
            block_q,
            f"gives {block_q * gp} query vectors per program (padded GQA group {gp})",
            f"use block_q >= {TRITON_MIN_DOT // gp}",
        )
    return block_q


def _kernel(
    pt_ref, slots_ref, pos_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref,
    *, block_q, gp, page, use_dot, prec, splits, pages_per_step,
):  # fmt: skip
    m_rows = block_q * gp
    b, h, part = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    base = b * m_rows
    n_slots, maxp = pt_ref.shape
    q = q_ref[...].astype(jnp.float32) * (1.0 / math.sqrt(q_ref.shape[-1]))  # [M, d]
    if use_dot:
        q = q.astype(q_ref.dtype)
    row_slot = slots_ref[pl.ds(base, m_rows)]  # [M]
    row_pos = pos_ref[pl.ds(base, m_rows)]  # [M]
    rank = jax.lax.broadcasted_iota(jnp.int32, (m_rows,), 0)
    key_off = jax.lax.broadcasted_iota(jnp.int32, (m_rows, page), 1)

    def scores(k):  # [M, P] float32
        if use_dot:
            dn = (((1,), (1,)), ((), ()))
            return jax.lax.dot_general(q, k, dn, precision=prec, preferred_element_type=jnp.float32)
        return jnp.sum(q[:, None, :] * k.astype(jnp.float32)[None, :, :], axis=2)

    def weighted(p, v):  # [M, d] float32
        if use_dot:
            dn = (((1,), (0,)), ((), ()))
            pv = p.astype(v.dtype)
            return jax.lax.dot_general(
                pv, v, dn, precision=prec, preferred_element_type=jnp.float32
            )
        return jnp.sum(p[:, :, None] * v.astype(jnp.float32)[None, :, :], axis=1)

    def per_row(j, carry):
        s = slots_ref[base + j * gp]
        mine = row_slot == s
        seen = jnp.max(jnp.where(mine & (rank < j * gp), 1, 0)) > 0  # an earlier row had s
        need = jnp.max(jnp.where(mine, row_pos, -1)) // page + 1
        ok = (s >= 0) & (s < n_slots) & jnp.logical_not(seen)
        n_pages = jnp.where(ok, jnp.minimum(need, maxp), 0)
        s_safe = jnp.clip(s, 0, n_slots - 1)
        # KV split (flash-decoding): this program takes pages [lo, hi) of the slot's range.
        per = (n_pages + splits - 1) // splits
        lo = jnp.minimum(part * per, n_pages)
        hi = jnp.minimum(lo + per, n_pages)

        def per_step(i, carry):
            # `pages_per_step` pages per online-softmax update: their loads are independent, so
            # more bytes are in flight per iteration; pages past `hi` are masked out (their
            # loads read a clamped, valid page).
            m_i, l_i, acc = carry
            first = lo + i * pages_per_step
            parts = []
            for u in range(pages_per_step):
                lp = first + u
                pg = jnp.where(lp < hi, pt_ref[s_safe, jnp.minimum(lp, maxp - 1)], -1)
                k = k_ref[jnp.maximum(pg, 0), :, h, :]  # [P, d], read in place
                v = v_ref[jnp.maximum(pg, 0), :, h, :]
                kpos = lp * page + key_off
                vis = mine[:, None] & (kpos <= row_pos[:, None]) & (pg >= 0)
                parts.append((vis, jnp.where(vis, scores(k), -jnp.inf), v))
            m_new = m_i
            for _, sc, _ in parts:
                m_new = jnp.maximum(m_new, jnp.max(sc, axis=1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with nothing visible yet
            alpha = jnp.exp(m_i - m_safe)
            l_new, acc_new = alpha * l_i, alpha[:, None] * acc
            for vis, sc, v in parts:
                p = jnp.where(vis, jnp.exp(sc - m_safe[:, None]), 0.0)
                l_new, acc_new = l_new + jnp.sum(p, axis=1), acc_new + weighted(p, v)
            return m_new, l_new, acc_new

        n_steps = (hi - lo + pages_per_step - 1) // pages_per_step
        return jax.lax.fori_loop(0, n_steps, per_step, carry)

    init = (
        jnp.full((m_rows,), -jnp.inf, jnp.float32),
        jnp.zeros((m_rows,), jnp.float32),
        jnp.zeros((m_rows, q_ref.shape[-1]), jnp.float32),
    )
    m_f, l_f, acc = jax.lax.fori_loop(0, block_q, per_row, init)
    # Unnormalized partials (float32); `_combine` merges the splits and divides by the sum.
    o_ref[...] = acc
    m_ref[...] = m_f
    l_ref[...] = l_f


def _combine(acc, m, denom):
    """Merges the KV splits' online-softmax partials: acc [splits, ..., d], m and denom
    (running max and sum of exponentials) [splits, ...]."""
    m_all = jnp.max(m, axis=0)
    m_safe = jnp.where(m_all == -jnp.inf, 0.0, m_all)
    w = jnp.exp(m - m_safe[None])  # 0 for splits that saw no key
    den = jnp.sum(w * denom, axis=0)
    num = jnp.sum(w[..., None] * acc, axis=0)
    # Rows with no visible key (padding) get 0 instead of 0/0.
    return num / jnp.where(den > 0, den, 1.0)[..., None]


def paged_attention_pallas(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    page_table: jax.Array,
    slots: jax.Array,
    positions: jax.Array,
    *,
    block_q: int | None = None,
    kv_splits: int | None = None,
    interpret: bool = False,
    pages_per_step: int = 2,
    num_warps: int = 4,
    num_stages: int = 2,
) -> jax.Array:
    """Ragged causal GQA of a packed batch over the page pool, as one Pallas kernel.

    Same contract as `paged_attention_reference` (post-RoPE q [T, Hq, d]; pools
    [num_pages, page_size, Hkv, d]; page_table [R, max_pages]; per-row slot, `INVALID` for
    padding, and absolute position). Rows whose slot is outside [0, R) get zeros.

    Args:
        q: queries [T, Hq, d].
        k_pages: key pool, this step's keys already written.
        v_pages: value pool.
        page_table: pool page per (slot, logical page), -1 where unused.
        slots: request slot per row.
        positions: absolute position per row.
        block_q: rows per program (power of two); default: 16 query vectors per program, the
            Triton minimum (small blocks suit decode; prefill-heavy batches gain from larger).
        kv_splits: programs that share one block's context (flash-decoding: each takes a
            contiguous share of every slot's pages, the partial softmax states are merged
            afterwards); more parallelism for long contexts and few rows. Default: one split
            per 16 pages of the page-table width, at most 8.
        pages_per_step: pages loaded per online-softmax update (their loads overlap).
        interpret: run the kernel body with the Pallas interpreter (CPU tests).
        num_warps: Triton warps per program.
        num_stages: Triton software-pipelining stages.

    Returns:
        [T, Hq, d] in ``q.dtype``.

    Raises:
        ConfigError: ``page_size`` or ``head_dim`` not a power of two, a bad ``block_q`` or
            ``kv_splits``, ``pages_per_step`` < 1, or Triton parameters that
            `jgraph.core.pallas.triton_params` rejects.

    Example:
        >>> import jax.numpy as jnp
        >>> q = jnp.ones((1, 2, 4)); kp = jnp.ones((3, 2, 1, 4))
        >>> out = paged_attention_pallas(q, kp, kp, jnp.array([[2, 0]]), jnp.array([0]),
        ...                              jnp.array([2]), interpret=True)
        >>> out.shape
        (1, 2, 4)
    """
    T, hq, d = q.shape
    _, page, hkv, _ = k_pages.shape
    for name, val in (("page_size", page), ("head_dim", d)):
        if not is_pow2(val):
            raise ConfigError(
                name, val, "must be a power of two for the Pallas kernel (Triton tiles)",
                "use 8/16/32 tokens per page and 64/128 head dims, or attention_impl='reference'",
            )  # fmt: skip
    g = hq // hkv
    gp = next_pow2(g)
    bq = pallas_block_q(hq, hkv, block_q)
    tp = -(-T // bq) * bq
    m_rows = bq * gp
    # [T, Hq, d] -> [Hkv, Tp * Gp, d]: each KV head's query group contiguous per row.
    qg = q.reshape(T, hkv, g, d)
    qg = jnp.pad(qg, ((0, tp - T), (0, 0), (0, gp - g), (0, 0)))
    qg = jnp.transpose(qg, (1, 0, 2, 3)).reshape(hkv, tp * gp, d)
    pad_rows = ((0, tp - T),)
    slot_e = jnp.repeat(jnp.pad(slots.astype(jnp.int32), pad_rows, constant_values=-1), gp)
    pos_e = jnp.repeat(jnp.pad(positions.astype(jnp.int32), pad_rows), gp)
    maxp = page_table.shape[1]
    splits = max(1, min(8, maxp // 16)) if kv_splits is None else kv_splits
    if splits < 1:
        raise ConfigError("kv_splits", splits, "must be >= 1", "use 1 (no split) or more")
    if pages_per_step < 1:
        raise ConfigError("pages_per_step", pages_per_step, "must be >= 1", "use 1, 2 or 4")
    use_dot = page >= TRITON_MIN_DOT and d >= TRITON_MIN_DOT
    prec = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    kernel = functools.partial(
        _kernel,
        block_q=bq,
        gp=gp,
        page=page,
        use_dot=use_dot,
        prec=prec,
        splits=splits,
        pages_per_step=pages_per_step,
    )
    qspec = pl.BlockSpec((None, m_rows, d), lambda b, h, j: (h, b, 0))
    ospec = pl.BlockSpec((None, None, m_rows, d), lambda b, h, j: (j, h, b, 0))
    sspec = pl.BlockSpec((None, None, m_rows), lambda b, h, j: (j, h, b))
    # Shaped from the regrouped queries: `like` also carries how they vary over manual mesh
    # axes (the kernel inside a `jax.shard_map`).
    like = jax.ShapeDtypeStruct.like(qg)
    f32 = jnp.float32
    acc, m, denom = pl.pallas_call(
        kernel,
        grid=(tp // bq, hkv, splits),
        # Page table, row metadata and the pools are passed whole: the kernel reads the pages
        # it needs by index (no blocking is possible for a data-dependent gather).
        in_specs=[
            _WHOLE,
            _WHOLE,
            _WHOLE,
            qspec,
            _WHOLE,
            _WHOLE,
        ],
        out_specs=(ospec, sspec, sspec),
        out_shape=(
            like.update(shape=(splits, hkv, tp * gp, d), dtype=f32),
            like.update(shape=(splits, hkv, tp * gp), dtype=f32),
            like.update(shape=(splits, hkv, tp * gp), dtype=f32),
        ),
        interpret=interpret,
        # Triton parameters select the Triton backend on GPU (without them Pallas picks Mosaic
        # GPU, which rejects plain dots); the interpreter ignores them.
        compiler_params=triton_params(num_warps=num_warps, num_stages=num_stages),
        name="jgraph_ragged_paged_attention",
    )(page_table.astype(jnp.int32), slot_e, pos_e, qg, k_pages, v_pages)
    out = _combine(acc, m, denom).astype(q.dtype).reshape(hkv, tp, gp, d)[:, :T, :g]
    return jnp.transpose(out, (1, 0, 2, 3)).reshape(T, hq, d)
