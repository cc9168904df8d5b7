"""Profile the pipeline benchmark's blocks vs micro-batch on one device; write a cost profile.

The blocks of `jgraph.pipeline.models` at their paper sizes, float32: a Transformer
layer (seq 256, hidden 1024, 16 heads, FFN 4096; pre-LN, Flax attention, GELU), a
4096 x 4096 FF layer with bias and ReLU, and an embedding bag (1M rows, dim 64, bag
100). Each is profiled by `jgraph.pipeline.profiling.profile_module_graph` (jit, one
warm-up call, median of ``--repeats``; the backward is the pullback from the
residuals the forward kept) at micro-batches 1, 2, 4, ..., 64 on ``jax.devices()[0]``.

The result is a `CostProfile` with one curve per node kind (``ref_flops`` from the
analytic node of the same size, so `apply_profile` scales it to other sizes), written
to ``scripts/gpu/profiles/<card>.json`` (or ``--out``), ready for
``scripts/bench_pipeline_plan.py --curve PATH``. The table printed next to it shows
the analytic V100 roofline of the same blocks. Expected to take 2-3 minutes on one
H100/H200, most of it compiling (an estimate: not yet run on a GPU); the profile is
rewritten after each block, so a run cut short keeps the blocks it finished (its
note says so). ``--smoke`` runs tiny blocks at micro-batches 1 and 2 on any backend
(CI; 20-40 s on 2 CPU cores) and writes only where ``--out`` says.

    python scripts/gpu/profile_pipeline.py                      # on a GPU
    python scripts/gpu/profile_pipeline.py --out $OUT/pipeline_profile.json
    python scripts/gpu/profile_pipeline.py --smoke --out /tmp/profile.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jgraph.core import environment, format_table
from jgraph.pipeline import ClusterConfig, CostModel, ModelGraph, Node, PlannerConfig
from jgraph.pipeline.models import dlrm, mmt, synthetic_branches
from jgraph.pipeline.profiling import (
    CostProfile,
    EfficiencyCurve,
    GraphInput,
    ModuleGraph,
    ModuleNode,
    profile_module_graph,
)

PROFILES = Path(__file__).parent / "profiles"

# Paper sizes (GraphPipe Appendix A.2, as in jgraph.pipeline.models) and tiny CI sizes.
FULL = {
    "seq": 256, "hidden": 1024, "heads": 16, "ffn": 4096, "ff": 4096,
    "rows": 1_000_000, "dim": 64, "bag": 100, "micro_batches": (1, 2, 4, 8, 16, 32, 64),
}  # fmt: skip
SMOKE = {
    "seq": 8, "hidden": 32, "heads": 2, "ffn": 64, "ff": 64,
    "rows": 1000, "dim": 8, "bag": 4, "micro_batches": (1, 2),
}  # fmt: skip


class TransformerLayer(nn.Module):
    """Pre-LN encoder layer: x + MHA(LN(x)), then + FFN(LN(.)) (the analytic node's layer)."""

    hidden: int
    heads: int
    ffn: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.hidden)(h)
        h = nn.LayerNorm()(x)
        return x + nn.Dense(self.hidden)(nn.gelu(nn.Dense(self.ffn)(h)))


class FF(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(nn.Dense(self.width)(x))


class EmbeddingBag(nn.Module):
    """Sum of ``bag`` gathered rows per sample.

    `profile_module_graph` feeds inputs of ones; the indices are spread over the
    table (a fixed stride, distinct rows per sample and across the micro-batch) so
    the gather and the backward's scatter-add touch ``bag`` rows per sample, as
    random indices would, instead of one cached row.
    """

    rows: int
    dim: int

    @nn.compact
    def __call__(self, idx: jax.Array) -> jax.Array:
        table = self.param("table", nn.initializers.normal(0.01), (self.rows, self.dim))
        b, bag = idx.shape
        spread = (jnp.arange(b)[:, None] * bag + jnp.arange(bag)[None, :]) * 7919
        return jnp.take(table, (idx + spread) % self.rows, axis=0).sum(axis=1)


def blocks(s: dict[str, Any]) -> list[tuple[str, ModuleGraph, Node, str]]:
    """(node kind, one-node module graph, the analytic node of the same size, description)."""
    ref_t = mmt(branches=1, layers=1, seq=s["seq"], hidden=s["hidden"], heads=s["heads"],
                ffn=s["ffn"]).by_name["b0.layer0"]  # fmt: skip
    ref_f = synthetic_branches(1, layers=1, hidden=s["ff"]).by_name["b0.ff0"]
    ref_e = dlrm(dense_branches=0, sparse_branches=1, rows=s["rows"], dim=s["dim"], bag=s["bag"])
    ref_e = ref_e.by_name["emb0"]

    def one(name: str, shape: tuple[int, ...], module: Any, dtype: str = "float32") -> ModuleGraph:
        return ModuleGraph(
            name=name,
            inputs=(GraphInput(name="x", shape=shape, dtype=dtype),),
            nodes=(ModuleNode(name=name, module=module, inputs=("x",)),),
        )

    return [
        (
            "transformer_layer",
            one(
                "transformer_layer",
                (s["seq"], s["hidden"]),
                TransformerLayer(hidden=s["hidden"], heads=s["heads"], ffn=s["ffn"]),
            ),
            ref_t,
            f"Flax pre-LN Transformer layer, seq {s['seq']}, hidden {s['hidden']}, "
            f"{s['heads']} heads, FFN {s['ffn']} (GELU), float32",
        ),
        (
            "ff",
            one("ff", (s["ff"],), FF(width=s["ff"])),
            ref_f,
            f"Dense {s['ff']} x {s['ff']} + bias + ReLU, float32",
        ),
        (
            "embedding_bag",
            one("embedding_bag", (s["bag"],), EmbeddingBag(rows=s["rows"], dim=s["dim"]), "int32"),
            ref_e,
            f"embedding bag {s['rows']} x {s['dim']}, bag {s['bag']} (strided indices), "
            "sum, dense table gradient, float32",
        ),
    ]


def slug(device_kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-") or "device"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny blocks, micro-batches 1-2")
    parser.add_argument(
        "--out", help="profile JSON path (default scripts/gpu/profiles/<card>.json)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per size (median)")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    repeats = 1 if args.smoke else args.repeats
    env = environment()
    print(f"device {env['device_kind']} ({env['backend']}), jax {env['jax']}", flush=True)

    out = Path(args.out) if args.out else None
    if out is None and not args.smoke:
        out = PROFILES / f"{slug(env['device_kind'])}.json"
    precision = jax.config.jax_default_matmul_precision or "default"
    todo = blocks(sizes)
    curves: list[EfficiencyCurve] = []
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # always time afresh
        for kind, graph, ref, desc in todo:
            t0 = time.perf_counter()
            g = profile_module_graph(
                graph, micro_batches=sizes["micro_batches"], repeats=repeats, cache_dir=cache
            )
            measured = sorted(g.by_name[kind].measured)
            curves.append(
                EfficiencyCurve(
                    match="kind",
                    key=kind,
                    micro_batches=tuple(b for b, _, _ in measured),
                    fwd_s_per_sample=tuple(f / b for b, f, _ in measured),
                    bwd_s_per_sample=tuple(t / b for b, _, t in measured),
                    ref_flops=ref.flops,
                    block=desc,
                )
            )
            # The analytic V100 roofline of the same block, for the table.
            alone = ModelGraph(name="ref", nodes=(dataclasses.replace(ref, inputs=()),))
            cm = CostModel(alone, ClusterConfig(num_devices=1), PlannerConfig())
            first = (measured[0][1] + measured[0][2]) / measured[0][0]
            for b, f, t in measured:
                rf, rb = cm.node_times(b)
                rows.append(
                    {
                        "block": kind,
                        "micro_batch": b,
                        "fwd_us_per_sample": f / b * 1e6,
                        "bwd_us_per_sample": t / b * 1e6,
                        "total_us_per_sample": (f + t) / b * 1e6,
                        "vs_mb1": (f + t) / b / first,
                        "v100_roofline_us_per_sample": (rf[0] + rb[0]) / b * 1e6,
                    }
                )
            print(f"  {kind}: {time.perf_counter() - t0:.1f} s", flush=True)
            partial = (
                ""
                if len(curves) == len(todo)
                else f"PARTIAL ({len(curves)} of {len(todo)} blocks); "
            )
            profile = CostProfile(
                device=env["device_kind"],
                source="measured",
                jax_version=env["jax"],
                date=datetime.datetime.now(datetime.UTC).date().isoformat(),
                curves=tuple(curves),
                note=(
                    f"{partial}scripts/gpu/profile_pipeline.py{' --smoke' if args.smoke else ''}: "
                    f"profile_module_graph on {env['backend']} ({env['device_kind']}), jit, "
                    f"1 warm-up, median of {repeats}; backward = pullback from stashed residuals; "
                    f"float32, matmul precision {precision}; jaxlib {env['jaxlib']}; "
                    f"git {env['git_sha']}"
                ),
            )
            if out is not None:
                profile.save(out)  # after every block: a run cut short keeps what it finished

    print(format_table(rows))
    print(f"total {time.perf_counter() - start:.1f} s")
    if out is not None:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
