"""Per-request sampling: parameters, a jittable batched sampler, per-request keys, stop strings.

`SamplingParams` is what a request asks for (OpenAI's temperature, top_p, max_tokens, stop,
seed). `sample_tokens` draws one token per row of a batch of logits with each row's own
temperature, top-p and key; temperature 0 is exactly ``argmax`` (greedy is the special case,
not a low temperature). A seeded request's key for its i-th generated token is
``fold_in(seed_key(seed), i)`` (`request_key`), so its tokens do not depend on which batch row
it lands in or on what else runs. Stop strings are matched on the detokenized text on the host
(`StopMatcher`), so a stop string may span token boundaries, and streaming never shows a
prefix of a stop string that may still complete (`safe_prefix_len`).

References:
    Holtzman et al., "The Curious Case of Neural Text Degeneration" (nucleus sampling), ICLR
    2020; Gumbel-max sampling as in `jax.random.categorical`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, Shaped

from jgraph.core import ConfigError, check_int, check_number

__all__ = [
    "MAX_STOP_STRINGS",
    "MIN_TEMPERATURE",
    "SamplingParams",
    "StopMatcher",
    "request_key",
    "safe_prefix_len",
    "sample_tokens",
    "seed_key",
    "step_keys",
    "truncate_at_stop",
]

Logits = Float[Array, "batch vocab"]
PerRow = Float[Array, "batch"]
TokenIds = Int[Array, "batch"]
Keys = Shaped[Array, "batch *key"]  # typed PRNG keys [B] or their uint32 data [B, 2]

MIN_TEMPERATURE = 1e-5
"""Temperatures below this sample greedily (``logits / T`` would overflow float32)."""

MAX_STOP_STRINGS = 16
"""Most stop strings one request may give (each costs host work per generated token)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request samples its tokens.

    Attributes:
        temperature: 0 for greedy (exactly ``argmax``; also below `MIN_TEMPERATURE`), else the
            softmax temperature (finite, >= 0).
        top_p: nucleus sampling: sample from the smallest set of most likely tokens whose
            probability sums to at least ``top_p`` (0 < top_p <= 1; 1 keeps every token).
        max_tokens: most tokens to generate (>= 1).
        stop: strings that end the generation; the text is cut before the first one (a string
            or up to `MAX_STOP_STRINGS` non-empty strings).
        seed: makes sampling reproducible: the same seed, prompt and parameters give the same
            tokens wherever the request runs in the batch. Any integer in ``[-2**63, 2**64)``
            (taken modulo ``2**64``); None draws from the engine's key.

    Example:
        >>> SamplingParams(temperature=0.7, top_p=0.9, stop="\\n\\n", seed=1).stop
        ('\\n\\n',)
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        check_number("SamplingParams.temperature", self.temperature, minimum=0.0)
        check_number(
            "SamplingParams.top_p",
            self.top_p,
            minimum=0.0,
            strict_minimum=True,
            maximum=1.0,
            fix="use 0 < top_p <= 1 (1 keeps every token)",
        )
        check_int("SamplingParams.max_tokens", self.max_tokens, minimum=1)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError(
                "SamplingParams.stop",
                self.stop,
                "must be a string or a sequence of non-empty strings",
                'pass e.g. stop=("\\n\\n", "</s>")',
            )
        if len(stop) > MAX_STOP_STRINGS:
            raise ConfigError(
                "SamplingParams.stop",
                len(stop),
                f"more than {MAX_STOP_STRINGS} stop strings",
                "pass fewer stop strings",
            )
        object.__setattr__(self, "stop", tuple(stop))  # hashable, whatever sequence came in
        if self.seed is not None:
            check_int("SamplingParams.seed", self.seed, minimum=-(2**63), maximum=2**64 - 1)

    @property
    def greedy(self) -> bool:
        """Whether this request samples by ``argmax``."""
        return self.temperature < MIN_TEMPERATURE


def seed_key(seed: int) -> jax.Array:
    """The typed PRNG key of a request's seed (both 32-bit halves of a 64-bit seed count).

    ``jax.random.key`` keeps only the low 32 bits of a Python int without x64, so seeds 1 and
    ``2**32 + 1`` would collide; the high half is folded in instead.
    """
    check_int("seed", seed, minimum=-(2**63), maximum=2**64 - 1)
    u = seed % 2**64
    key = jax.random.key(np.uint32(u & 0xFFFFFFFF))
    return jax.random.fold_in(key, np.uint32(u >> 32)) if u >> 32 else key


def request_key(seed: int, index: int) -> jax.Array:
    """The key of a seeded request's ``index``-th generated token (0 is the first).

    Example:
        >>> import jax
        >>> a, b = request_key(7, 0), request_key(7, 1)
        >>> bool((jax.random.key_data(a) != jax.random.key_data(b)).any())
        True
    """
    check_int("index", index, minimum=0)
    return jax.random.fold_in(seed_key(seed), np.uint32(index))


def step_keys(base: Keys, index: TokenIds) -> Keys:
    """Per-row keys ``fold_in(base[b], index[b])`` (jittable: the step's version of
    `request_key` when ``base[b] = seed_key(seed_b)``).

    Args:
        base: typed keys [B], or their raw ``uint32`` key data [B, 2] (`jax.random.key_data`).
        index: the token index of each row [B].
    """
    if not jnp.issubdtype(base.dtype, jax.dtypes.prng_key):
        base = jax.random.wrap_key_data(base)
    return jax.vmap(jax.random.fold_in)(base, index.astype(jnp.uint32))


def sample_tokens(logits: Logits, temperature: PerRow, top_p: PerRow, keys: Keys) -> TokenIds:
    """One token per row: greedy where ``temperature < MIN_TEMPERATURE``, else top-p sampling.

    Greedy rows are exactly ``jnp.argmax(logits)`` whatever their ``top_p``; on ties it picks
    the lowest id. Sampling rows draw from ``softmax(logits / T)`` restricted to the nucleus:
    the most likely tokens, in order, until their probability reaches ``top_p`` (at least the
    top token; ``top_p >= 1`` keeps every token); tokens tied with the least likely kept token
    are kept too. Each row uses only its own key, so a row's token does not depend on the rest
    of the batch.

    Args:
        logits: [B, V] (computed in float32).
        temperature: [B], >= 0.
        top_p: [B], in (0, 1].
        keys: typed PRNG keys [B] or their ``uint32`` key data [B, 2].

    Returns:
        [B] int32 token ids.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logits = jnp.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
        >>> keys = jax.random.split(jax.random.key(0), 2)
        >>> sample_tokens(logits, jnp.zeros(2), jnp.ones(2), keys).tolist()
        [1, 0]
    """
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.wrap_key_data(keys)
    logits = logits.astype(jnp.float32)
    temperature = temperature.astype(jnp.float32)
    greedy = temperature < MIN_TEMPERATURE
    scaled = logits / jnp.where(greedy, 1.0, temperature)[:, None]
    top_p = top_p.astype(jnp.float32)

    def nucleus(x: Logits) -> Logits:
        desc = -jnp.sort(-x, axis=-1)  # [B, V], most likely first
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
        # A token is in the nucleus while the tokens above it have not reached top_p; the
        # first token always is (before = 0 < top_p).
        n_keep = jnp.sum(before < top_p[:, None], axis=-1)
        cut = jnp.take_along_axis(desc, jnp.maximum(n_keep - 1, 0)[:, None], axis=-1)
        # top_p = 1 keeps all, even tokens whose `before` rounds up to 1.
        return jnp.where((x >= cut) | (top_p >= 1.0)[:, None], x, -jnp.inf)

    # The [B, V] sort only runs when some sampling row asks for a nucleus.
    masked = jax.lax.cond(jnp.any(~greedy & (top_p < 1.0)), nucleus, lambda x: x, scaled)
    sampled = jax.vmap(jax.random.categorical)(keys, masked)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)


def _earliest_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Where the stop string that completes first (at or after ``start``) begins; -1 for none.

    "Completes first" (the smallest end, then the longest stop) is what generating the text one
    character at a time would stop at, so the cut does not depend on how the text was split
    into tokens: with stops ``"a"`` and ``".aa"``, ``".aa"`` is cut to ``"."``.
    """
    hits = [(i + len(s), i) for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits)[1] if hits else -1


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the stop string that completes first, and whether one occurred.

    Example:
        >>> truncate_at_stop("a cat. A dog.", [" A", "."])
        ('a cat', True)
    """
    i = _earliest_stop(text, stops)
    return (text, False) if i < 0 else (text[:i], True)


def safe_prefix_len(text: str, stops: Sequence[str]) -> int:
    """How many characters of ``text`` can be shown now without showing any part of a stop.

    That is the text before the stop string that completed first, or else everything but the
    longest tail of ``text`` that begins some stop string (it may still complete).

    Example:
        >>> safe_prefix_len("Hello wor", ["world"])  # "wor" may become "world"
        6
        >>> safe_prefix_len("Hello world!", ["world"])
        6
    """
    i = _earliest_stop(text, stops)
    if i >= 0:
        return i
    held = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return len(text) - held


class StopMatcher:
    """Streams one request's text and stops it at the first stop string.

    Feed the detokenized text as it grows; `feed` returns the part that is safe to show and
    whether a stop string has completed (then the request is finished and its text ends before
    the stop). Text held back because it could begin a stop string comes out with `finish`
    when the generation ends for another reason (``max_tokens``, EOS).

    Example:
        >>> m = StopMatcher(["\\nUser:"])
        >>> m.feed("Sure.\\nUs")
        ('Sure.', False)
        >>> m.feed("er: hi")
        ('', True)
        >>> m.text
        'Sure.'
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(SamplingParams(stop=tuple(stops)).stop)  # same validation
        self._buf = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """The output so far: all text shown, and after a stop the final text."""
        return self._buf[: self._emitted]

    def feed(self, delta: str) -> tuple[str, bool]:
        """Adds newly decoded text; returns (text safe to show now, stopped)."""
        if self.stopped:
            return "", True
        self._buf += delta
        # A stop cannot start before what was shown: that text was checked not to begin one.
        hit = _earliest_stop(self._buf, self.stops, self._emitted)
        if hit >= 0:
            self.stopped = True
            new_end = hit
        else:
            new_end = self._emitted + safe_prefix_len(self._buf[self._emitted :], self.stops)
        out, self._emitted = self._buf[self._emitted : new_end], new_end
        return out, self.stopped

    def finish(self) -> str:
        """The held-back tail when the generation ends without a stop string."""
        if self.stopped:
            return ""
        out, self._emitted = self._buf[self._emitted :], len(self._buf)
        return out
