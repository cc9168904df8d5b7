"""Co-serving on one GPU: the finetuning overhead sweep and co-serving vs temporal sharing.

For an H100 or H200 (one command, under 8 minutes): an 8B-shaped random-init model
(`LlamaConfig.llama31_8b`, bf16; ``--layers`` keeps fewer decoder layers, which the output
then says), LoRA rank 16 on down_proj.

Order: part 2, then part 1 (one compile at a time while ``--budget-s`` lasts).

1. **Overhead sweep** (FlexLLM's overhead test): the median time of one jitted co-serving step
   with a decode batch (``--decode`` requests, one token each, ``--ctx`` tokens of context)
   plus 0-512 finetuning forward tokens, and 0-4 layers of a layer-level backward
   (``backward_mode="layer"``, the top ``bwd_layers`` layers of a full ``ft_max_len`` sample).
   Each ``bwd_layers`` value is its own compiled step (4 compiles; 0 layers reuses the
   1-layer step with no backward in the batch). Overhead = step time / the decode-only step.
2. **Co-serving vs temporal sharing** at two arrival rates (fractions of the measured
   inference-only capacity), driven in-process on a wall clock exactly as
   scripts/bench_coserve.py does (same functions): SLO attainment (TPOT target 1.5x the
   measured inference-only TPOT, TTFT 20x the TPOT target), inference and finetuning
   tokens/s, finetuning vs temporal sharing and vs finetuning-only.

Parts stop being started once ``--budget-s`` (default 420 s) has passed, and the output says
what was skipped. ``--smoke`` runs the same code with the tiny model and small sizes on any
backend (CI, CPU); a full run refuses to start without a GPU (exit 2).

    PYTHONPATH=. python scripts/gpu/bench_coserve.py --out $OUT/coserve.json        # GPU
    PYTHONPATH=. python scripts/gpu/bench_coserve.py --smoke --out /tmp/coserve.json
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from bench_coserve import LORA, bench_model
from bench_coserve_memory import synthetic_batch

from jgraph.core import format_table, time_call, write_results
from jgraph.coserve import (
    AdapterBank,
    CoServeConfig,
    LlamaConfig,
    init_lora,
    init_params,
    init_state,
    make_coserve_step,
)
from jgraph.coserve.workload import LengthDistribution

FULL = {
    "decode": 64, "ctx": 1024, "ft": (0, 64, 128, 256, 512), "bwd_layers": (0, 1, 2, 3, 4),
    "ft_max_len": 1024, "page_size": 16, "repeats": 5, "loads": (0.5, 0.9), "run_s": 20.0,
    "peak_s": 10.0, "token_budget": 512, "max_requests": 64, "max_request_len": 512,
}  # fmt: skip
SMOKE = {
    "decode": 4, "ctx": 24, "ft": (0, 8, 16), "bwd_layers": (0, 1, 2), "ft_max_len": 32,
    "page_size": 8, "repeats": 2, "loads": (0.5, 0.9), "run_s": 1.0, "peak_s": 1.0,
    "token_budget": 32, "max_requests": 8, "max_request_len": 64,
}  # fmt: skip


def sweep(cfg: LlamaConfig, params: Any, size: dict[str, Any], *, deadline: float) -> list[dict]:
    """Part 1 (see the module docstring)."""
    n_dec, ctx, S = size["decode"], size["ctx"], size["ft_max_len"]
    pages_per = -(-ctx // size["page_size"])
    rows: list[dict] = []
    base_ms = None
    bank = AdapterBank.build(cfg, [], capacity=0)
    lora = init_lora(cfg, LORA, key=jax.random.key(1))
    opt = optax.sgd(1e-4)
    for k in [x for x in size["bwd_layers"] if x > 0]:
        if time.perf_counter() > deadline:
            print(f"sweep: budget spent, skipping bwd_layers={k}", flush=True)
            continue
        scfg = CoServeConfig(
            token_budget=n_dec + max(size["ft"]), max_requests=n_dec,
            page_size=size["page_size"], num_pages=n_dec * pages_per,
            max_pages_per_request=pages_per, max_adapters=0, ft_max_len=S,
            backward_mode="layer", bwd_layers=max(1, k),
        )  # fmt: skip
        t0 = time.perf_counter()
        step = make_coserve_step(cfg, scfg, LORA, opt)
        box = {"state": init_state(cfg, scfg, lora, opt, key=jax.random.key(2))}

        def run(batch, box=box, step=step):
            box["state"], out = step(params, bank.weights, bank.scales, box["state"], batch)
            return out.next_tokens

        groups = math.ceil(cfg.n_layers / scfg.bwd_layers)
        # 0 layers (no backward in the batch) runs on the 1-layer step: no compile of its own.
        for layers in [0, k] if k == 1 and 0 in size["bwd_layers"] else [k]:
            for n_ft in size["ft"]:
                b = synthetic_batch(scfg, n_dec, n_ft, ctx=ctx, bwd=layers > 0)
                if layers:  # the top layer group: bwd_layers layers (group 0 may be clipped)
                    b = b.replace(bwd_chunk=np.int32(groups - 1))
                t = time_call(run, b, warmup=2, repeats=size["repeats"])
                ms = 1e3 * t.median
                base_ms = base_ms or ms
                rows.append({"decode": n_dec, "ctx": ctx, "ft_tokens": n_ft, "bwd_layers": layers,
                             "step_ms": ms, "overhead": ms / base_ms})  # fmt: skip
        print(f"sweep: bwd_layers={k} done ({time.perf_counter() - t0:.0f} s incl. compile)",
              flush=True)  # fmt: skip
        box.clear()  # free this step's state before the next compile
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, any backend (CI)")
    ap.add_argument("--out", default=None, help="write JSON results here")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: all)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no part after this")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-serving", action="store_true")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget_s
    if not args.smoke and jax.default_backend() != "gpu":
        print("GPU only: run with --smoke on this backend", file=sys.stderr)
        return 2
    size = SMOKE if args.smoke else FULL
    cfg = LlamaConfig.tiny() if args.smoke else LlamaConfig.llama31_8b()
    full_layers = cfg.n_layers
    if args.layers is not None:
        cfg = dataclasses.replace(cfg, n_layers=args.layers)
    model = "tiny" if args.smoke else "llama31_8b"
    note = (
        f"{model}: {cfg.n_layers} of {full_layers} layers (reduced with --layers)"
        if cfg.n_layers != full_layers
        else f"{model}: all {cfg.n_layers} layers"
    )
    dev = jax.devices()[0].device_kind
    print(f"{note}, {cfg.dtype}, random init, on {dev} ({jax.default_backend()})", flush=True)
    params = init_params(cfg, key=jax.random.key(0))
    # The serving comparison first (the headline); then the sweep, one compile at a time
    # while the budget lasts.
    serving: dict[str, Any] = {"rows": [], "setup": {}}
    if args.skip_serving:
        pass
    elif time.perf_counter() > deadline:
        print("serving: budget spent, skipped", flush=True)
    else:
        L = size["max_request_len"]
        scfg = CoServeConfig(
            token_budget=size["token_budget"], max_requests=size["max_requests"],
            page_size=size["page_size"], num_pages=size["max_requests"] * L // size["page_size"],
            max_pages_per_request=L // size["page_size"], max_adapters=0,
            ft_max_len=size["ft_max_len"], backward_mode="layer", bwd_layers=2,
        )  # fmt: skip
        lengths = LengthDistribution().scaled(
            L / 1024, max_prompt_len=L // 2, max_response_len=L // 2 - 1
        )
        bargs = argparse.Namespace(
            loads=list(size["loads"]), run_s=size["run_s"], peak_s=size["peak_s"],
            profile_repeats=2, ft_samples=500, tpot_factor=1.5, ttft_factor=20.0,
        )  # fmt: skip
        serving = bench_model(model, bargs, cfg=cfg, scfg=scfg, lengths=lengths,
                              modes=("coserve", "temporal"), params=params)  # fmt: skip
        print(format_table([serving["setup"]], [k for k in serving["setup"] if k != "cost_model"]))
        print(format_table(serving["rows"], [
            "load", "rate_req_s", "mode", "slo_attainment", "p50_ttft_ms", "p50_tpot_ms",
            "inf_tok_s", "ft_tok_s", "ft_vs_temporal", "ft_vs_peak", "requests"]))  # fmt: skip
    sweep_rows: list[dict] = []
    if not args.skip_sweep:
        sweep_rows = sweep(cfg, params, size, deadline=deadline)
        print(format_table(sweep_rows), flush=True)
    total = time.perf_counter() - start
    print(f"total {total:.0f} s on {dev}", flush=True)
    if args.out:
        write_results(
            args.out,
            name="gpu_bench_coserve",
            rows=sweep_rows + serving["rows"],
            smoke=args.smoke,
            device=dev,
            model=note,
            setup=serving["setup"],
            seconds=total,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
