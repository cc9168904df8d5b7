"""`CoServeService`: the engine thread, request streams and the model registry.

One background thread owns the engine (`EngineBackend`): it runs the closures that HTTP
handlers post (submit, abort, cancel), starts finetuning jobs, and steps the engine while it
has work. Handlers never touch the engine; they post a closure and await a per-request
`asyncio.Queue` that the thread feeds with ``loop.call_soon_threadsafe``, so the event loop
never blocks on a step.

Requests are admitted up to ``ServeConfig.max_queue`` at once (waiting + running); beyond that
`APIError` 429. Text is detokenized in the engine thread: stop strings end a request (and free
its slot) as soon as they appear, and a partial UTF-8 character is held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from jgraph.core import ConfigError
from jgraph.coserve._backend import BankFullError
from jgraph.coserve._engine import StepReport
from jgraph.coserve._jobs import JobManager
from jgraph.coserve._lora import load_peft
from jgraph.coserve._metrics import ServerMetrics
from jgraph.coserve._openai_api import APIError
from jgraph.coserve._serve_config import Runtime, ServeConfig, load_runtime
from jgraph.coserve._state import StateDir

__all__ = ["CoServeService", "RequestStream"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A servable model: the base (``key`` None) or an adapter version (``name@vN``)."""

    name: str
    key: str | None
    path: str | None
    created: int
    owned_by: str


class RequestStream:
    """One generation request as the handler sees it: `events` yields ``("text", delta)``
    items, then ``("done", finish_reason)``; an `APIError` is raised from `events`."""

    def __init__(
        self,
        prompt: list[int],
        *,
        model: ModelEntry,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str],
    ) -> None:
        self.prompt, self.model, self.max_tokens = prompt, model, max_tokens
        self.temperature, self.stop = temperature, list(stop)
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.arrival = time.monotonic()
        self.first: float | None = None
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already sent
        self.rid: int | None = None
        self.closed = False

    @property
    def usage(self) -> dict[str, int]:
        p, c = len(self.prompt), len(self.ids)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def post(self, kind: str, value: Any) -> None:
        """Thread-safe: hands an event to the handler's loop (dropped if the loop is gone)."""
        with contextlib.suppress(RuntimeError):  # the event loop closed (shutting down)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    async def next(self) -> tuple[str, Any]:
        kind, value = await self.queue.get()
        if kind == "error":
            raise value
        return kind, value


class CoServeService:
    """The co-serving service behind the HTTP app (usable without HTTP too).

    Args:
        config: what to serve.
        runtime: a model loaded earlier (`load_runtime`), e.g. from a service that was
            closed, to skip loading and compiling again; None loads ``config.model``.

    Example:
        >>> from jgraph.coserve.serve import CoServeService, ServeConfig
        >>> svc = CoServeService(ServeConfig(state_dir="/tmp/jgraph-state"))  # doctest: +SKIP
        >>> svc.start()  # doctest: +SKIP
    """

    def __init__(self, config: ServeConfig, *, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or load_runtime(config)
        self.runtime.backend.reset()
        self.backend = self.runtime.backend
        self.tokenizer = self.runtime.tokenizer
        self.metrics = ServerMetrics()
        self.state = StateDir(config.state_dir)
        self.lock = threading.RLock()
        self.created = int(time.time())
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._streams: dict[int, RequestStream] = {}
        self._admitted = 0
        self.models: dict[str, ModelEntry] = {}
        base = self.runtime.base_name
        self.models[base] = ModelEntry(base, None, None, self.created, "jgraph")
        for name, path in config.adapters:
            self.models[name] = ModelEntry(name, f"{name}@v0", path, self.created, "user")
        for name, meta in self.state.adapters().items():
            self.models[name] = ModelEntry(
                name, f"{name}@v{meta['version']}", meta["path"], int(meta["created_at"]), "jgraph"
            )
        self.jobs = JobManager(self)

    @property
    def base_name(self) -> str:
        return self.runtime.base_name

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the engine thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="coserve-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stops the engine thread; running requests end with an error."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        err = APIError(503, "the server is shutting down", code="shutting_down")
        for s in list(self._streams.values()):
            s.post("error", err)
        self._streams.clear()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def post(self, task: Callable[[], None]) -> None:
        """Runs ``task`` on the engine thread before its next step."""
        self._tasks.put(task)
        self._wake.set()

    # -- models ---------------------------------------------------------------------------
    def model(self, name: str) -> ModelEntry:
        with self.lock:
            entry = self.models.get(name)
        if entry is None:
            raise APIError(
                404, f"The model '{name}' does not exist", param="model", code="model_not_found"
            )
        return entry

    def register_version(self, name: str, key: str, path: str) -> None:
        """Makes ``name`` serve a new adapter version (the hot swap; engine thread only)."""
        with self.lock:
            old = self.models.get(name)
            self.models[name] = ModelEntry(name, key, path, int(time.time()), "jgraph")
        self.backend.ensure(key, lambda: load_peft(path, self.runtime.cfg))
        if old is not None and old.key is not None and old.key != key:
            self.backend.retire(old.key)

    def _load(self, entry: ModelEntry) -> Any:
        if entry.key is not None and entry.key.endswith("@v0") and entry.name in \
                self.runtime.adapters:  # fmt: skip
            return lambda: self.runtime.adapters[entry.name]
        assert entry.path is not None, "an adapter version always has a folder"
        path = entry.path
        return lambda: load_peft(path, self.runtime.cfg)

    # -- inference ------------------------------------------------------------------------
    def check_prompt(self, prompt: list[int], max_tokens: int | None) -> int:
        """Validates a tokenized prompt; returns the max_tokens to use.

        Raises:
            APIError: 400 for a prompt that is empty, has ids outside the vocabulary, or does
                not fit a request slot together with ``max_tokens``.
        """
        cap = self.backend.max_request_len
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        if any(not 0 <= t < self.backend.vocab_size for t in prompt):
            raise APIError(400, "prompt token ids outside the vocabulary", param="prompt")
        room = cap - len(prompt)
        if room < 1 or (max_tokens is not None and max_tokens > room):
            want = len(prompt) + (max_tokens or 1)
            raise APIError(
                400,
                f"This model's maximum context length is {cap} tokens. However, you requested "
                f"{want} tokens ({len(prompt)} in the prompt, {max_tokens or 1} for the "
                "completion). Please reduce the prompt or the completion length.",
                param="prompt" if room < 1 else "max_tokens",
                code="context_length_exceeded",
            )
        return max_tokens if max_tokens is not None else min(room, self.config.default_max_tokens)

    async def generate(
        self,
        prompt: list[int],
        *,
        model: ModelEntry,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
    ) -> RequestStream:
        """Admits a request and waits until the engine accepted it.

        Raises:
            APIError: 429 when ``max_queue`` requests are in flight, 503 when the engine thread
                is not running, or an error from the engine (e.g. no free adapter slot).
        """
        if not self.alive:
            raise APIError(503, "the engine is not running", code="engine_down")
        with self.lock:
            if self._admitted >= self.config.max_queue:
                self.metrics.rejected.inc()
                raise APIError(
                    429,
                    f"the server is at its limit of {self.config.max_queue} requests; retry later",
                    code="queue_full",
                )
            self._admitted += 1
        s = RequestStream(
            prompt, model=model, max_tokens=max_tokens, temperature=temperature, stop=stop
        )
        self.post(lambda: self._submit(s))
        try:
            await s.next()  # "accepted", or the engine's error
        except BaseException:
            self.release(s)
            raise
        return s

    def release(self, s: RequestStream) -> None:
        """Ends a request from the handler side (finished, failed or the client left)."""
        with self.lock:
            if s.closed:
                return
            s.closed = True
            self._admitted -= 1
        self.post(lambda: self._abort(s))

    def _submit(self, s: RequestStream) -> None:
        if s.closed:
            return
        try:
            key = s.model.key
            if key is not None:
                self.backend.ensure(key, self._load(s.model))
            s.rid = self.backend.submit(
                s.prompt, max_new_tokens=s.max_tokens, adapter=key,
                temperature=s.temperature, eos_id=self.tokenizer.eos_id,
            )  # fmt: skip
        except BankFullError as exc:
            s.post("error", APIError(429, f"{exc}; retry later", code="adapters_busy"))
            return
        except ConfigError as exc:
            s.post("error", APIError(400, str(exc), param=exc.field))
            return
        self._streams[s.rid] = s
        self.metrics.prompt_tokens.inc(len(s.prompt))
        s.post("accepted", None)

    def _abort(self, s: RequestStream) -> None:
        if s.rid is not None and self._streams.pop(s.rid, None) is not None:
            self.backend.abort(s.rid)

    def _on_token(self, s: RequestStream, tok: int, finished: bool, now: float) -> None:
        assert s.rid is not None, "tokens arrive only for submitted requests"
        if s.first is None:
            s.first = now
            self.metrics.ttft.observe(now - s.arrival)
        s.ids.append(tok)
        self.metrics.generation_tokens.inc()
        text = self.tokenizer.decode(s.ids)
        reason = None
        cut = len(text)
        for stop in s.stop:
            i = text.find(stop, max(0, s.emitted - len(stop)))
            if i >= 0:
                cut, reason = min(cut, i), "stop"
        if reason is None and finished:
            reason = "stop" if tok == self.tokenizer.eos_id else "length"
        if reason is None:
            # Hold back what may be the start of a stop string or of a UTF-8 character.
            hold = max((len(x) - 1 for x in s.stop), default=0)
            cut = len(text) - hold
            while cut > s.emitted and text[cut - 1] == "\ufffd":
                cut -= 1
        if cut > s.emitted:
            s.post("text", text[s.emitted : cut])
            s.emitted = cut
        if reason is not None:
            if finished:
                self.backend.finish(s.rid)
            else:
                self.backend.abort(s.rid)
            del self._streams[s.rid]
            self.metrics.requests.labels(reason).inc()
            self.metrics.e2e.observe(now - s.arrival)
            if len(s.ids) > 1:
                self.metrics.tpot.observe((now - s.first) / (len(s.ids) - 1))
            s.post("done", reason)

    # -- the engine thread ----------------------------------------------------------------
    def _warmup(self) -> None:
        """Compiles the step with a one-token request before the first real one (else the
        first request's TTFT includes the compilation)."""
        t0 = time.perf_counter()
        rid = self.backend.submit([0], max_new_tokens=1, adapter=None, temperature=0.0, eos_id=None)
        while self.backend.busy and not self._stop.is_set():
            self.backend.step()
        self.backend.finish(rid)
        log.info("engine step compiled and run in %.1f s", time.perf_counter() - t0)

    def _run(self) -> None:
        try:
            self._warmup()
        except Exception:
            log.exception("engine warm-up failed")
            self._recover()
        while not self._stop.is_set():
            try:
                while True:
                    try:
                        self._tasks.get_nowait()()
                    except queue.Empty:
                        break
                self.jobs.tick()
                if not self.backend.busy:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                report = self.backend.step()
                self._after_step(report)
            except Exception:  # the thread must survive any bug in a request or a job
                log.exception("engine thread error; failing the work in flight")
                self._recover()

    def _after_step(self, rep: StepReport) -> None:
        now = time.monotonic()
        finished = set(rep.finished)
        for rid, tok in rep.new_tokens.items():
            s = self._streams.get(rid)
            if s is None:
                self.backend.finish(rid)
                continue
            self._on_token(s, tok, rid in finished, now)
        m = self.metrics
        m.steps.inc()
        m.record_ft_tokens(rep.ft_forward_tokens, now=now)
        st = self.backend.stats()
        m.waiting.set(st.waiting)
        m.running.set(st.running)
        m.kv_util.set(st.kv_utilization)
        if rep.sample_loss is not None:
            m.ft_samples.inc()
            if math.isfinite(rep.sample_loss):
                m.ft_loss.set(rep.sample_loss)
        self.jobs.after_step(rep)

    def _recover(self) -> None:
        err = APIError(500, "the engine failed while serving this request", code="engine_error")
        for s in list(self._streams.values()):
            s.post("error", err)
        self._streams.clear()
        self.jobs.fail_active("the engine failed during the job (see the server log)")
        try:
            self.backend.reset()
        except Exception:
            log.exception("engine reset failed; stopping the engine thread")
            self._stop.set()
