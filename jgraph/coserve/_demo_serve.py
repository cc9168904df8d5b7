"""The serving stop of the coserve demo: `jgraph serve` on a loopback port, a finetuning job
from an uploaded JSONL file, and streamed requests from the official ``openai`` client while
the job trains; TTFT and TPOT are measured on the client side."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from jgraph.coserve._config import CoServeConfig, LoraConfig

__all__ = ["serve_demo", "stream_timings"]

log = logging.getLogger(__name__)

KEY = "sk-jgraph-demo"
SCFG = CoServeConfig(
    token_budget=64, max_requests=8, page_size=8, num_pages=64, max_pages_per_request=8,
    max_adapters=2, ft_max_len=48, bwd_chunk=24,
)  # fmt: skip
EXAMPLES = [
    ("jgraph co-", "serves inference and finetuning."),
    ("LoRA ", "adapters train while requests stream."),
    ("The engine ", "runs one jitted step per call."),
    ("Hot swap: ", "a finished job serves at once."),
]
PROMPTS = ["Hello, ", "The cat ", "JAX is ", "Once upon a time", "jgraph co-", "LoRA ",
           "Paged KV ", "Tokens "]  # fmt: skip
STREAMS, NEW_TOKENS, EPOCHS = 8, 24, 6


def stream_timings(
    start: float, chunk_times: list[float], n_tokens: int
) -> tuple[float, float | None]:
    """(TTFT, TPOT) of one streamed request as the client saw it: the time from sending to
    the first text chunk, and the time from the first to the last text chunk per further
    token (None for a single-token answer).

    Raises:
        ValueError: no chunk arrived.

    Example:
        >>> stream_timings(10.0, [10.5, 10.7, 11.5], 5)
        (0.5, 0.25)
    """
    if not chunk_times:
        raise ValueError("the stream sent no text")
    ttft = chunk_times[0] - start
    if n_tokens < 2:
        return ttft, None
    return ttft, (chunk_times[-1] - chunk_times[0]) / (n_tokens - 1)


def _stream(client: Any, prompt: str) -> tuple[float, float | None]:
    start = time.perf_counter()
    times: list[float] = []
    n = 0
    stream = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
    return stream_timings(start, times, n)


def _losses(client: Any, job_id: str) -> list[float]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    return [e.data["train_loss"] for e in reversed(events) if e.type == "metrics"]


def serve_demo(out_dir: Path, *, timeout: float = 90.0) -> dict[str, Any]:
    """Runs the server demo (tiny random model, CPU) and returns its summary.

    Starts `CoServeService` behind `ServerThread` on 127.0.0.1 (a free port, an API key),
    uploads a JSONL dataset and starts a finetuning job, streams `STREAMS` greedy requests
    concurrently while it trains, waits for the job to finish and asks the fine-tuned model.

    Raises:
        ImportError: the ``serve`` extra or ``openai`` is missing.
        RuntimeError: the job did not finish within ``timeout`` seconds.
    """
    from openai import OpenAI

    from jgraph.coserve._serve_config import ServeConfig
    from jgraph.coserve._service import CoServeService
    from jgraph.coserve._uvicorn import ServerThread

    config = ServeConfig(
        model="tiny", state_dir=str(Path(out_dir) / "serve-state"), api_key=KEY, coserve=SCFG,
        lora=LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj")), learning_rate=3e-2,
    )  # fmt: skip
    t0 = time.perf_counter()
    srv = ServerThread(CoServeService(config)).start()
    try:
        client = OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        # The first request waits for the engine step to compile (not timed below).
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2, temperature=0)
        startup = time.perf_counter() - t0
        data = "".join(
            json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in EXAMPLES
        ).encode()
        file = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny", training_file=file.id, hyperparameters={"n_epochs": EPOCHS},
            suffix="demo",
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while client.fine_tuning.jobs.retrieve(job.id).status == "queued":
            if time.monotonic() > deadline:
                raise RuntimeError("the finetuning job did not start")
            time.sleep(0.05)
        before = len(_losses(client, job.id))
        with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
            timings = list(pool.map(lambda p: _stream(client, p), PROMPTS[:STREAMS]))
        during = len(_losses(client, job.id)) - before
        while (status := client.fine_tuning.jobs.retrieve(job.id).status) in ("queued", "running"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the finetuning job is still {status} after {timeout} s")
            time.sleep(0.1)
        losses = _losses(client, job.id)
        model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
        answer = None
        if model is not None:
            r = client.completions.create(
                model=model, prompt="jgraph co-", max_tokens=16, temperature=0
            )
            answer = r.choices[0].text
        url = srv.url
    finally:
        srv.stop()
    ttfts = [t for t, _ in timings]
    tpots = [t for _, t in timings if t is not None]
    return {
        "url": url,
        "startup_s": startup,
        "streams": len(timings),
        "max_tokens": NEW_TOKENS,
        "ttft_s_median": statistics.median(ttfts),
        "ttft_s_max": max(ttfts),
        "tpot_s_median": statistics.median(tpots) if tpots else None,
        "job_id": job.id,
        "job_status": status,
        "job_losses": losses,
        "ft_samples_while_streaming": during,
        "fine_tuned_model": model,
        "fine_tuned_answer": answer,
    }
