"""Synthetic co-serving workloads: arrivals, request lengths, finetuning data, JSONL traces.

Arrivals are a renewal process with Gamma inter-arrival times of mean ``1 / rate`` and a chosen
coefficient of variation: CV = 1 is the Poisson process, CV > 1 is bursty (BurstGPT-like
traffic has CV well above 1), CV < 1 is smoother than Poisson.

Request lengths come from `LengthDistribution`, independent log-normals for prompt and
response tokens, clipped to ``[1, max]``. The defaults are a rough stand-in for ShareGPT V3
first turns under a Llama tokenizer, NOT a fit to the data: medians of 80 prompt and 200
response tokens with log-sigmas 1.2 and 1.0 give means of about 165 and 330 tokens, close to
the means usually quoted for ShareGPT (about 160 and 340, e.g. in the vLLM paper), with the
long right tail of chat traffic. `LengthDistribution.scaled` shrinks the medians for small
models (e.g. ``scaled(1 / 16)`` for a 128-token context). Users with a real trace write it
as JSONL (`write_trace` documents the format) and load it with `read_trace`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from jgraph.core import ConfigError, atomic_write_text, check_choice, check_int, check_number

__all__ = [
    "ARRIVAL_KINDS",
    "LengthDistribution",
    "TraceRequest",
    "WorkloadConfig",
    "arrival_times",
    "make_trace",
    "read_trace",
    "synthetic_finetune_dataset",
    "write_trace",
]

ArrivalKind = Literal["poisson", "gamma"]
ARRIVAL_KINDS: tuple[str, ...] = get_args(ArrivalKind)
PromptKind = Literal["tokens", "text"]
_WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "you",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "this",
    "are",
    "be",
    "at",
    "or",
    "can",
    "what",
    "how",
]


def arrival_times(
    rate_per_s: float, num_requests: int, *, cv: float = 1.0, seed: int
) -> np.ndarray:
    """Arrival times (seconds from 0, increasing) of a Gamma renewal process.

    Args:
        rate_per_s: mean requests per second.
        num_requests: how many arrivals.
        cv: coefficient of variation of the inter-arrival time (1 = Poisson, > 1 bursty).
        seed: numpy seed.

    Returns:
        float64 [num_requests], the cumulative sum of the inter-arrival times.

    Example:
        >>> t = arrival_times(10.0, 1000, seed=0)
        >>> bool(abs(t[-1] / 1000 - 0.1) < 0.01)
        True
    """
    check_number("rate_per_s", rate_per_s, minimum=0.0, strict_minimum=True)
    check_int("num_requests", num_requests, minimum=0)
    check_number("cv", cv, minimum=0.0, strict_minimum=True)
    shape = 1.0 / cv**2  # Gamma(k, theta): mean k * theta, CV 1 / sqrt(k)
    gaps = np.random.default_rng(seed).gamma(shape, 1.0 / (rate_per_s * shape), num_requests)
    return np.cumsum(gaps)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LengthDistribution:
    """Log-normal prompt and response lengths in tokens, clipped to ``[1, max_*]``.

    The defaults approximate ShareGPT (see the module docstring); medians are in tokens,
    sigmas are of the natural log.
    """

    prompt_median: float = 80.0
    prompt_sigma: float = 1.2
    response_median: float = 200.0
    response_sigma: float = 1.0
    max_prompt_len: int = 2048
    max_response_len: int = 2048

    def __post_init__(self) -> None:
        for name in ("prompt_median", "response_median"):
            check_number(
                f"LengthDistribution.{name}", getattr(self, name), minimum=0.0, strict_minimum=True
            )
        for name in ("prompt_sigma", "response_sigma"):
            check_number(
                f"LengthDistribution.{name}", getattr(self, name), minimum=0.0, maximum=4.0
            )
        check_int("LengthDistribution.max_prompt_len", self.max_prompt_len, minimum=1)
        check_int("LengthDistribution.max_response_len", self.max_response_len, minimum=1)

    def scaled(
        self, factor: float, *, max_prompt_len: int, max_response_len: int
    ) -> LengthDistribution:
        """The same shape with medians times ``factor`` and new caps (for small models).

        Example:
            >>> LengthDistribution().scaled(1 / 16, max_prompt_len=64, max_response_len=64).prompt_median
            5.0
        """
        check_number("factor", factor, minimum=0.0, strict_minimum=True)
        return dataclasses.replace(
            self,
            prompt_median=self.prompt_median * factor,
            response_median=self.response_median * factor,
            max_prompt_len=max_prompt_len,
            max_response_len=max_response_len,
        )

    def sample(self, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (prompt_len, response_len) pairs as two int64 arrays [n]."""
        check_int("n", n, minimum=0)
        rng = np.random.default_rng(seed)

        def draw(median: float, sigma: float, cap: int) -> np.ndarray:
            x = rng.lognormal(math.log(median), sigma, n)
            return np.clip(np.rint(x), 1, cap).astype(np.int64)

        prompts = draw(self.prompt_median, self.prompt_sigma, self.max_prompt_len)
        responses = draw(self.response_median, self.response_sigma, self.max_response_len)
        return prompts, responses


@dataclasses.dataclass(frozen=True, kw_only=True)
class TraceRequest:
    """One request of a trace.

    Attributes:
        arrival_s: seconds from the start of the trace (>= 0).
        prompt: token ids (a tuple of ints >= 0) or text.
        max_tokens: tokens to generate (>= 1).
        model: the model or adapter name the request asks for (None: the base model).
    """

    arrival_s: float
    prompt: tuple[int, ...] | str
    max_tokens: int
    model: str | None = None

    def __post_init__(self) -> None:
        check_number("TraceRequest.arrival_s", self.arrival_s, minimum=0.0)
        if isinstance(self.prompt, list):
            object.__setattr__(self, "prompt", tuple(self.prompt))
        if isinstance(self.prompt, tuple):
            bad = [t for t in self.prompt if isinstance(t, bool) or not isinstance(t, int) or t < 0]
            if bad or not self.prompt:
                raise ConfigError(
                    "TraceRequest.prompt",
                    bad[:3] or self.prompt,
                    "token ids must be a non-empty list of ints >= 0",
                    "pass a list of token ids or a string",
                )
        elif not isinstance(self.prompt, str) or not self.prompt:
            raise ConfigError(
                "TraceRequest.prompt",
                self.prompt,
                "must be a non-empty string or list of token ids",
                "fix the prompt",
            )
        check_int("TraceRequest.max_tokens", self.max_tokens, minimum=1)
        if self.model is not None and not isinstance(self.model, str):
            raise ConfigError(
                "TraceRequest.model", self.model, "must be a string", "pass a model name or omit it"
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "arrival_s": self.arrival_s,
            "prompt": self.prompt if isinstance(self.prompt, str) else list(self.prompt),
            "max_tokens": self.max_tokens,
        }
        if self.model is not None:
            out["model"] = self.model
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkloadConfig:
    """A synthetic inference workload (`make_trace`).

    Attributes:
        rate_per_s: mean arrival rate.
        num_requests: trace length.
        arrival: "poisson" (CV 1) or "gamma" (CV ``cv``, bursty when > 1).
        cv: inter-arrival coefficient of variation for "gamma".
        lengths: prompt and response lengths.
        prompt_kind: "tokens" (ids in ``[0, vocab_size)``) or "text" (ASCII words; with the
            byte tokenizer one character is one token).
        vocab_size: id range of token prompts.
        seed: numpy seed of the whole trace.
    """

    rate_per_s: float
    num_requests: int
    arrival: ArrivalKind = "poisson"
    cv: float = 1.0
    lengths: LengthDistribution = dataclasses.field(default_factory=LengthDistribution)
    prompt_kind: PromptKind = "tokens"
    vocab_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("WorkloadConfig.rate_per_s", self.rate_per_s, minimum=0.0, strict_minimum=True)
        check_int("WorkloadConfig.num_requests", self.num_requests, minimum=1)
        check_choice("WorkloadConfig.arrival", self.arrival, ARRIVAL_KINDS)
        check_number("WorkloadConfig.cv", self.cv, minimum=0.0, strict_minimum=True)
        if self.arrival == "poisson" and self.cv != 1.0:
            raise ConfigError(
                "WorkloadConfig.cv",
                self.cv,
                "a Poisson process has CV 1",
                "use arrival='gamma' for another CV",
            )
        if not isinstance(self.lengths, LengthDistribution):
            raise ConfigError(
                "WorkloadConfig.lengths", self.lengths, "must be a LengthDistribution", "pass one"
            )
        check_choice("WorkloadConfig.prompt_kind", self.prompt_kind, get_args(PromptKind))
        check_int("WorkloadConfig.vocab_size", self.vocab_size, minimum=1)
        check_int("WorkloadConfig.seed", self.seed, minimum=0)


def _text(rng: np.random.Generator, n: int) -> str:
    words: list[str] = []
    size = 0
    while size < n:
        words.append(_WORDS[int(rng.integers(len(_WORDS)))])
        size += len(words[-1]) + 1
    return " ".join(words)[:n]


def make_trace(cfg: WorkloadConfig) -> list[TraceRequest]:
    """A seeded synthetic trace.

    Example:
        >>> trace = make_trace(WorkloadConfig(rate_per_s=4.0, num_requests=3, prompt_kind="text"))
        >>> [type(r.prompt).__name__ for r in trace]
        ['str', 'str', 'str']
    """
    times = arrival_times(cfg.rate_per_s, cfg.num_requests, cv=cfg.cv, seed=cfg.seed)
    prompt_lens, response_lens = cfg.lengths.sample(cfg.num_requests, seed=cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 2)
    out = []
    for t, p, r in zip(times, prompt_lens, response_lens, strict=True):
        prompt: tuple[int, ...] | str
        if cfg.prompt_kind == "text":
            prompt = _text(rng, int(p))
        else:
            prompt = tuple(int(x) for x in rng.integers(0, cfg.vocab_size, int(p)))
        out.append(TraceRequest(arrival_s=float(t), prompt=prompt, max_tokens=int(r)))
    return out


def synthetic_finetune_dataset(
    num_samples: int,
    *,
    min_len: int,
    max_len: int,
    seed: int,
    kind: PromptKind = "tokens",
    vocab_size: int = 256,
) -> list[list[int]] | list[str]:
    """A learnable synthetic finetuning set (the loss should fall when a model trains on it).

    ``kind="tokens"``: arithmetic progressions modulo ``vocab_size`` (random start, stride 1-4),
    so each next token follows from the two before it. ``kind="text"``: sums written out,
    ``"12 + 7 = 19. 3 + 5 = 8. ..."``, for the byte tokenizer. Lengths are uniform in
    ``[min_len, max_len]`` (tokens, or characters for text).

    Example:
        >>> synthetic_finetune_dataset(1, min_len=5, max_len=5, seed=0, vocab_size=10)[0][:2]
        [8, 1]
    """
    check_int("num_samples", num_samples, minimum=0)
    check_int("min_len", min_len, minimum=2)
    check_int("max_len", max_len, minimum=min_len, fix=f"use max_len >= min_len={min_len}")
    check_choice("kind", kind, get_args(PromptKind))
    check_int("vocab_size", vocab_size, minimum=2)
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, max_len + 1, num_samples)
    if kind == "tokens":
        starts = rng.integers(0, vocab_size, num_samples)
        strides = rng.integers(1, 5, num_samples)
        return [
            [int((s + k * d) % vocab_size) for k in range(int(n))]
            for s, d, n in zip(starts, strides, lens, strict=True)
        ]
    texts = []
    for n in lens:
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < n:
            a, b = (int(v) for v in rng.integers(0, 50, 2))
            parts.append(f"{a} + {b} = {a + b}.")
        texts.append(" ".join(parts)[: int(n)])
    return texts


def write_trace(path: str | Path, trace: Iterable[TraceRequest]) -> Path:
    """Writes a trace as JSONL, atomically: one request per line,
    ``{"arrival_s": 0.25, "prompt": [1, 2, 3] or "text", "max_tokens": 16, "model": "name"}``
    (``model`` optional); `read_trace` reads it back."""
    lines = [json.dumps(r.to_json(), sort_keys=True) for r in trace]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


_TRACE_KEYS = {"arrival_s", "prompt", "max_tokens", "model"}


def read_trace(path: str | Path) -> list[TraceRequest]:
    """Reads a JSONL trace (format in `write_trace`); blank lines are skipped.

    Raises:
        ConfigError: a line that is not a JSON object, lacks or misnames a field, holds a bad
            value, or arrives before the line above it; the field names the file, line and
            key, e.g. ``trace.jsonl:3.max_tokens``.
    """
    out: list[TraceRequest] = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                at, line[:80], f"not JSON ({exc.msg})", "write one JSON object per line"
            ) from exc
        if not isinstance(obj, dict):
            raise ConfigError(at, obj, "not a JSON object", "write one JSON object per line")
        unknown = sorted(set(obj) - _TRACE_KEYS)
        missing = sorted({"arrival_s", "prompt", "max_tokens"} - set(obj))
        if unknown or missing:
            key = (unknown or missing)[0]
            problem = f"unknown field {key!r}" if unknown else f"missing field {key!r}"
            raise ConfigError(
                f"{at}.{key}", obj.get(key), problem, f"use the fields {sorted(_TRACE_KEYS)}"
            )
        try:
            req = TraceRequest(**obj)
        except ConfigError as exc:
            raise ConfigError(
                f"{at}.{exc.field.split('.')[-1]}", exc.value, exc.problem, exc.fix
            ) from exc
        if out and req.arrival_s < out[-1].arrival_s:
            raise ConfigError(
                f"{at}.arrival_s",
                req.arrival_s,
                f"earlier than the line above ({out[-1].arrival_s})",
                "sort by arrival_s",
            )
        out.append(req)
    return out
