"""Coverage of `superoptimize` on ordinary JAX/Flax layer code (jgraph.superopt.corpus), on CPU.

For every corpus program at each size (rows x hidden): whether it was accepted
(or refused, with why: e.g. the verifier's memory limit), the search's wall
time, the time to the first verified candidate with a graph-defined (fused)
kernel, the analytic cost of the chosen μGraphs vs the XLA candidates (an H100
roofline *model*, summed over the searched regions; the operators kept as XLA
cost the same in both and are left out), the kernel launches of the chosen
program vs XLA's (each operator kept as XLA counts one launch in both), what
the fused kernels are and which operators stayed XLA. The summary line says how
many programs got a fused kernel, and how many of those beat XLA's model cost.

In full runs each program runs in a child process with an address-space cap (``--max-memory-gib``)
and a wall-clock cap, so one whose search runs out of memory or time is reported
(status ``error``/``killed``/``timeout``) and the others still run.

    .venv/bin/python scripts/bench_superopt_coverage.py --out results/superopt_coverage.json
    .venv/bin/python scripts/bench_superopt_coverage.py --smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from typing import Any

from jgraph.core import ConfigError, format_table, write_results
from jgraph.superopt import SearchConfig, superoptimize
from jgraph.superopt.corpus import NAMES, example


def _first_fused_s(results: Any) -> float | None:
    """Seconds from the start of the first region's search to the first fused candidate."""
    offset = 0.0
    for res in results:
        fused = [c.found_s for c in res.candidates if any(op.block for op in c.graph.ops)]
        if fused:
            return offset + min(fused)
        offset += res.stats.seconds
    return None


def run_one(name: str, rows: int, hidden: int, config: SearchConfig) -> dict[str, Any]:
    ex = example(name, rows=rows, hidden=hidden)
    row: dict[str, Any] = {"program": name, "rows": rows, "hidden": hidden}
    t = time.perf_counter()
    try:
        res = superoptimize(ex.fn, *ex.args(0), config=config)
    except ConfigError as exc:  # e.g. too large to verify: reported, not hidden
        return {**row, "status": "refused", "why": str(exc)[:200]}
    results = res.program.results if res.program is not None else (res,)
    n_xla = len(res.stayed_xla)
    chosen_us = sum(r.chosen.cost.estimated_us for r in results)
    xla_us = sum(r.xla.cost.estimated_us for r in results)
    return {
        **row,
        "status": "ok",
        "search_s": time.perf_counter() - t,
        "states": sum(r.stats.states for r in results),
        "regions": len(results),
        "first_fused_s": _first_fused_s(results),
        "fused": len(res.fused_kernels),
        "cost_us": chosen_us,
        "xla_us": xla_us,
        "model_x": xla_us / chosen_us,
        "kernels": sum(r.chosen.cost.launches for r in results) + n_xla,
        "xla_kernels": sum(r.xla.cost.launches for r in results) + n_xla,
        "stayed_xla": ",".join(line.split(":")[0] for line in res.stayed_xla) or "-",
        "fused_kernels": " | ".join(res.fused_kernels) or "-",
    }


def run_isolated(
    name: str, rows: int, hidden: int, tl: float, k: int, mem_gib: float, wall_s: float
) -> dict[str, Any]:
    """`run_one` in a child process (capped memory and time); failures become rows."""
    base: dict[str, Any] = {"program": name, "rows": rows, "hidden": hidden}
    cmd = [sys.executable, __file__, "--one", f"{name}:{rows}:{hidden}", "--time-limit", str(tl)]
    cmd += ["--kernel-ops", str(k), "--max-memory-gib", str(mem_gib)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=wall_s, check=False)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "search_s": time.perf_counter() - t}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return dict(json.loads(lines[-1]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    status = "killed" if proc.returncode < 0 else "error"
    return {**base, "status": status, "search_s": time.perf_counter() - t, "why": tail}


def _child(spec: str, tl: float, k: int, mem_gib: float) -> None:
    import resource

    cap = int(mem_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    name, rows, hidden = spec.split(":")
    row = run_one(name, int(rows), int(hidden), SearchConfig(time_limit_s=tl, max_kernel_ops=k))
    print(json.dumps(row), flush=True)


def summary(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    fused = [r for r in ok if r["fused"]]
    better = [r for r in fused if r["model_x"] > 1.0]
    clear = [r for r in fused if r["model_x"] >= 1.01]  # a rounding-size win is not a win
    firsts = [r["first_fused_s"] for r in fused if r["first_fused_s"] is not None]
    refused = sum(r["status"] == "refused" for r in rows)
    failed = len(rows) - len(ok) - refused
    slowest = f"; slowest first fused candidate {max(firsts):.1f} s" if firsts else ""
    return (
        f"{len(fused)} of {len(rows)} program runs got a fused kernel "
        f"({len(better)} with a better analytic cost than XLA, {len(clear)} by at least 1%); "
        f"{len(ok)} accepted, {refused} refused, {failed} failed (killed, timeout or error)"
        f"{slowest}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, under a minute")
    p.add_argument("--out", default=None, help="JSON results path")
    p.add_argument("--time-limit", type=float, default=20.0, help="seconds per region search")
    p.add_argument("--sizes", default="16x512,128x1024,64x4096", help="comma-separated ROWSxHIDDEN")
    p.add_argument("--programs", default="", help="comma-separated subset of the corpus")
    p.add_argument("--kernel-ops", type=int, default=3, help="max kernel ops (full runs)")
    p.add_argument("--max-memory-gib", type=float, default=8.0, help="address space per program")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # NAME:ROWS:HIDDEN (child)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        _child(args.one, args.time_limit, args.kernel_ops, args.max_memory_gib)
        return
    names = [n for n in NAMES if not args.programs or n in args.programs.split(",")]
    if args.smoke:
        sizes, tl, k = [(8, 32)], 1.0, 1
    else:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        tl, k = args.time_limit, args.kernel_ops
    # wall cap: a region search overruns its time limit while it sets up and verifies
    wall_s = 60.0 + 8 * tl
    print("== superoptimize on the corpus (analytic H100 model costs, not measurements) ==")
    rows = []
    for rows_n, hidden in sizes:
        for name in names:
            if args.smoke:  # tiny sizes: in-process (22 child starts alone take ~60 s)
                cfg = SearchConfig(time_limit_s=tl, max_kernel_ops=k)
                rows.append(run_one(name, rows_n, hidden, cfg))
            else:
                rows.append(run_isolated(name, rows_n, hidden, tl, k, args.max_memory_gib, wall_s))
            shown = {k: v for k, v in rows[-1].items() if k not in ("fused_kernels", "why")}
            print(format_table([shown]), flush=True)
    line = summary(rows)
    print("\n== summary ==")
    print(format_table([{k: v for k, v in r.items() if k != "why"} for r in rows]))
    print(line)
    if args.out:
        write_results(
            args.out,
            name="bench_superopt_coverage",
            rows=rows,
            summary=line,
            smoke=args.smoke,
            time_limit_s=tl,
            max_kernel_ops=k,
            cost_note="estimated_us is an analytic H100 roofline model, not a measurement",
        )


if __name__ == "__main__":
    main()
