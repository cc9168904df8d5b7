"""Profiling the engine's own jitted step for the SLO controller's step-time model.

`profile_engine_step` times the compiled step on synthetic batches of a given token mix
(``inference_tokens`` rows spread over the request slots as prefill chunks, ``ft_tokens``
finetuning forward rows, optionally the first backward step of a full-length sample) and fits
a `StepCostModel` through `load_or_profile`, so the fit is cached per backend, device kind,
configs and grid. It runs on a copy of the engine state, so the requests, KV pages and the
finetuning job of the engine are untouched (the copy costs one more state's memory while
profiling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgraph.core import check_int
from jgraph.coserve._backward import backward_steps
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._cost import (
    StepCostModel,
    default_profile_grid,
    device_identity,
    load_or_profile,
    profile_step_time,
)
from jgraph.coserve._step import CoServeState, StepBatch, empty_batch

__all__ = ["profile_engine_step", "synthetic_batch"]


def synthetic_batch(
    cfg: LlamaConfig,
    scfg: CoServeConfig,
    inference_tokens: int,
    ft_tokens: int,
    backward: bool,
    *,
    trainable_index: int,
) -> dict[str, Any]:
    """Numpy `StepBatch` fields of a token mix (see the module docstring). Inference rows go
    round-robin over the slots at consecutive positions of each (pages laid out in order,
    wrapping around the pool: the contents are scratch, only the work is real)."""
    b = empty_batch(scfg)
    B, R, P = scfg.token_budget, scfg.max_requests, scfg.max_pages_per_request
    n_inf, n_ft = min(inference_tokens, B), min(ft_tokens, B - min(inference_tokens, B))
    rows = np.arange(n_inf)
    slots, pos = rows % R, (rows // R) % scfg.max_request_len
    b["tokens"][:n_inf] = rows % cfg.vocab_size
    b["positions"][:n_inf] = pos
    b["slots"][:n_inf] = slots
    b["page_table"] = (np.arange(R * P).reshape(R, P) % scfg.num_pages).astype(np.int32)
    ft = slice(n_inf, n_inf + n_ft)
    S = scfg.ft_max_len
    b["tokens"][ft] = np.arange(n_ft) % cfg.vocab_size
    b["positions"][ft] = np.arange(n_ft) % S
    b["is_ft"][ft] = True
    b["adapters"][ft] = trainable_index
    b["labels"][ft] = (np.arange(n_ft) + 1) % cfg.vocab_size
    b["loss_scale"] = np.float32(1.0 / max(1, S - 1))
    if backward:
        # The first backward step of a full-length sample (the top chunk or layer group).
        b["bwd_chunk"] = np.int32(backward_steps(cfg, scfg, S) - 1)
        b["bwd_len"], b["bwd_first"], b["bwd_last"] = np.int32(S), np.bool_(True), np.bool_(False)
    return b


def profile_engine_step(
    *,
    step: Callable[..., Any],
    params: dict[str, Any],
    bank: tuple[Any, jax.Array],
    state: CoServeState,
    cfg: LlamaConfig,
    scfg: CoServeConfig,
    lora_cfg: LoraConfig,
    trainable_index: int,
    clock: Callable[[], float],
    cache_dir: str | Path | None,
    grid: Sequence[tuple[int, int, bool]] | None,
    repeats: int,
    warmup: int,
    extra_key: dict[str, Any] | None = None,
) -> StepCostModel:
    """Fits (or loads from ``cache_dir``) the step-time model of ``step`` (see the module
    docstring). ``state`` is copied first; ``bank`` is (weights, scales)."""
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    mixes = [
        (int(i), int(f), bool(b))
        for i, f, b in (default_profile_grid(scfg.token_budget) if grid is None else grid)
    ]
    key = {
        **device_identity(),
        "model": dataclasses.asdict(cfg),
        "step": dataclasses.asdict(scfg),
        "lora": dataclasses.asdict(lora_cfg),
        "grid": mixes,
        "repeats": repeats,
        **(extra_key or {}),
    }

    def profile() -> list[Any]:
        box = {"state": jax.tree.map(jnp.copy, state)}  # the step donates its state

        def run(n_inf: int, n_ft: int, bwd: bool) -> float:
            b = synthetic_batch(cfg, scfg, n_inf, n_ft, bwd, trainable_index=trainable_index)
            t0 = clock()
            box["state"], out = step(params, bank[0], bank[1], box["state"], StepBatch(**b))
            np.asarray(out.next_tokens)  # wait for the device, as the engine does
            return clock() - t0

        try:
            return profile_step_time(run, mixes, repeats=repeats, warmup=warmup)
        finally:
            box.clear()

    return load_or_profile(cache_dir, key, profile)
