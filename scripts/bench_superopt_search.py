"""Benchmark of the μGraph search (jgraph.superopt), on CPU.

Three parts, all hardware-independent (spec §f): (1) the search on Mirage's six
programs at the spec's shapes, batch 1 and 8 (LoRA and GatedMLP have fixed
shapes in the spec, so they run once): time, states, pruning breakdown,
verified μGraphs, the best structure, whether the known-good structure was
verified (and when), and the analytic cost (an H100 *model*, not a
measurement) of the best candidate vs the XLA candidate; (2) the pruning
ablation (with vs without abstract expressions) on small programs under a
state/time cap; (3) the verifier's false-positive rate on a corpus of >= 1,000
wrong μGraphs at large primes and in Mirage's (p, q) = (167, 83) single-test mode.

    .venv/bin/python scripts/bench_superopt_search.py --out results/superopt.json
    .venv/bin/python scripts/bench_superopt_search.py --smoke
"""

from __future__ import annotations

import argparse
import logging
import time

from jgraph.core import format_table, write_results
from jgraph.superopt import (
    SearchConfig,
    Verifier,
    VerifyConfig,
    get_program,
    handwritten,
    is_known_good,
    mutants,
    search,
)


def _structure(graph) -> str:
    parts = []
    for op in graph.ops:
        if op.block is None:
            parts.append(op.kind)
        else:
            b = op.block
            body = "+".join(o.kind.replace("accum_", "acc_") for o in b.ops)
            parts.append(f"K[grid={'x'.join(map(str, b.grid))},F={b.frange}:{body}]")
    return " ; ".join(parts)


def search_rows(runs, time_limit: float, scale: int, max_kernel_ops: int) -> list[dict]:
    rows = []
    for name, batch in runs:
        prog = get_program(name, batch=batch, scale=scale)
        cfg = SearchConfig(time_limit_s=time_limit, max_kernel_ops=max_kernel_ops)
        res = search(prog.graph, config=cfg, name=name)
        st = res.stats
        good = [c for c in res.candidates if is_known_good(name, c.graph)]
        rows.append(
            {
                "program": name,
                "batch": batch,
                "search_s": st.seconds,
                "states": st.states,
                "canonical": st.pruned["canonical"],
                "abstract": st.pruned["abstract_expression"],
                "shape_mem": st.pruned["shape_or_memory"],
                "dup": st.pruned["duplicate"],
                "cost_bound": st.pruned["cost_bound"],
                "verifier_rej": sum(st.rejected.values()),
                "verified": st.verified,
                "known_good": f"yes@{min(c.found_s for c in good):.0f}s" if good else "no",
                "best_us": res.best.cost.estimated_us,
                "xla_us": res.xla.cost.estimated_us,
                "model_x": res.model_speedup,
                "best": _structure(res.best.graph) if res.best.label != "xla" else "XLA",
            }
        )
        print(format_table(rows[-1:]), flush=True)
    return rows


def ablation_rows(names, scale: int, cap_s: float, max_states: int) -> list[dict]:
    rows = []
    for name in names:
        prog = get_program(name, scale=scale)
        base = {
            "max_kernel_ops": 1,
            "max_block_ops": 7,
            "max_block_inputs": 2,
            "max_states": max_states,
        }
        out = {}
        for pruning in (True, False):
            cfg = SearchConfig(time_limit_s=cap_s, pruning=pruning, **base)
            t = time.perf_counter()
            res = search(prog.graph, config=cfg)
            out[pruning] = (res.stats.states, time.perf_counter() - t, res.stats.exhausted)
        rows.append(
            {
                "program": f"{name}/scale{scale}",
                "states_pruned": out[True][0],
                "s_pruned": out[True][1],
                "done_pruned": out[True][2],
                "states_unpruned": out[False][0],
                "s_unpruned": out[False][1],
                "done_unpruned": out[False][2],
                "state_ratio": out[False][0] / max(out[True][0], 1),
            }
        )
    return rows


def fp_rows(per_program: int, scales: tuple[int, ...]) -> list[dict]:
    corpus = []
    for scale in scales:
        for name in ("rmsnorm_linear", "gated_mlp", "lora", "gqa", "ntrans"):
            prog = get_program(name, scale=scale)
            good = handwritten(name, prog)
            corpus += [(prog, m) for m in mutants(prog.graph, good, limit=per_program)]
    modes = {
        "large primes (q~2^25), 3 random tests": VerifyConfig(tests=3, float_screen=False),
        "large primes (q~2^25), 1 random test": VerifyConfig(tests=1, float_screen=False),
        "mirage (167,83), 1 random test": VerifyConfig(
            tests=1, primes="mirage", float_screen=False
        ),
        "mirage (167,83), 1 counter test": VerifyConfig(
            tests=1, primes="mirage", inputs="counter", float_screen=False
        ),
    }
    rows = []
    for label, cfg in modes.items():
        verifiers: dict[tuple, Verifier] = {}
        accepted = 0
        t = time.perf_counter()
        for prog, m in corpus:
            key = (prog.name, prog.shapes)
            if key not in verifiers:
                verifiers[key] = Verifier(prog.graph, cfg)
            v = verifiers[key]
            accepted += v.check(m).ok
        rows.append(
            {
                "mode": label,
                "mutants": len(corpus),
                "false_positives": accepted,
                "fp_rate": accepted / len(corpus),
                "s_per_check": (time.perf_counter() - t) / len(corpus),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, under a minute")
    p.add_argument("--out", default=None, help="JSON results path")
    p.add_argument("--time-limit", type=float, default=50.0, help="seconds per search")
    p.add_argument(
        "--parts", default="search,ablation,fp", help="comma-separated subset of search,ablation,fp"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.smoke:
        runs, scale, tl, k = [("rmsnorm_linear", 1)], 16, 10.0, 1
        abl, abl_scale, cap, cap_states = ["rmsnorm_linear"], 16, 10.0, 3000
        per_program, fp_scales = 12, (16,)
    else:
        runs = [(n, b) for n in ("rmsnorm_linear", "gqa", "qknorm", "ntrans") for b in (1, 8)]
        runs += [("lora", 1), ("gated_mlp", 1)]
        scale, tl, k = 1, args.time_limit, 2
        abl, abl_scale, cap, cap_states = ["rmsnorm_linear", "gated_mlp"], 16, 60.0, 200_000
        per_program, fp_scales = 400, (16, 8)
    parts = set(args.parts.split(","))
    srows, arows, frows = [], [], []
    if "search" in parts:
        print("== search (analytic H100 model costs, not measurements) ==", flush=True)
        srows = search_rows(runs, tl, scale, k)
    if "ablation" in parts:
        print("\n== pruning ablation ==", flush=True)
        arows = ablation_rows(abl, abl_scale, cap, cap_states)
        print(format_table(arows), flush=True)
    if "fp" in parts:
        print("\n== verifier false positives on wrong μGraphs ==", flush=True)
        frows = fp_rows(per_program, fp_scales)
        print(format_table(frows), flush=True)
    print("\n== summary ==")
    print(format_table(srows))
    if args.out:
        write_results(
            args.out,
            name="bench_superopt_search",
            rows=srows,
            ablation=arows,
            false_positives=frows,
            smoke=args.smoke,
            time_limit_s=tl,
            cost_note="estimated_us is an analytic H100 roofline model, not a measurement",
        )


if __name__ == "__main__":
    main()
