"""OpenAI wire format: request schemas, their checks, and the error object.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status of
`APIError`. Parameters the engine cannot honour yet (``n > 1``, ``top_p < 1``, ``seed``,
logprobs, penalties, tools) are refused with a 400 that names them, never silently ignored;
unknown extra fields are ignored, as vLLM does.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "APIError",
    "ChatRequest",
    "CompletionRequest",
    "FineTuneRequest",
    "error_body",
]


class APIError(Exception):
    """An error answered as OpenAI's error JSON with HTTP ``status``."""

    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "invalid_request_error",
        409: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        500: "server_error",
        503: "server_error",
    }

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = APIError.TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    stream_options: dict[str, Any] | None = None
    logprobs: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> None:
        """Refuses what the engine cannot do yet (sampling arrives with the request manager)."""
        checks = [
            ("n", self.n not in (None, 1), "only n=1 is supported"),
            ("top_p", self.top_p not in (None, 1.0), "only top_p=1 is supported for now"),
            ("seed", self.seed is not None, "per-request seeds are not supported yet"),
            ("logprobs", self.logprobs not in (None, False, 0), "logprobs are not supported"),
            ("presence_penalty", self.presence_penalty not in (None, 0.0), "not supported"),
            ("frequency_penalty", self.frequency_penalty not in (None, 0.0), "not supported"),
            ("logit_bias", bool(self.logit_bias), "not supported"),
        ]
        for param, bad, why in checks:
            if bad:
                raise APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")
        for s in self.stops:
            if not s:
                raise APIError(400, "stop strings must be non-empty", param="stop")
        if len(self.stops) > 4:
            raise APIError(400, "at most 4 stop strings", param="stop")

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported", param="best_of")
        if self.suffix:
            raise APIError(400, "suffix (insertion) is not supported", param="suffix")
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str) and len(p) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.tools:
            raise APIError(400, "tools are not supported", param="tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise APIError(400, "only text responses", param="response_format")


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class FineTuneRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    training_file: str
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    validation_file: str | None = None
    seed: int | None = None
