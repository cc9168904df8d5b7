"""Activation memory of co-served LoRA finetuning vs plain autodiff, and CPU step time.

Part 1 (no arrays are materialized; the 8B shape is traced with jax.ShapeDtypeStruct):
bytes kept for the backward of one finetuning sample, per token per layer and in total, for
the co-serving step's explicit buffers (layer inputs + finetuning K/V + top gradient; the dK/dV
accumulators reported separately and in the total) vs the residuals `jax.vjp` saves for
full-sequence LoRA training (base weights frozen) and for full finetuning. LoRA: rank 16 on
down_proj (FlexLLM's artifact setting). Target: >= 8x fewer bytes than LoRA autodiff at 4096
tokens on the Llama-3.1-8B shape. The "layer" backward mode (k layers per step) keeps the same
buffers but no dK/dV accumulators between steps; its in-step accumulators (one layer's dK/dV
and input gradient, all tokens) are listed separately.

Part 2: median step time (on whatever backend runs it; labelled with the device) of the jitted
co-serving step vs tokens per step: an inference-only batch (all rows decode) vs a co-served
batch (half decode, half finetuning forward, plus one backward chunk through all layers), from
the same compiled step; and the same co-served batch with the layer-level backward instead
(one layer of the whole 256-token sample per step).

Usage:
    python scripts/bench_coserve_memory.py [--smoke] [--out results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import numpy as np
import optax

from jgraph.core import format_table, time_call, write_results
from jgraph.coserve import (
    AdapterBank,
    CoServeConfig,
    LlamaConfig,
    LoraConfig,
    StepBatch,
    empty_batch,
    init_lora,
    init_params,
    init_state,
    make_coserve_step,
)
from jgraph.coserve.memory import coserve_backward_bytes, vjp_residual_bytes

LORA = LoraConfig(rank=16, alpha=16.0, targets=("down_proj",))
MODELS = {
    "tiny": LlamaConfig.tiny,
    "small": LlamaConfig.small,
    "llama3.1-8b": LlamaConfig.llama31_8b,
}


def flexllm_table_bytes(cfg: LlamaConfig, rank: int) -> int:
    """FlexLLM's per-layer per-token retention (spec §a.7, flash version, LoRA on down_proj)."""
    D, F = cfg.d_model, cfg.d_ff
    it = 4 if cfg.dtype == "float32" else 2
    return it * (2 * D + D + 2 * cfg.kv_dim + D + 2 * F + F) + 4 * cfg.n_heads + it * rank


def memory_rows(models: list[str], seqs: list[int]) -> list[dict]:
    rows = []
    for name in models:
        cfg = MODELS[name]()
        for S in seqs:
            scfg = CoServeConfig(ft_max_len=S, bwd_chunk=min(256, S), num_pages=1)
            co = coserve_backward_bytes(cfg, scfg, LORA)
            lay = coserve_backward_bytes(
                cfg, dataclasses.replace(scfg, backward_mode="layer"), LORA
            )
            lora_b = vjp_residual_bytes(cfg, LORA, S, trainable="lora")
            full_b = vjp_residual_bytes(cfg, LORA, S, trainable="full")
            per = S * cfg.n_layers
            total = co["retained"] + co["workspace"]
            rows.append(
                {
                    "model": name,
                    "seq": S,
                    "coserve_B/tok/layer": co["retained"] / per,
                    "coserve+acc_B/tok/layer": total / per,
                    "flexllm_table_B/tok/layer": float(flexllm_table_bytes(cfg, LORA.rank)),
                    "lora_vjp_B/tok/layer": lora_b / per,
                    "full_vjp_B/tok/layer": full_b / per,
                    "coserve_GiB": co["retained"] / 2**30,
                    "coserve+acc_GiB": total / 2**30,
                    "layer_mode_GiB": (lay["retained"] + lay["workspace"]) / 2**30,
                    "layer_in_step_GiB": lay["in_step"] / 2**30,
                    "lora_vjp_GiB": lora_b / 2**30,
                    "full_vjp_GiB": full_b / 2**30,
                    "lora_vjp/coserve": lora_b / co["retained"],
                    "lora_vjp/(coserve+acc)": lora_b / total,
                    "full_vjp/(coserve+acc)": full_b / total,
                    "lora_vjp/layer_mode": lora_b / (lay["retained"] + lay["workspace"]),
                }
            )
    return rows


def synthetic_batch(
    scfg: CoServeConfig, n_decode: int, n_ft: int, *, ctx: int = 41, bwd: bool = False
) -> StepBatch:
    """n_decode decode rows (one per request, ``ctx`` tokens of context each, pages laid out
    contiguously), then n_ft finetuning-forward rows; with ``bwd`` also the first backward
    step of a full-length sample. Shared with bench_paged_attention.py."""
    b = empty_batch(scfg)
    per = -(-ctx // scfg.page_size)
    for r in range(n_decode):
        b["page_table"][r, :per] = np.arange(per) + per * r
        b["tokens"][r], b["positions"][r], b["slots"][r] = 5, ctx - 1, r
    rows = slice(n_decode, n_decode + n_ft)
    b["tokens"][rows] = 7
    b["positions"][rows] = np.arange(n_ft)
    b["is_ft"][rows] = True
    b["adapters"][rows] = scfg.max_adapters
    b["labels"][rows] = 8
    b["loss_scale"] = np.float32(1.0 / max(1, scfg.ft_max_len - 1))
    if bwd:
        b["bwd_chunk"], b["bwd_len"] = np.int32(0), np.int32(scfg.ft_max_len)
        b["bwd_first"], b["bwd_last"] = np.bool_(True), np.bool_(False)
    return StepBatch(**b)


def timing_rows(model: str, budgets: list[int], repeats: int) -> list[dict]:
    cfg = MODELS[model]()
    params = init_params(cfg, key=jax.random.key(0))
    rows = []
    for B in budgets:
        scfg = CoServeConfig(
            token_budget=B, max_requests=B, page_size=16, num_pages=3 * B,
            max_pages_per_request=3, max_adapters=0, ft_max_len=256, bwd_chunk=B,
        )  # fmt: skip
        opt = optax.sgd(1e-3)
        step = make_coserve_step(cfg, scfg, LORA, opt)
        bank = AdapterBank.build(cfg, [], capacity=0)
        lora = init_lora(cfg, LORA, key=jax.random.key(1))
        box = {"state": init_state(cfg, scfg, lora, opt, key=jax.random.key(2))}

        def run(batch, box=box, step=step, bank=bank):
            box["state"], out = step(params, bank.weights, bank.scales, box["state"], batch)
            return out.next_tokens

        inf = synthetic_batch(scfg, B, 0)
        co = synthetic_batch(scfg, B // 2, B - B // 2, bwd=True)
        t_inf = time_call(run, inf, warmup=2, repeats=repeats)
        t_co = time_call(run, co, warmup=2, repeats=repeats)
        # Layer-level backward (1 layer of all 256 tokens per step) on the same batch.
        lcfg = dataclasses.replace(scfg, backward_mode="layer", bwd_layers=1)
        lstep = make_coserve_step(cfg, lcfg, LORA, opt)
        lbox = {"state": init_state(cfg, lcfg, lora, opt, key=jax.random.key(2))}

        def run_layer(batch, box=lbox, step=lstep, bank=bank):
            box["state"], out = step(params, bank.weights, bank.scales, box["state"], batch)
            return out.next_tokens

        t_lay = time_call(run_layer, co, warmup=2, repeats=repeats)
        rows.append(
            {
                "device": jax.devices()[0].device_kind,
                "model": model,
                "tokens/step": B,
                "inference_only_ms": 1e3 * t_inf.median,
                "coserve_ms": 1e3 * t_co.median,
                "coserve/inference": t_co.median / t_inf.median,
                "coserve_layer_bwd_ms": 1e3 * t_lay.median,
                "ft_fwd_tokens": B - B // 2,
                "bwd_chunk_tokens": B,
                "layer_bwd_tokens": scfg.ft_max_len,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI)")
    ap.add_argument("--out", default=None, help="write JSON results here")
    args = ap.parse_args(argv)
    if args.smoke:
        mem = memory_rows(["tiny", "llama3.1-8b"], [1024, 4096])
        tim = timing_rows("tiny", [8, 32], repeats=3)
    else:
        mem = memory_rows(["tiny", "small", "llama3.1-8b"], [1024, 2048, 4096, 8192])
        tim = timing_rows("small", [8, 32, 128], repeats=15)
    print("Bytes kept for the backward of one finetuning sample (abstract tracing, no arrays)")
    print(format_table(mem))
    print()
    kind = jax.devices()[0].device_kind
    print(f"Step time (median) vs tokens per step on {kind} ({jax.default_backend()})")
    print(format_table(tim))
    target = next(r for r in mem if r["model"] == "llama3.1-8b" and r["seq"] == 4096)
    ratio = target["lora_vjp/(coserve+acc)"]
    print(
        f"\ntarget (>= 8x fewer bytes than LoRA autodiff, 8B, seq 4096): "
        f"{ratio:.1f}x incl. dK/dV accumulators, {target['lora_vjp/coserve']:.1f}x retained only"
        f" -> {'met' if ratio >= 8 else 'MISSED'}"
    )
    if args.out:
        write_results(
            args.out,
            name="bench_coserve_memory",
            rows=mem + tim,
            smoke=args.smoke,
            target={"ratio": ratio, "required": 8.0},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
