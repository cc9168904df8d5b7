"""Ragged paged attention: the pure-JAX reference vs the Pallas kernel, same inputs, same run.

For each scenario (a packed batch of decode rows and/or prefill chunks over a paged KV pool)
both implementations are jitted and timed (median of repeated calls after warm-up) and their
outputs compared (max |difference| over non-padding rows). The ratio reference/kernel > 1 means
the kernel is faster. Kernel defaults: ``block_q`` = 16 query vectors per program, ``kv_splits``
= one per 16 pages of the page-table width, at most 8 (flash-decoding split of long contexts).

On a GPU the kernel runs through Pallas' Triton backend; this is the measurement that decides
whether ``CoServeConfig.attention_impl="auto"`` should pick the kernel there. On a CPU the kernel
runs in the Pallas interpreter: those timings are labelled "interpret" and are NOT a performance
number (the interpreter exists for correctness tests).

Sizes: ``--size 8b`` uses Llama-3.1-8B attention shapes (32 query heads, 8 KV heads, head 128,
bf16, pages of 16) with contexts up to 4096; ``small`` and ``tiny`` are CPU-sized. Default: 8b
on a GPU, small on CPU, tiny with ``--smoke``.

Usage:
    PYTHONPATH=. python scripts/bench_paged_attention.py [--smoke] [--size 8b] [--out r.json]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jgraph.core import format_table, time_call, write_results
from jgraph.coserve import INVALID, paged_attention, paged_attention_pallas

# (hq, hkv, head_dim, page_size, dtype)
SHAPES = {
    "tiny": (4, 2, 16, 16, "float32"),
    "small": (8, 2, 32, 16, "float32"),
    "8b": (32, 8, 128, 16, "bfloat16"),
}
# name -> requests as (context length after this step, tokens in this step)
SCENARIOS = {
    "tiny": {
        "decode": [(40, 1)] * 8,
        "prefill": [(64, 32)],
        "mixed": [(40, 1)] * 4 + [(48, 16)],
    },
    "small": {
        "decode": [(256, 1)] * 32,
        "prefill": [(256, 128)],
        "mixed": [(256, 1)] * 16 + [(192, 64)],
    },
    "8b": {
        "decode_ctx1024": [(1024, 1)] * 64,
        "decode_ctx4096": [(4096, 1)] * 32,
        "prefill_chunk256_ctx2048": [(2048, 256)],
        "mixed_32dec_ctx2048+chunk128": [(2048, 1)] * 32 + [(1024, 128)],
    },
}


def make_inputs(shape: str, reqs: list[tuple[int, int]], *, seed: int = 0):
    """Pool, page table (pages scattered at random) and a packed batch with 4 padding rows."""
    hq, hkv, d, page, dtype = SHAPES[shape]
    rng = np.random.default_rng(seed)
    maxp = max(-(-n // page) for n, _ in reqs)
    num_pages = sum(-(-n // page) for n, _ in reqs) + 1
    perm = rng.permutation(num_pages).astype(np.int32)
    pt = np.full((len(reqs), maxp), INVALID, np.int32)
    used = 0
    for r, (n, _) in enumerate(reqs):
        k = -(-n // page)
        pt[r, :k] = perm[used : used + k]
        used += k
    dt = jnp.dtype(dtype)
    key = jax.random.key(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    kp = jax.random.normal(k1, (num_pages, page, hkv, d), jnp.float32).astype(dt)
    vp = jax.random.normal(k2, (num_pages, page, hkv, d), jnp.float32).astype(dt)
    slots = np.concatenate([np.full(m, r) for r, (_, m) in enumerate(reqs)] + [[INVALID] * 4])
    pos = np.concatenate([np.arange(n - m, n) for n, m in reqs] + [[0] * 4])
    q = jax.random.normal(k3, (len(slots), hq, d), jnp.float32).astype(dt)
    return q, kp, vp, jnp.asarray(pt), jnp.asarray(slots, jnp.int32), jnp.asarray(pos, jnp.int32)


def bench(size: str, *, repeats: int, variants: list[tuple[int | None, int | None]]) -> list[dict]:
    backend = jax.default_backend()
    interpret = backend != "gpu"
    device = jax.devices()[0].device_kind
    mode = "interpret (CPU: not a performance number)" if interpret else "triton"
    ref = jax.jit(paged_attention)
    rows = []
    for name, reqs in SCENARIOS[size].items():
        args = make_inputs(size, reqs)
        valid = np.asarray(args[4]) >= 0
        t_ref = time_call(ref, *args, warmup=2, repeats=repeats)
        want = np.asarray(ref(*args).astype(jnp.float32))[valid]
        for bq, ns in variants:
            ker = jax.jit(
                lambda *a, bq=bq, ns=ns: paged_attention_pallas(
                    *a, block_q=bq, kv_splits=ns, interpret=interpret
                )
            )
            t_ker = time_call(ker, *args, warmup=2, repeats=repeats)
            got = np.asarray(ker(*args).astype(jnp.float32))[valid]
            rows.append(
                {
                    "device": device,
                    "kernel_mode": mode,
                    "shape": size,
                    "dtype": SHAPES[size][4],
                    "scenario": name,
                    "rows": int(valid.sum()),
                    "max_ctx": max(n for n, _ in reqs),
                    "block_q": "default" if bq is None else bq,
                    "kv_splits": "default" if ns is None else ns,
                    "reference_ms": 1e3 * t_ref.median,
                    "pallas_ms": 1e3 * t_ker.median,
                    "reference/pallas": t_ref.median / t_ker.median,
                    "max_abs_diff": float(np.max(np.abs(got - want))),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, CPU interpret, seconds")
    ap.add_argument("--size", choices=sorted(SHAPES), default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help="write JSON results here")
    args = ap.parse_args(argv)
    gpu = jax.default_backend() == "gpu"
    size = args.size or ("tiny" if args.smoke else "8b" if gpu else "small")
    repeats = args.repeats or (3 if args.smoke else 20)
    # The default block (16 query vectors) suits decode; 4x larger blocks suit prefill chunks.
    # kv_splits=1 shows what the default split of long contexts (flash-decoding) buys.
    big = 4 * max(1, 16 // _group_pad(size))
    variants = [(None, None)] if args.smoke else [(None, None), (big, None), (None, 1)]
    rows = bench(size, repeats=repeats, variants=variants)
    kind = jax.devices()[0].device_kind
    print(f"Ragged paged attention on {kind} ({jax.default_backend()}), jax {jax.__version__}")
    if not gpu:
        print("NOTE: the kernel ran in the Pallas interpreter; its times are not a performance")
        print("number (run this script on a GPU to measure the Triton kernel).")
    print(format_table(rows, [c for c in rows[0] if c not in ("device", "kernel_mode")]))
    if args.out:
        write_results(args.out, name="bench_paged_attention", rows=rows, smoke=args.smoke)
    return 0


def _group_pad(size: str) -> int:
    hq, hkv = SHAPES[size][:2]
    g = hq // hkv
    return 1 << max(0, (g - 1).bit_length())


if __name__ == "__main__":
    sys.exit(main())
