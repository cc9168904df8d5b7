"""Boundary checks of the co-serving engine's inputs: base weights, adapters, token ids.

The jitted step trusts its inputs (a wrong shape fails deep inside `lax.scan`, an id outside
the vocabulary is clamped, an adapter of another rank is scaled by the wrong ``alpha / rank``),
so everything a user hands in is checked here first, on the host and before any tracing. Each
check raises `jgraph.core.ConfigError` naming the leaf or field, the value received and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jgraph.core import ConfigError, check_int
from jgraph.coserve._config import LORA_TARGETS, LlamaConfig, LoraConfig
from jgraph.coserve._model import init_params

__all__ = ["check_adapter", "check_params", "check_prompt", "check_token_samples"]


def _leaves(tree: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(dotted path, leaf) of a tree of nested mappings."""
    if isinstance(tree, Mapping):
        for k in sorted(tree, key=str):
            yield from _leaves(tree[k], f"{path}.{k}" if path else str(k))
    else:
        yield path, tree


def _dims(cfg: LlamaConfig) -> dict[str, int]:
    return {
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "d_ff": cfg.d_ff,
        "n_heads*head_dim": cfg.q_dim,
        "n_kv_heads*head_dim": cfg.kv_dim,
    }


def _explain(cfg: LlamaConfig, want: tuple[int, ...], got: tuple[int, ...]) -> str:
    """Which config fields the mismatched axes stand for, e.g. "axis 0 is vocab_size=260"."""
    if len(want) != len(got):
        return f"{len(got)} axes instead of {len(want)}"
    parts = []
    for ax, (w, g) in enumerate(zip(want, got, strict=True)):
        if w != g:
            names = [n for n, v in _dims(cfg).items() if v == w]
            parts.append(f"axis {ax} is {' or '.join(names) or 'fixed'}={w} here, got {g}")
    return "; ".join(parts)


def _float_array(field: str, leaf: Any, fix: str) -> tuple[int, ...]:
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        raise ConfigError(field, type(leaf).__name__, "is not an array", fix)
    dt = np.dtype(leaf.dtype)
    if not jax.numpy.issubdtype(dt, jax.numpy.floating):
        raise ConfigError(field, str(dt), "must hold floating-point weights", fix)
    return tuple(int(d) for d in leaf.shape)


def check_params(cfg: LlamaConfig, params: Any) -> None:
    """Checks that ``params`` has exactly the leaves and shapes `init_params` gives for ``cfg``.

    Args:
        cfg: the model shape the engine is built for.
        params: the base weights (nested dicts of arrays, as `init_params` or
            `jgraph.coserve.checkpoint.load_llama` return them).

    Raises:
        ConfigError: a missing or extra leaf, a leaf that is not a float array, or a shape that
            differs; the message names the leaf (e.g. ``params.layers.q_proj``), the expected and
            received shapes and which config field the mismatched axis stands for.

    Example:
        >>> import jax
        >>> from jgraph.coserve import LlamaConfig, init_params
        >>> cfg = LlamaConfig.tiny()
        >>> check_params(cfg, init_params(cfg, key=jax.random.key(0)))
        >>> try:
        ...     check_params(LlamaConfig.tiny(vocab_size=300), init_params(cfg, key=jax.random.key(0)))
        ... except ConfigError as e:
        ...     print(e.field, e.value, e.problem)
        params.embed (260, 64) shape != (300, 64) (axis 0 is vocab_size=300 here, got 260)
    """
    fix = "load weights built for this LlamaConfig (or build the config from the checkpoint)"
    if not isinstance(params, Mapping):
        raise ConfigError("params", type(params).__name__, "must be a dict of arrays", fix)
    want = dict(_leaves(jax.eval_shape(lambda k: init_params(cfg, key=k), jax.random.key(0)), ""))
    got = dict(_leaves(params, ""))
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        raise ConfigError(f"params.{missing[0]}", None, f"is missing ({len(missing)} missing)", fix)
    if extra:
        hint = " (tie_embeddings=True has no lm_head)" if "lm_head" in extra else ""
        raise ConfigError(
            f"params.{extra[0]}", "present", f"is not a leaf of this model{hint}", fix
        )
    for path, w in want.items():
        shape = _float_array(f"params.{path}", got[path], fix)
        if shape != tuple(w.shape):
            raise ConfigError(
                f"params.{path}",
                shape,
                f"shape != {tuple(w.shape)} ({_explain(cfg, tuple(w.shape), shape)})",
                fix,
            )


def check_adapter(cfg: LlamaConfig, lora_cfg: LoraConfig, lora: Any, *, name: str = "lora") -> None:
    """Checks a LoRA adapter against its config and the base model.

    The adapter must hold exactly ``lora_cfg.targets``, each as ``{"A": [L, in, r], "B": [L, r,
    out]}`` float arrays with ``r == lora_cfg.rank``: a rank the config does not state would be
    scaled by the wrong ``alpha / rank``.

    Args:
        cfg: the base model.
        lora_cfg: the adapter's rank, alpha and targets.
        lora: the adapter weights.
        name: what to call the adapter in messages (e.g. ``"adapter 'sql'"``).

    Raises:
        ConfigError: missing or extra targets, a non-float leaf, a shape that does not fit the
            model, or a rank that differs from ``lora_cfg.rank``.

    Example:
        >>> import jax
        >>> from jgraph.coserve import LlamaConfig, LoraConfig, init_lora
        >>> cfg = LlamaConfig.tiny()
        >>> a = init_lora(cfg, LoraConfig(rank=8), key=jax.random.key(0))
        >>> try:
        ...     check_adapter(cfg, LoraConfig(rank=4), a)
        ... except ConfigError as e:
        ...     print(e.field, e.value)
        lora.q_proj.A rank 8
    """
    if not isinstance(lora, Mapping):
        raise ConfigError(name, type(lora).__name__, "must be {target: {'A', 'B'}}", "init_lora")
    want, got = set(lora_cfg.targets), set(lora)
    if got != want:
        raise ConfigError(
            f"{name} targets",
            sorted(map(str, got)),
            f"!= LoraConfig.targets={lora_cfg.targets}"
            + (f" (unknown: {sorted(got - set(LORA_TARGETS))})" if got - set(LORA_TARGETS) else ""),
            "pass the LoraConfig the adapter was trained with (its targets, rank and alpha)",
        )
    L, r = cfg.n_layers, lora_cfg.rank
    for t in lora_cfg.targets:
        ab = lora[t]
        if not isinstance(ab, Mapping) or set(ab) != {"A", "B"}:
            keys = sorted(ab) if isinstance(ab, Mapping) else type(ab).__name__
            raise ConfigError(f"{name}.{t}", keys, "must be {'A': ..., 'B': ...}", "init_lora")
        fix = "use an adapter trained for this base model"
        a = _float_array(f"{name}.{t}.A", ab["A"], fix)
        b = _float_array(f"{name}.{t}.B", ab["B"], fix)
        d_in, d_out = cfg.proj_shape(t)
        if len(a) != 3 or a[:2] != (L, d_in):
            raise ConfigError(f"{name}.{t}.A", a, f"shape != ({L}, {d_in}, r)", fix)
        if len(b) != 3 or b[0] != L or b[2] != d_out:
            raise ConfigError(f"{name}.{t}.B", b, f"shape != ({L}, r, {d_out})", fix)
        if a[2] != b[1]:
            raise ConfigError(f"{name}.{t}", (a, b), "A and B ranks differ", fix)
        if a[2] != r:
            raise ConfigError(
                f"{name}.{t}.A rank",
                a[2],
                f"!= LoraConfig.rank={r} (the update would be scaled by alpha/{r}, not "
                f"alpha/{a[2]})",
                f"pass LoraConfig(rank={a[2]}, ...) with the adapter's own alpha",
            )


def _ids(seq: Any, field: str, vocab_size: int, what: str) -> list[int]:
    """A flat sequence of token ids as Python ints; refuses floats, bools, text and nesting."""
    fix = "pass token ids as a list of ints or an integer numpy array (tokenize text first)"
    if seq is None or isinstance(seq, str | bytes):
        raise ConfigError(field, seq, f"{what} must be token ids, not {type(seq).__name__}", fix)
    if hasattr(seq, "dtype") and hasattr(seq, "ndim"):
        arr = np.asarray(seq)
        if arr.ndim != 1:
            raise ConfigError(field, arr.shape, f"{what} must be 1-D", fix)
        if arr.dtype.kind not in "iu":
            raise ConfigError(field, str(arr.dtype), f"{what} must hold integer ids", fix)
        out = [int(t) for t in arr]
    elif isinstance(seq, Sequence):
        out = []
        for j, t in enumerate(seq):
            if isinstance(t, bool | np.bool_) or not isinstance(t, int | np.integer):
                problem = (
                    "is nested one level too deep"
                    if isinstance(t, Sequence | np.ndarray) and not isinstance(t, str)
                    else f"is a {type(t).__name__}, not an integer id"
                )
                if isinstance(t, float | np.floating):
                    problem += " (float ids are refused, not truncated)"
                raise ConfigError(f"{field}[{j}]", t, problem, fix)
            out.append(int(t))
    else:
        raise ConfigError(field, type(seq).__name__, f"{what} must be a list of token ids", fix)
    for j, t in enumerate(out):
        if not 0 <= t < vocab_size:
            raise ConfigError(
                f"{field}[{j}]", t, f"is outside the vocabulary [0, {vocab_size})", "re-tokenize"
            )
    return out


def _check_len(field: str, n: int, min_len: int, max_len: int | None, fix: str) -> None:
    if n < min_len or (max_len is not None and n > max_len):
        bound = f"between {min_len} and {max_len}" if max_len is not None else f">= {min_len}"
        raise ConfigError(f"{field} length", n, f"must be {bound}", fix)


def check_token_samples(
    samples: Any, *, vocab_size: int, min_len: int = 2, max_len: int | None = None,
    field: str = "samples",
) -> list[list[int]]:  # fmt: skip
    """Checks finetuning samples and returns them as ``list[list[int]]``.

    A sample is a list/tuple of Python or numpy ints, or a 1-D integer numpy/JAX array; a 2-D
    integer array is a batch of equal-length samples. Floats are refused even when integral
    (``3.0``): a float id means the data went through the wrong pipeline, and truncating it was
    how bad data used to slip through. Bools, text and ``None`` are refused too.

    Args:
        samples: the samples.
        vocab_size: ids must lie in ``[0, vocab_size)``.
        min_len: shortest sample (2 for a next-token loss: n tokens give n - 1 predictions).
        max_len: longest sample (e.g. ``CoServeConfig.ft_max_len``), None for no bound.
        field: what to call the samples in messages.

    Raises:
        ConfigError: naming the sample (``samples[3]``), the position and the value; a flat list
            of ints says to pass a list of samples.

    Example:
        >>> check_token_samples([[1, 2, 3], (4, 5)], vocab_size=10)
        [[1, 2, 3], [4, 5]]
    """
    check_int("vocab_size", vocab_size, minimum=1)
    fix = "pass a list of samples, each a list of token ids: [[1, 2, 3], [4, 5]]"
    if samples is None or isinstance(samples, str | bytes):
        raise ConfigError(field, samples, "must be a list of samples", fix)
    if hasattr(samples, "dtype") and hasattr(samples, "ndim"):
        if np.ndim(samples) != 2:
            raise ConfigError(field, np.shape(samples), "an array of samples must be 2-D", fix)
        samples = list(np.asarray(samples))
    if not isinstance(samples, Sequence):
        raise ConfigError(field, type(samples).__name__, "must be a list of samples", fix)
    if samples and all(isinstance(t, int | np.integer | float) for t in samples):
        raise ConfigError(
            field, list(samples[:5]), "is one flat list of ids, not a list of samples", fix
        )
    out = []
    for i, s in enumerate(samples):
        ids = _ids(s, f"{field}[{i}]", vocab_size, "a sample")
        _check_len(f"{field}[{i}]", len(ids), min_len, max_len, "truncate or drop the sample")
        out.append(ids)
    return out


def check_prompt(
    prompt: Any, *, vocab_size: int, max_len: int | None = None, field: str = "prompt"
) -> list[int]:
    """Checks an inference prompt (the rules of `check_token_samples`, one flat sequence).

    Args:
        prompt: token ids (at least one: a BOS token at least).
        vocab_size: ids must lie in ``[0, vocab_size)``.
        max_len: longest prompt, None for no bound.
        field: what to call the prompt in messages.

    Raises:
        ConfigError: empty, too long, text, nested lists, floats, bools or ids outside the
            vocabulary; the message names the position and the value.

    Example:
        >>> check_prompt([256, 72, 105], vocab_size=260)
        [256, 72, 105]
    """
    check_int("vocab_size", vocab_size, minimum=1)
    ids = _ids(prompt, field, vocab_size, "a prompt")
    _check_len(field, len(ids), 1, max_len, "pass at least one token (BOS) and at most max_len")
    return ids
