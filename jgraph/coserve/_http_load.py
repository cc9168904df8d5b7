"""The load client's HTTP side: a ``send`` function for `run_load` that streams each trace
request from an OpenAI-compatible ``/v1/completions`` endpoint (``jgraph serve``, or any
server speaking that API). Needs the ``serve`` extra (httpx), imported when called."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from jgraph.core import ConfigError
from jgraph.coserve._workload import TraceRequest

__all__ = ["http_sender"]


def http_sender(
    base_url: str,
    *,
    model: str,
    api_key: str | None = None,
    temperature: float = 0.0,
    timeout_s: float = 300.0,
) -> Callable[[TraceRequest], AsyncIterator[str]]:
    """A `run_load` ``send`` that posts each request as a streaming completion and yields the
    text of every SSE chunk (one chunk per generated token, except that a server may hold back
    a partial UTF-8 character or a possible stop-string prefix and send it with the next).

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8000"`` (``/v1/completions`` is added).
        model: the model of requests whose trace entry names none.
        api_key: sent as ``Authorization: Bearer``.
        temperature: sampling temperature of every request (0: greedy).
        timeout_s: per-request timeout.

    Returns:
        ``send(request)``, an async generator function. An HTTP error status (4xx, 429, 5xx)
        raises, which `run_load` records as that request's error.

    Example:
        >>> from jgraph.coserve.workload import http_sender, run_load, read_trace
        >>> send = http_sender("http://127.0.0.1:8000", model="tiny")
        >>> records = run_load(read_trace("trace.jsonl"), send)  # doctest: +SKIP
    """
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(
            "base_url", base_url, "is not an http(s) URL", "e.g. http://127.0.0.1:8000"
        )
    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def send(req: TraceRequest) -> AsyncIterator[str]:
        import httpx  # the serve extra

        body: dict[str, Any] = {
            "model": req.model or model,
            "prompt": req.prompt if isinstance(req.prompt, str) else list(req.prompt),
            "max_tokens": req.max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        async with (
            httpx.AsyncClient(timeout=timeout_s) as client,
            client.stream("POST", url, json=body, headers=headers) as resp,
        ):
            if resp.status_code >= 400:
                detail = (await resp.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"HTTP {resp.status_code}: {detail}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"stream error: {chunk['error']}")
                yield chunk["choices"][0].get("text", "")

    return send
