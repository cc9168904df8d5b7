"""Server overhead: TPOT of the co-serving engine driven directly vs through the HTTP server.

Both modes use the same compiled engine (tiny random-init model, byte tokenizer), the same 16
prompts, the same ``max_tokens`` and greedy decoding, so they generate the same tokens:

* direct: all requests are submitted to `CoServeEngine` at once and the script steps it;
* server: `CoServeService` + uvicorn on 127.0.0.1 (`ServerThread`), and a load client in a
  separate process opens 16 concurrent streaming ``/v1/completions`` requests (httpx, SSE).

TPOT of one request = (arrival of its last token - arrival of its first text) / (tokens - 1),
on the client's clock for the server and on the script's clock after each `step` for the
direct run. Text, not tokens, arrives over HTTP: the server holds back a partial UTF-8
character (random byte-level outputs have many), so the direct run dates its "first text" the
same way (the first step after which the decoded output is non-empty once trailing
replacement characters are dropped). Rounds alternate direct and server; the table gives the
medians over all requests and rounds, and the ratio server / direct from the same run.

Usage:
    python scripts/bench_serve_overhead.py [--smoke] [--rounds N] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from typing import Any

import jax

from jgraph.core import format_table, write_results
from jgraph.coserve import CoServeConfig
from jgraph.coserve.serve import CoServeService, ServeConfig, ServerThread, load_runtime

STREAMS = 16


def _tpot(first: float, last: float, n: int) -> float | None:
    return (last - first) / (n - 1) if n > 1 else None


def direct_round(runtime: Any, prompts: list[list[int]], max_tokens: int) -> list[dict]:
    """Submits every prompt to the engine at once and steps until all finish."""
    runtime.backend.reset()
    engine, tok = runtime.backend.engine, runtime.tokenizer
    t0 = time.perf_counter()
    rids = [
        engine.submit(p, max_new_tokens=max_tokens, temperature=0.0, eos_id=tok.eos_id)
        for p in prompts
    ]
    ids: dict[int, list[int]] = {r: [] for r in rids}
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    while not engine.idle:
        rep = engine.step()
        now = time.perf_counter()
        for rid, t in rep.new_tokens.items():
            ids[rid].append(t)
            last[rid] = now
            if rid not in first and tok.decode(ids[rid]).rstrip("\ufffd"):
                first[rid] = now
    rows = []
    for r in rids:
        engine.pop_result(r)
        f = first.get(r, last[r])  # an all-invalid output is emitted whole at the end
        rows.append({"ttft_s": f - t0, "tpot_s": _tpot(f, last[r], len(ids[r])),
                     "tokens": len(ids[r])})  # fmt: skip
    return rows


def _client(jobs: Any, results: Any) -> None:
    """Load-client process: for each (url, prompts, max_tokens) job, opens one streaming
    request per prompt at once and reports (ttft, tpot, tokens) per request."""
    import httpx

    async def one(client: httpx.AsyncClient, prompt: list[int], max_tokens: int) -> dict:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        t0 = time.perf_counter()
        times: list[float] = []
        n = 0
        async with client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                msg = json.loads(line[6:])
                if msg.get("choices") and msg["choices"][0].get("text"):
                    times.append(time.perf_counter())
                if msg.get("usage"):
                    n = msg["usage"]["completion_tokens"]
        if not times:
            return {"ttft_s": None, "tpot_s": None, "tokens": n}
        return {"ttft_s": times[0] - t0, "tpot_s": _tpot(times[0], times[-1], n), "tokens": n}

    async def run(url: str, prompts: list[list[int]], max_tokens: int) -> list[dict]:
        limits = httpx.Limits(max_connections=4 * STREAMS)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
            return list(await asyncio.gather(*(one(c, p, max_tokens) for p in prompts)))

    while (job := jobs.get()) is not None:
        try:
            results.put(asyncio.run(run(*job)))
        except Exception as exc:  # report to the parent instead of leaving it waiting
            results.put(f"{type(exc).__name__}: {exc}")


def _get(results: Any) -> list[dict]:
    got = results.get(timeout=600)
    if isinstance(got, str):
        raise RuntimeError(f"the load client failed: {got}")
    return list(got)


def server_round(
    config: ServeConfig, runtime: Any, prompts: list[list[int]], max_tokens: int, jobs: Any,
    results: Any,
) -> list[dict]:  # fmt: skip
    """Starts the server on the compiled engine, lets the client process stream, stops it."""
    srv = ServerThread(CoServeService(config, runtime=runtime)).start()
    try:
        jobs.put((srv.url, prompts[:2], 4))  # warm the HTTP path and the client up (untimed)
        _get(results)
        jobs.put((srv.url, prompts, max_tokens))
        return _get(results)
    finally:
        srv.stop()


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows if r[key] is not None)


def _max(rows: list[dict], key: str) -> float:
    return max(r[key] for r in rows if r[key] is not None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="16 tokens, 1 round (CI, < 60 s)")
    ap.add_argument("--rounds", type=int, default=None, help="direct/server rounds (default 3)")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per request (64)")
    ap.add_argument("--out", default=None, help="write JSON results here")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.smoke else 3)
    max_tokens = args.max_tokens or (16 if args.smoke else 64)
    scfg = CoServeConfig(
        token_budget=64, max_requests=STREAMS, page_size=16, num_pages=8 * STREAMS,
        max_pages_per_request=8, max_adapters=1, ft_max_len=16, bwd_chunk=16,
    )  # fmt: skip
    state = tempfile.mkdtemp(prefix="jgraph-bench-serve-")
    config = ServeConfig(model="tiny", state_dir=state, coserve=scfg, max_queue=4 * STREAMS)
    runtime = load_runtime(config)
    tok = runtime.tokenizer
    prompts = [tok.encode(f"Request {i}: tell me about topic {7 * i}") for i in range(STREAMS)]
    direct_round(runtime, prompts[:2], 2)  # compile the step (untimed)
    ctx = mp.get_context("spawn")  # the client gets its own interpreter (and GIL)
    jobs, results = ctx.Queue(), ctx.Queue()
    client = ctx.Process(target=_client, args=(jobs, results), daemon=True)
    client.start()
    direct: list[dict] = []
    server: list[dict] = []
    try:
        for _ in range(rounds):
            direct += direct_round(runtime, prompts, max_tokens)
            server += server_round(config, runtime, prompts, max_tokens, jobs, results)
    finally:
        jobs.put(None)
        client.join(timeout=30)
    if sorted(r["tokens"] for r in direct) != sorted(r["tokens"] for r in server):
        print("warning: the two modes generated different token counts", file=sys.stderr)
    d_tpot, s_tpot = _median(direct, "tpot_s"), _median(server, "tpot_s")
    kind = jax.devices()[0].device_kind
    rows = [
        {"mode": mode, "device": kind, "streams": STREAMS, "max_tokens": max_tokens,
         "requests": len(rs), "ttft_ms_median": 1e3 * _median(rs, "ttft_s"),
         "tpot_ms_median": 1e3 * _median(rs, "tpot_s"),
         "tpot_ms_max": 1e3 * _max(rs, "tpot_s")}
        for mode, rs in (("engine direct", direct), ("HTTP server", server))
    ]  # fmt: skip
    ratio = s_tpot / d_tpot
    print(f"TPOT, engine direct vs through the HTTP server ({STREAMS} concurrent streams, "
          f"{rounds} round(s), {kind}, {jax.default_backend()})")  # fmt: skip
    print(format_table(rows))
    print(f"\nserver / direct TPOT (medians): {ratio:.3f} (+{100 * (ratio - 1):.1f}%); "
          f"issue #16 target: < 5% overhead -> {'met' if ratio < 1.05 else 'MISSED'}")  # fmt: skip
    if args.out:
        write_results(
            args.out, name="bench_serve_overhead", rows=rows, smoke=args.smoke, rounds=rounds,
            ratio=ratio, target={"max_ratio": 1.05},
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
