"""The superopt part of `jgraph demo`: superoptimize RMSNorm + Linear from plain JAX."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jgraph.core import DemoReport, atomic_write_json, atomic_write_text
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._jaxpr import superoptimize
from jgraph.superopt._lower import export_cuda, lowering_problem
from jgraph.superopt._programs import is_known_good
from jgraph.superopt._show import draw, dump

if TYPE_CHECKING:
    import jax

__all__ = ["demo"]


def _rmsnorm_linear(x: jax.Array, w: jax.Array) -> jax.Array:
    import jax.numpy as jnp

    return (x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True))) @ w


def _what(known: bool, one_kernel: bool) -> str:
    if known:
        return "fused one-kernel μGraph (division after the matmul)"
    return "fused one-kernel μGraph" if one_kernel else "best μGraph"


def _attention_row(out_dir: Path) -> tuple[tuple[str, str], Path]:
    """The corpus's multi-head attention (ordinary jnp with max subtraction), superoptimized.

    The fusion moves build the online-softmax kernel themselves (no hand-written seed).
    """
    from jgraph.superopt.corpus import example

    ex = example("multihead_attention", rows=128, hidden=256)  # 4 heads, 128 keys, d 64
    start = time.perf_counter()
    res = superoptimize(ex.fn, *ex.args(0), config=SearchConfig(time_limit_s=20, max_kernel_ops=1))
    took = time.perf_counter() - start
    fresh = ex.args(1)
    got, want = np.asarray(res(*fresh), np.float64), np.asarray(ex.fn(*fresh), np.float64)
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    region = res.program.results[0] if res.program is not None else res
    kinds = [o.kind for op in region.chosen.graph.ops if op.block for o in op.block.ops]
    what = "online-softmax kernel" if "accum_rescale" in kinds else "kernel"
    path = atomic_write_text(out_dir / "attention_best.txt", dump(region.chosen.graph) + "\n")
    row = (
        "corpus: multi-head attention (4x128x64, jnp with max subtraction)",
        f"{len(res.fused_kernels)} fused {what} in {took:.0f} s; model "
        f"{region.chosen.cost.estimated_us:.1f} us vs XLA {region.xla.cost.estimated_us:.1f} us; "
        f"max rel error vs jnp {err:.1e}; kept as XLA: {', '.join(res.stayed_xla) or 'nothing'}",
    )
    return row, path


def demo(out_dir: Path) -> DemoReport:
    """Finds the fused RMSNorm+Linear μGraph (division after the matmul) from a jnp function.

    At Mirage's RMSNorm shapes for batch 1 (X 2x4096, W 4096x6144, fp16) the
    search captures the jaxpr, enumerates one-kernel μGraphs, verifies them
    over finite fields and in float32/float16, drops those that do not lower
    for CUDA, and ranks them by the analytic (H100 model) cost against the XLA
    candidate. The winner then runs as a Pallas kernel (the interpreter on CPU)
    against jnp, and its CUDA (Pallas-Triton) lowering is built. Writes the
    μGraph as text, JSON and PNG.
    """
    # JAX is imported here, not at module level, so `import jgraph.superopt` stays light.
    import jax
    import jax.numpy as jnp

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = jnp.zeros((2, 4096), jnp.float16)
    w = jnp.zeros((4096, 6144), jnp.float16)
    cfg = SearchConfig(time_limit_s=45, max_kernel_ops=1)
    res = superoptimize(_rmsnorm_linear, x, w, config=cfg)
    best, xla = res.best, res.xla
    key = jax.random.key(0)
    kx, kw = jax.random.split(key)
    xs = jax.random.normal(kx, (2, 4096), jnp.float32).astype(jnp.float16)
    ws = (jax.random.normal(kw, (4096, 6144), jnp.float32) / 64).astype(jnp.float16)
    start = time.perf_counter()
    got = np.asarray(jax.block_until_ready(res(xs, ws)), np.float64)  # Pallas, interpreted
    run_s = time.perf_counter() - start
    f32 = jnp.float32
    want = np.asarray(_rmsnorm_linear(xs.astype(f32), ws.astype(f32)), np.float64)
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    start = time.perf_counter()
    problem = lowering_problem(best.graph, route="triton")
    cuda = "no graph-defined kernel (the XLA program)"
    if any(op.block is not None for op in best.graph.ops):
        if problem is None:
            mlir = export_cuda(best.graph, route="triton").mlir_module()
            cuda = (
                f"lowers: {mlir.count('__gpu$xla.gpu.triton')} Triton kernel(s), "
                f"{len(mlir) // 1024} KiB of MLIR, in {time.perf_counter() - start:.1f} s"
            )
        else:
            cuda = f"does not lower: {problem}"
    text = dump(best.graph)
    png = draw(best.graph, out_dir / "rmsnorm_linear_best.png", title="best μGraph: RMSNorm+Linear")
    txt = atomic_write_text(out_dir / "rmsnorm_linear_best.txt", text + "\n")
    js = atomic_write_json(out_dir / "rmsnorm_linear_result.json", res.to_json())
    # Mirage's known structure, or (from the fusion moves) the same one-kernel idea with
    # the row factor moved past the matmul
    known = is_known_good("rmsnorm_linear", best.graph)
    one_kernel = [op.kind for op in best.graph.ops] == ["customized"]
    attention = _attention_row(out_dir)
    tests = cfg.verify.tests
    return DemoReport(
        headline=(
            f"RMSNorm+Linear: {_what(known, one_kernel)} (by the {best.label} moves) "
            f"found and verified in {res.stats.seconds:.0f} s; model cost {best.cost.estimated_us:.1f} us "
            f"vs XLA {xla.cost.estimated_us:.1f} us ({res.model_speedup:.2f}x, H100 model, not measured)"
        ),
        rows=(
            ("kernels (best vs XLA)", f"{best.cost.launches} vs {xla.cost.launches}"),
            (
                "device-memory bytes (best vs XLA)",
                f"{best.cost.dram_bytes:,} vs {xla.cost.dram_bytes:,}",
            ),
            (
                "verification",
                f"{tests} random tests over Z_p x Z_q (q ~ 2^25) + float32/float16 screen",
            ),
            ("verified μGraphs", str(res.stats.verified)),
            ("states explored", str(res.stats.states)),
            ("pruned by abstract expression", str(res.stats.pruned["abstract_expression"])),
            (
                "Pallas kernel (interpret mode, fp16) vs jnp float32: max rel error",
                f"{err:.2e} ({run_s:.1f} s incl. compile)",
            ),
            ("CUDA lowering (Pallas Triton, jax.export, no GPU)", cuda),
            attention[0],
        ),
        artifacts=(png, txt, js, attention[1]),
    )
