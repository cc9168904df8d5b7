"""Prometheus metrics of one server (a registry per app, so several apps in one process, as in
tests, do not collide).

Names follow vLLM/JetStream where they exist: time to first token and time per output token
histograms, waiting/running requests, KV-cache utilization, plus the finetuning side
(tokens/s, the last sample loss, samples done).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """The server's counters, gauges and histograms in their own `CollectorRegistry`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "jgraph_coserve_"
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Arrival to first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            p + "time_per_output_token_seconds",
            "Mean time between generated tokens of a request (after the first)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            p + "request_latency_seconds",
            "Arrival to last token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            p + "requests", "Finished inference requests", ["finish_reason"], registry=r
        )
        self.rejected = Counter(
            p + "requests_rejected", "Requests refused (429) by the bounded queue", registry=r
        )
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens admitted", registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated", registry=r)
        self.waiting = Gauge(p + "requests_waiting", "Requests queued for a slot", registry=r)
        self.running = Gauge(p + "requests_running", "Requests holding a slot", registry=r)
        self.kv_util = Gauge(p + "kv_cache_utilization", "Fraction of KV pages in use", registry=r)
        self.ft_tokens = Counter(
            p + "finetuning_tokens", "Finetuning forward tokens processed", registry=r
        )
        self.ft_tps = Gauge(
            p + "finetuning_tokens_per_second",
            "Finetuning forward tokens per second over the last few seconds",
            registry=r,
        )
        self.ft_loss = Gauge(
            p + "finetuning_loss", "Loss of the last finetuning sample", registry=r
        )
        self.ft_samples = Counter(
            p + "finetuning_samples", "Finetuning samples back-propagated", registry=r
        )
        self.steps = Counter(p + "engine_steps", "Engine steps run", registry=r)
        self._window: list[tuple[float, int]] = []

    def record_ft_tokens(self, n: int, *, now: float | None = None, window: float = 5.0) -> None:
        """Counts ``n`` finetuning tokens and refreshes the tokens/s gauge over ``window`` s."""
        now = time.monotonic() if now is None else now
        if n:
            self.ft_tokens.inc(n)
        self._window.append((now, n))
        while self._window and self._window[0][0] < now - window:
            self._window.pop(0)
        span = now - self._window[0][0] if len(self._window) > 1 else 0.0
        total = sum(k for _, k in self._window[1:])
        self.ft_tps.set(total / span if span > 0 else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
