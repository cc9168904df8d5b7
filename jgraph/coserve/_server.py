"""The FastAPI app: OpenAI-compatible routes over a `CoServeService`.

Routes: ``/v1/completions``, ``/v1/chat/completions`` (JSON or SSE streaming in OpenAI's
chunk format, ending with ``data: [DONE]``), ``/v1/models``, ``/v1/files``,
``/v1/fine_tuning/jobs`` (+ ``/cancel``, ``/events``), ``/health``, ``/metrics``
(Prometheus text). Every error is OpenAI's ``{"error": {...}}`` JSON; malformed JSON and
bad parameters are 400 (not FastAPI's 422). When an API key is set, every route checks
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from jgraph.core import ConfigError
from jgraph.coserve._chat import normalize_messages, render_chat
from jgraph.coserve._openai_api import (
    APIError,
    ChatRequest,
    CompletionRequest,
    FineTuneRequest,
    error_body,
)
from jgraph.coserve._service import CoServeService, RequestStream

__all__ = ["make_app"]


def _err(exc: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":
        return _err(APIError(400, f"malformed JSON body: {first.get('msg')}", code="invalid_json"))
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid request"))
    return _err(APIError(400, msg, param=param, code="invalid_parameter"))


def _multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename, bytes). The stdlib
    parser keeps the server free of python-multipart."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise APIError(400, "expected a multipart/form-data upload", code="invalid_upload")
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            out[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return out


def make_app(service: CoServeService, *, manage: bool = True) -> FastAPI:
    """The HTTP app over ``service``.

    Args:
        service: the co-serving service.
        manage: start the service's engine thread with the app and close it on shutdown.

    Example:
        >>> from jgraph.coserve.serve import CoServeService, ServeConfig, make_app
        >>> app = make_app(CoServeService(ServeConfig(state_dir="/tmp/s")))  # doctest: +SKIP
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage:
            service.start()
        yield
        if manage:
            await run_in_threadpool(service.close)

    app = FastAPI(title="jgraph co-serving", lifespan=lifespan)
    key = service.config.api_key
    app.state.service = service

    @app.middleware("http")
    async def auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        if key is not None:
            got = request.headers.get("authorization", "")
            token = got[7:] if got.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(token.encode(), key.encode()):
                return _err(APIError(401, "Incorrect or missing API key", code="invalid_api_key"))
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _err(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError) -> JSONResponse:
        return _err(APIError(400, str(exc), param=exc.field))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code)

    # -- inference ------------------------------------------------------------------------
    def _temperature(req: Any) -> float:
        return 1.0 if req.temperature is None else float(req.temperature)

    async def _run(req: Any, prompt: list[int], max_tokens: int | None, chat: bool) -> Response:
        req.unsupported()
        model = service.model(req.model)
        n = service.check_prompt(prompt, max_tokens)
        s = await service.generate(
            prompt, model=model, max_tokens=n, temperature=_temperature(req), stop=req.stops
        )
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        if req.stream:
            return StreamingResponse(
                _stream(s, rid, req, chat), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )  # fmt: skip
        try:
            parts, reason = [], None
            while reason is None:
                kind, value = await s.next()
                if kind == "text":
                    parts.append(value)
                else:
                    reason = value
        finally:
            service.release(s)
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return JSONResponse({
            "id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": req.model, "choices": [choice],
            "usage": s.usage, "system_fingerprint": None,
        })  # fmt: skip

    async def _stream(s: RequestStream, rid: str, req: Any, chat: bool) -> AsyncIterator[str]:
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, reason: str | None, first: bool = False) -> str:
            c: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
            if chat:
                d: dict[str, Any] = {"role": "assistant"} if first else {}
                if delta is not None:
                    d["content"] = delta
                c["delta"] = d
            else:
                c["text"] = delta or ""
            body = {"id": rid, "object": obj, "created": created, "model": req.model,
                    "choices": [c], "system_fingerprint": None}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        try:
            if chat:
                yield chunk("", None, first=True)
            while True:
                try:
                    kind, value = await s.next()
                except APIError as exc:
                    yield f"data: {json.dumps(exc.body())}\n\n"
                    break
                if kind == "text":
                    yield chunk(value, None)
                else:
                    yield chunk(None if chat else "", value)
                    if req.include_usage:
                        body = {"id": rid, "object": obj, "created": created, "model": req.model,
                                "choices": [], "usage": s.usage}  # fmt: skip
                        yield f"data: {json.dumps(body)}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            service.release(s)  # also when the client disconnects mid-stream

    def _encode_prompt(prompt: Any) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return service.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Response:
        return await _run(req, _encode_prompt(req.prompt), req.max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Response:
        msgs = normalize_messages(req.messages)
        text = render_chat(msgs, template=service.runtime.chat_template)
        return await _run(
            req, service.tokenizer.encode(text), req.max_completion_tokens or req.max_tokens,
            chat=True,
        )  # fmt: skip

    # -- models ---------------------------------------------------------------------------
    def _model_obj(name: str) -> dict[str, Any]:
        m = service.model(name)
        return {"id": m.name, "object": "model", "created": m.created, "owned_by": m.owned_by,
                "parent": None if m.key is None else service.base_name}  # fmt: skip

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        with service.lock:
            names = list(service.models)
        return {"object": "list", "data": [_model_obj(n) for n in names]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        return _model_obj(name)

    # -- files ----------------------------------------------------------------------------
    def _file(fid: str) -> dict[str, Any]:
        with service.lock:
            rec = service.state.file(fid)
        if rec is None:
            raise APIError(404, f"No such File object: {fid}", param="id", code="file_not_found")
        return rec

    @app.post("/v1/files")
    async def upload(request: Request) -> dict[str, Any]:
        limit = service.config.max_upload_bytes
        body = await request.body()
        if len(body) > limit + 4096:
            raise APIError(413, f"uploads are limited to {limit} bytes", code="file_too_large")
        form = await run_in_threadpool(_multipart, body, request.headers.get("content-type", ""))
        if "file" not in form or form["file"][0] is None:
            raise APIError(400, "missing the 'file' field", param="file")
        purpose = form.get("purpose", (None, b""))[1].decode(errors="replace")
        if purpose != "fine-tune":
            raise APIError(400, "purpose must be 'fine-tune'", param="purpose")
        filename, data = form["file"]
        if len(data) > limit:
            raise APIError(413, f"uploads are limited to {limit} bytes", code="file_too_large")

        def check_and_store() -> dict[str, Any]:
            from jgraph.coserve._dataset import parse_dataset

            try:
                parse_dataset(
                    data, service.tokenizer, max_len=service.backend.ft_max_len,
                    template=service.runtime.chat_template,
                )  # fmt: skip
            except ConfigError as exc:
                raise APIError(400, str(exc), param="file", code="invalid_file") from None
            with service.lock:
                return service.state.add_file(data, filename=filename or "", purpose=purpose)

        return await run_in_threadpool(check_and_store)

    @app.get("/v1/files")
    async def list_files() -> dict[str, Any]:
        with service.lock:
            data = service.state.files()
        return {"object": "list", "data": data, "has_more": False}

    @app.get("/v1/files/{fid}")
    async def get_file(fid: str) -> dict[str, Any]:
        return _file(fid)

    @app.get("/v1/files/{fid}/content")
    async def file_content(fid: str) -> Response:
        _file(fid)
        data = service.state.file_bytes(fid) or b""
        return Response(data, media_type="application/jsonl")

    @app.delete("/v1/files/{fid}")
    async def delete_file(fid: str) -> dict[str, Any]:
        _file(fid)
        with service.lock:
            service.state.delete_file(fid)
        return {"id": fid, "object": "file", "deleted": True}

    # -- finetuning jobs ------------------------------------------------------------------
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(req: FineTuneRequest) -> dict[str, Any]:
        return await run_in_threadpool(service.jobs.create, req)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(after: str | None = None, limit: int = 20) -> dict[str, Any]:
        jobs = service.jobs.all()
        if after is not None:
            ids = [j["id"] for j in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        return {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        return service.jobs.get(job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        return await run_in_threadpool(service.jobs.cancel, job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        events = service.jobs.events(job_id)
        if after is not None:
            ids = [e["id"] for e in events]
            events = events[ids.index(after) + 1 :] if after in ids else []
        return {"object": "list", "data": events[:limit], "has_more": len(events) > limit}

    # -- operations -----------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        ok = service.alive
        body = {"status": "ok" if ok else "engine_down", "model": service.base_name}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
