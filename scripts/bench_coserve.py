"""Co-serving vs temporal sharing vs a static split: SLO attainment and finetuning throughput.

For each model (tiny and small `LlamaConfig` presets, float32, random init) on the current
backend, one `CoServeEngine` (compiled once) is driven in-process with a wall clock:
requests of a synthetic trace (`jgraph.coserve.workload`: Poisson arrivals, ShareGPT-shaped
lengths scaled to the model's context) are submitted at their arrival times, the engine steps
continuously, and finetuning samples are always available. Per request the first and last
token times give TTFT (from the scheduled arrival, so queueing counts) and TPOT.

1. **Inference-only baseline**: every request of a burst (2x the request slots, all at t=0)
   decodes with the inference-only policy; the median per-request TPOT is the baseline.
   TPOT target = ``--tpot-factor`` (1.5) x baseline; TTFT target = ``--ttft-factor`` (20) x
   the TPOT target. The burst's output tokens/s give the capacity in requests/s; the arrival
   rates are fractions of it (light -> heavy, ``--loads``).
2. **Step-time model**: `CoServeEngine.profile_cost_model` times the real step on the
   default grid of token mixes. The controller uses it, and so do the baselines' settings:
   temporal sharing gets the smallest period N whose predicted time per output token (N full
   decode steps + one finetuning step of B tokens and a backward, per N tokens; at most 64) is
   within the controller's target,
   and the static split the largest K finetuning tokens (with a backward every step) whose
   predicted step with a full decode batch is; so every policy is set for the same target.
3. Per rate: ``inference_only``, ``coserve`` (the SLO-aware controller), ``temporal`` and
   ``static``, each on the same trace; and once ``finetune_only`` without requests, the
   peak finetuning throughput.

Reported: SLO attainment (both targets met), median TTFT/TPOT, inference output tokens/s,
finetuning forward tokens/s, and the finetuning ratio vs temporal sharing and vs
finetuning-only; a table, JSON (``--out``) and PNG plots next to it (attainment and finetuning
throughput vs rate; a timeline of inference vs finetuning tokens per step at the heaviest
rate, co-serving vs temporal sharing).

On a CPU decoding is compute-bound: a step's time grows with every row, so finetuning tokens
are never free and these numbers understate co-serving (on a GPU a decode batch leaves most of
the step's compute idle).

Usage:
    PYTHONPATH=. python scripts/bench_coserve.py [--smoke] [--out results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from jgraph.core import format_table, write_results
from jgraph.coserve import CoServeConfig, CoServeEngine, LlamaConfig, LoraConfig, init_params
from jgraph.coserve.slo import SLOConfig, StepCostModel, make_policy
from jgraph.coserve.workload import (
    LengthDistribution,
    RequestRecord,
    TraceRequest,
    WorkloadConfig,
    make_trace,
    slo_attainment,
    synthetic_finetune_dataset,
)

LORA = LoraConfig(rank=16, alpha=16.0, targets=("down_proj",))  # FlexLLM's artifact setting
MODES = ("inference_only", "coserve", "temporal", "static")


def step_config(token_budget: int) -> CoServeConfig:
    """8 request slots of up to 96 tokens, finetuning samples of up to 64 tokens."""
    return CoServeConfig(
        token_budget=token_budget, max_requests=8, page_size=8, num_pages=96,
        max_pages_per_request=12, max_adapters=0, ft_max_len=64, bwd_chunk=16,
    )  # fmt: skip


LENGTHS = LengthDistribution().scaled(1 / 8, max_prompt_len=32, max_response_len=48)


@dataclasses.dataclass
class Run:
    """One drive of the engine: per-request records, per-step timeline, totals."""

    records: list[RequestRecord]
    timeline: list[tuple[float, int, int, bool]]  # (t, inference rows, ft rows, backward)
    span_s: float
    ft_tokens: int
    samples_done: int

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.records)


def drive(
    engine: CoServeEngine,
    policy: Any,
    trace: list[TraceRequest],
    ft_data: list[list[int]],
    *,
    lora: Any,
    max_s: float,
) -> Run:
    """Submits ``trace`` at its arrival times and steps until every request finished (or
    ``max_s``: the rest count as SLO misses; an empty trace runs ``max_s``). Finetuning
    samples are always queued."""
    engine.reset(lora=lora, key=jax.random.key(7))
    engine.set_policy(policy)
    if policy.mode != "inference_only":
        engine.add_finetuning(ft_data)
    arrival: dict[int, float] = {}
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    count: dict[int, int] = {}
    finished: set[int] = set()
    timeline: list[tuple[float, int, int, bool]] = []
    ft_tokens, i, outstanding = 0, 0, 0
    start = time.perf_counter()
    while True:
        now = time.perf_counter() - start
        while i < len(trace) and trace[i].arrival_s <= now:
            req = trace[i]
            rid = engine.submit(list(req.prompt), max_new_tokens=req.max_tokens)
            arrival[rid], count[rid] = req.arrival_s, 0
            i, outstanding = i + 1, outstanding + 1
        if (trace and i == len(trace) and outstanding == 0) or now > max_s:
            break
        if outstanding == 0 and policy.mode == "inference_only":
            time.sleep(max(0.0, min(trace[i].arrival_s - now, 0.01)))  # nothing to run
            continue
        rep = engine.step()
        t = time.perf_counter() - start
        for rid in rep.new_tokens:
            first.setdefault(rid, t)
            last[rid], count[rid] = t, count[rid] + 1
        outstanding -= len(rep.finished)
        finished.update(rep.finished)
        ft_tokens += rep.ft_forward_tokens
        inf = rep.decode_tokens + rep.prefill_tokens
        timeline.append((t, inf, rep.ft_forward_tokens, rep.bwd_chunk is not None))
    span = time.perf_counter() - start
    records = [
        RequestRecord(
            index=k,
            arrival_s=arrival[rid],
            first_token_s=first.get(rid),
            last_token_s=last.get(rid),
            finish_s=last.get(rid, span),
            output_tokens=count[rid],
            error=None if rid in finished else "unfinished",
        )
        for k, rid in enumerate(sorted(arrival))
    ]
    records += [  # never submitted before max_s
        RequestRecord(index=len(records) + j, arrival_s=r.arrival_s, first_token_s=None,
                      last_token_s=None, finish_s=span, output_tokens=0, error="not sent")
        for j, r in enumerate(trace[i:])
    ]  # fmt: skip
    engine.set_policy(None)
    return Run(records, timeline, span, ft_tokens, engine.samples_done)


def _median(vals: list[float]) -> float:
    return statistics.median(vals) if vals else float("nan")


def summarize(run: Run, *, tpot_s: float, ttft_s: float) -> dict[str, Any]:
    recs = run.records
    ttfts = [r.ttft_s for r in recs if r.ttft_s is not None and r.error is None]
    tpots = [r.tpot_s for r in recs if r.tpot_s is not None and r.error is None]
    return {
        "requests": len(recs),
        "slo_attainment": slo_attainment(recs, tpot_s=tpot_s, ttft_s=ttft_s),
        "p50_ttft_ms": 1e3 * _median(ttfts),
        "p50_tpot_ms": 1e3 * _median(tpots),
        "max_tpot_ms": 1e3 * max(tpots, default=float("nan")),
        "inf_tok_s": run.output_tokens / run.span_s,
        "ft_tok_s": run.ft_tokens / run.span_s,
        "samples_done": run.samples_done,
        "steps": len(run.timeline),
        "span_s": run.span_s,
    }


def tuned_baselines(
    model: StepCostModel, slo: SLOConfig, scfg: CoServeConfig, tpot_base: float
) -> tuple[int, int]:
    """(temporal period N, static finetuning tokens K) set for the controller's target (see
    the module docstring), from the profiled step-time model shifted so that a full decode
    step takes the measured inference-only TPOT (the profile times the jitted step alone;
    the measured TPOT also holds the host's work per step)."""
    B, R, target = scfg.token_budget, scfg.max_requests, slo.target_s
    shift = max(0.0, tpot_base - model.predict(R, 0, False))
    model = dataclasses.replace(model, intercept=model.intercept + shift)
    t_dec, t_ft = model.predict(R, 0, False), model.predict(0, B, True)
    # A request waits out one finetuning step per N decode steps: mean time per output token
    # (N * t_dec + t_ft) / N <= target  <=>  N >= t_ft / (target - t_dec).
    room = target - t_dec
    period = 64 if room <= 0 else max(1, min(64, math.ceil(t_ft / room)))
    k = 0
    while k < B - R and model.predict(R, k + 1, True) <= target:
        k += 1
    return period, k


def bench_model(
    name: str,
    args: argparse.Namespace,
    *,
    cfg: LlamaConfig | None = None,
    scfg: CoServeConfig | None = None,
    lengths: LengthDistribution = LENGTHS,
    modes: tuple[str, ...] = MODES,
    params: Any = None,
) -> dict[str, Any]:
    """The whole comparison for one model (see the module docstring). ``args`` holds loads,
    run_s, peak_s, profile_repeats, ft_samples, tpot_factor, ttft_factor (and token_budget
    when ``scfg`` is None); scripts/gpu/bench_coserve.py passes its own shapes."""
    cfg = cfg or LlamaConfig.preset(name)
    scfg = scfg or step_config(args.token_budget)
    if params is None:
        params = init_params(cfg, key=jax.random.key(0))
    engine = CoServeEngine(
        cfg, params, scfg, LORA, optimizer=optax.adamw(1e-4), key=jax.random.key(1)
    )
    lora = engine.trainable_adapter()
    ft_data = synthetic_finetune_dataset(
        args.ft_samples,
        min_len=scfg.ft_max_len // 2,
        max_len=scfg.ft_max_len,
        seed=3,
        vocab_size=cfg.vocab_size,
    )
    assert isinstance(ft_data[0], list)
    ft = [list(s) for s in ft_data if isinstance(s, list)]
    t0 = time.perf_counter()
    # Compile, then the inference-only burst (all requests at t = 0).
    burst = make_trace(WorkloadConfig(rate_per_s=1e6, num_requests=2 * scfg.max_requests,
                                      lengths=lengths, vocab_size=cfg.vocab_size, seed=100))  # fmt: skip
    inf_only = make_policy("inference_only", token_budget=scfg.token_budget)
    drive(engine, inf_only, burst[:2], ft, lora=lora, max_s=600)  # warm-up (compilation)
    base = drive(engine, inf_only, burst, ft, lora=lora, max_s=600)
    tpot_base = _median([r.tpot_s for r in base.records if r.tpot_s is not None])
    mean_out = float(np.mean([r.output_tokens for r in base.records]))
    capacity = base.output_tokens / base.span_s / mean_out
    slo = SLOConfig(tpot_s=args.tpot_factor * tpot_base,
                    ttft_s=args.ttft_factor * args.tpot_factor * tpot_base)  # fmt: skip
    model = engine.profile_cost_model(repeats=args.profile_repeats)
    period, k_static = tuned_baselines(model, slo, scfg, tpot_base)
    print(
        f"[{name}] inference-only TPOT {1e3 * tpot_base:.2f} ms (burst of {len(burst)}), "
        f"capacity {capacity:.2f} req/s; targets TPOT {1e3 * slo.tpot_s:.2f} ms, TTFT "
        f"{1e3 * slo.ttft_s:.1f} ms; cost model c0={1e3 * model.intercept:.2f} ms "
        f"c_inf={1e6 * model.per_inference_token:.1f} us c_ft={1e6 * model.per_ft_token:.1f} us "
        f"c_bwd={1e3 * model.backward:.2f} ms; temporal N={period}, static K={k_static} "
        f"(setup {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    policies = {
        "inference_only": lambda: inf_only,
        "coserve": lambda: make_policy(
            "coserve", token_budget=scfg.token_budget, slo=slo, cost_model=model
        ),
        "temporal": lambda: make_policy(
            "temporal", token_budget=scfg.token_budget, temporal_period=period
        ),
        "static": lambda: make_policy(
            "static", token_budget=scfg.token_budget, static_ft_tokens=k_static
        ),
    }
    peak = drive(engine, make_policy("finetune_only", token_budget=scfg.token_budget), [], ft,
                 lora=lora, max_s=args.peak_s)  # fmt: skip
    peak_ft = peak.ft_tokens / peak.span_s
    rows, timelines = [], {}
    for li, load in enumerate(args.loads):
        rate = load * capacity
        n = max(4, round(rate * args.run_s))
        trace = make_trace(WorkloadConfig(rate_per_s=rate, num_requests=n, lengths=lengths,
                                          vocab_size=cfg.vocab_size, seed=li))  # fmt: skip
        by_mode = {}
        for mode in modes:
            run = drive(engine, policies[mode](), trace, ft, lora=lora,
                        max_s=args.run_s * 4 + 5)  # fmt: skip
            s = summarize(run, tpot_s=slo.tpot_s, ttft_s=slo.ttft_s)
            by_mode[mode] = s
            rows.append({"model": name, "load": load, "rate_req_s": rate, "mode": mode, **s})
            if li == len(args.loads) - 1 and mode in ("coserve", "temporal"):
                timelines[mode] = run.timeline
        temporal_ft = by_mode["temporal"]["ft_tok_s"]
        for r in rows[-len(modes) :]:
            r["ft_vs_temporal"] = r["ft_tok_s"] / temporal_ft if temporal_ft else float("nan")
            r["ft_vs_peak"] = r["ft_tok_s"] / peak_ft
        print(f"[{name}] load {load:.2f} ({rate:.2f} req/s, {n} requests) done", flush=True)
    return {
        "model": name,
        "rows": rows,
        "timelines": timelines,
        "setup": {
            "model": name,
            "inference_only_tpot_ms": 1e3 * tpot_base,
            "capacity_req_s": capacity,
            "tpot_target_ms": 1e3 * slo.tpot_s,
            "ttft_target_ms": 1e3 * slo.ttft_s,
            "temporal_period": period,
            "static_ft_tokens": k_static,
            "peak_ft_tok_s": peak_ft,
            "cost_model": model.to_json(),
        },
    }


def plot(results: list[dict[str, Any]], prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7), squeeze=False)
    for j, res in enumerate(results):
        for mode in [m for m in MODES if any(r["mode"] == m for r in res["rows"])]:
            rs = [r for r in res["rows"] if r["mode"] == mode]
            x = [r["rate_req_s"] for r in rs]
            axes[0, j].plot(x, [100 * r["slo_attainment"] for r in rs], "o-", label=mode)
            axes[1, j].plot(x, [r["ft_tok_s"] for r in rs], "o-", label=mode)
        axes[1, j].axhline(res["setup"]["peak_ft_tok_s"], ls="--", c="k", label="finetune_only")
        axes[0, j].set(title=f"{res['model']}: SLO attainment", ylabel="%", ylim=(-5, 105))
        axes[1, j].set(title=f"{res['model']}: finetuning throughput", ylabel="tokens/s",
                       xlabel="arrival rate (req/s)")  # fmt: skip
        axes[1, j].legend(fontsize=7)
    fig.tight_layout()
    paths.append(prefix.with_name(prefix.name + "_rates.png"))
    fig.savefig(paths[-1], dpi=100)
    res = results[-1]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, mode in zip(axes, ("coserve", "temporal"), strict=True):
        tl = res["timelines"].get(mode, [])[:300]
        steps = np.arange(len(tl))
        ax.bar(steps, [t[1] for t in tl], width=1.0, label="inference tokens")
        ax.bar(steps, [t[2] for t in tl], width=1.0, bottom=[t[1] for t in tl],
               label="finetuning tokens")  # fmt: skip
        ax.set(title=f"{res['model']}, heaviest rate: {mode}", ylabel="tokens / step")
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    paths.append(prefix.with_name(prefix.name + "_timeline.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close("all")
    return paths


COLUMNS = ["model", "load", "rate_req_s", "mode", "slo_attainment", "p50_ttft_ms", "p50_tpot_ms",
           "inf_tok_s", "ft_tok_s", "ft_vs_temporal", "ft_vs_peak", "samples_done", "requests"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 short runs (CI)")
    ap.add_argument("--out", default=None, help="write JSON results here (PNG plots beside it)")
    ap.add_argument("--models", nargs="+", default=None, choices=["tiny", "small"])
    ap.add_argument("--loads", nargs="+", type=float, default=None,
                    help="arrival rates as fractions of the measured capacity")  # fmt: skip
    ap.add_argument("--run-s", type=float, default=None, help="seconds of arrivals per run")
    ap.add_argument("--tpot-factor", type=float, default=1.5)
    ap.add_argument("--ttft-factor", type=float, default=20.0)
    ap.add_argument("--token-budget", type=int, default=32)
    args = ap.parse_args(argv)
    args.models = args.models or (["tiny"] if args.smoke else ["tiny", "small"])
    args.loads = args.loads or ([0.4, 0.9] if args.smoke else [0.3, 0.6, 0.9])
    args.run_s = args.run_s or (1.5 if args.smoke else 10.0)
    args.peak_s = 1.0 if args.smoke else 5.0
    args.profile_repeats = 1 if args.smoke else 3
    args.ft_samples = 200 if args.smoke else 2000
    t0 = time.perf_counter()
    results = [bench_model(m, args) for m in args.models]
    rows = [r for res in results for r in res["rows"]]
    dev = jax.devices()[0].device_kind
    print(f"\nCo-serving benchmark on {dev} ({jax.default_backend()}), "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    print(format_table([res["setup"] for res in results],
                       [k for k in results[0]["setup"] if k != "cost_model"]))  # fmt: skip
    print()
    print(format_table(rows, COLUMNS))
    heavy = [r for r in rows if r["load"] == max(args.loads) and r["mode"] == "coserve"]
    for r in heavy:
        print(
            f"\n{r['model']} heaviest load: co-serving keeps {100 * r['slo_attainment']:.0f}% "
            f"SLO attainment with {r['ft_vs_temporal']:.2f}x temporal sharing's finetuning "
            f"throughput and {100 * r['ft_vs_peak']:.0f}% of finetuning-only"
        )
    if jax.default_backend() == "cpu":
        print("(CPU: decoding is compute-bound, so these numbers understate co-serving)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)  # the plots are written before the JSON
        plots = plot(results, out.with_suffix(""))
        print("plots:", ", ".join(str(p) for p in plots))
        write_results(
            out,
            name="bench_coserve",
            rows=rows,
            smoke=args.smoke,
            setup=[res["setup"] for res in results],
            timelines={res["model"]: res["timelines"] for res in results},
            plots=[str(p) for p in plots],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
