"""An open-loop load client: replays a trace's arrivals against a send function and records
per-request latency (TTFT, TPOT, end-to-end) and SLO attainment.

``send(request)`` is whatever talks to the server: an async generator function, a coroutine
function returning an (async) iterable, or a plain function returning an iterable (run in a
worker thread so that requests still overlap). It yields once per streamed chunk; each chunk
counts as one output token unless ``tokens_of(chunk)`` says otherwise. The client starts every
request at its arrival time whether or not earlier ones finished (open loop, as in FlexLLM's
and vLLM's benchmarks), so queueing shows up in TTFT, which is measured from the scheduled
arrival. TPOT is ``(last token time - first token time) / (output tokens - 1)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import statistics
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any

from jgraph.core import ConfigError, check_number
from jgraph.coserve._workload import TraceRequest

__all__ = ["RequestRecord", "load_summary", "run_load", "run_load_async", "slo_attainment"]

_DONE = object()


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """What the client saw of one request; times are seconds from the start of the run.

    Attributes:
        index: position in the trace.
        arrival_s: when it was sent (the trace's arrival time).
        first_token_s: when the first token arrived (None: no token).
        last_token_s: when the last token arrived (None: no token).
        finish_s: when the response ended (or failed).
        output_tokens: tokens received.
        error: ``repr`` of the exception ``send`` raised, None on success.
    """

    index: int
    arrival_s: float
    first_token_s: float | None
    last_token_s: float | None
    finish_s: float
    output_tokens: int
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time between output tokens; None with fewer than two tokens."""
        if self.output_tokens < 2 or self.first_token_s is None or self.last_token_s is None:
            return None
        return (self.last_token_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s


async def _aiter(send: Callable[[TraceRequest], Any], req: TraceRequest) -> AsyncIterable[Any]:
    """Yields ``send(req)``'s chunks whatever kind of callable ``send`` is."""
    if inspect.isasyncgenfunction(send) or inspect.iscoroutinefunction(send):
        result = send(req)
        if inspect.isawaitable(result):
            result = await result
    else:
        result = await asyncio.to_thread(send, req)
    if isinstance(result, AsyncIterable):
        async for chunk in result:
            yield chunk
    elif isinstance(result, Iterable):
        it = iter(result)
        while (chunk := await asyncio.to_thread(next, it, _DONE)) is not _DONE:
            yield chunk
    else:
        raise TypeError(f"send returned {type(result).__name__}, not an (async) iterable of chunks")


async def run_load_async(
    trace: Sequence[TraceRequest],
    send: Callable[[TraceRequest], Any],
    *,
    clock: Callable[[], float] | None = None,
    tokens_of: Callable[[Any], int] | None = None,
) -> list[RequestRecord]:
    """Replays ``trace`` (see the module docstring); returns one record per request, in order.

    Args:
        trace: requests with arrival times (seconds from the start).
        send: the request function.
        clock: seconds, monotonic; defaults to the running event loop's clock (``loop.time``),
            which is also what the client sleeps on.
        tokens_of: output tokens in one chunk (default: 1 per chunk).
    """
    loop = asyncio.get_running_loop()
    now = clock or loop.time
    start = now()

    async def one(index: int, req: TraceRequest) -> RequestRecord:
        await asyncio.sleep(max(0.0, start + req.arrival_s - now()))
        first = last = None
        tokens = 0
        error = None
        try:
            async for chunk in _aiter(send, req):
                n = 1 if tokens_of is None else int(tokens_of(chunk))
                if n <= 0:
                    continue
                last = now() - start
                first = last if first is None else first
                tokens += n
        except Exception as exc:  # a failed request is a recorded SLO miss, not a crash
            error = repr(exc)
        return RequestRecord(
            index=index,
            arrival_s=req.arrival_s,
            first_token_s=first,
            last_token_s=last,
            finish_s=now() - start,
            output_tokens=tokens,
            error=error,
        )

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(trace))))


def run_load(
    trace: Sequence[TraceRequest],
    send: Callable[[TraceRequest], Any],
    *,
    tokens_of: Callable[[Any], int] | None = None,
) -> list[RequestRecord]:
    """`run_load_async` in a new event loop (call it from synchronous code only).

    Example:
        >>> async def send(req):
        ...     for _ in range(req.max_tokens):
        ...         yield "tok"
        >>> recs = run_load([TraceRequest(arrival_s=0.0, prompt="hi", max_tokens=3)], send)
        >>> recs[0].output_tokens
        3
    """
    return asyncio.run(run_load_async(trace, send, tokens_of=tokens_of))


def _meets(r: RequestRecord, tpot_s: float, ttft_s: float) -> bool:
    ttft, tpot = r.ttft_s, r.tpot_s
    return (
        r.error is None and ttft is not None and ttft <= ttft_s and (tpot is None or tpot <= tpot_s)
    )


def slo_attainment(records: Sequence[RequestRecord], *, tpot_s: float, ttft_s: float) -> float:
    """Fraction of requests that met both targets. A failed request, or one without any
    token, misses; a one-token response has no TPOT and is judged on TTFT alone.

    Raises:
        ConfigError: no records.
    """
    check_number("tpot_s", tpot_s, minimum=0.0, strict_minimum=True)
    check_number("ttft_s", ttft_s, minimum=0.0, strict_minimum=True)
    if not records:
        raise ConfigError("records", [], "no requests to judge", "run at least one request")
    return sum(_meets(r, tpot_s, ttft_s) for r in records) / len(records)


def load_summary(records: Sequence[RequestRecord]) -> dict[str, float]:
    """Means and medians of TTFT/TPOT/e2e over successful requests, the error count and the
    output tokens per second over the run (first arrival to last finish)."""
    ok = [r for r in records if r.error is None]
    out: dict[str, float] = {
        "requests": float(len(records)),
        "errors": float(len(records) - len(ok)),
    }
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        vals = [v for r in ok if (v := getattr(r, name)) is not None]
        if vals:
            out[f"mean_{name}"] = statistics.fmean(vals)
            out[f"p50_{name}"] = statistics.median(vals)
    if records:
        span = max(r.finish_s for r in records) - min(r.arrival_s for r in records)
        out["output_tokens_per_s"] = sum(r.output_tokens for r in ok) / span if span > 0 else 0.0
    return out
