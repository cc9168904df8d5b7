"""`jgraph demo` part: a tiny Llama serves greedy requests while a LoRA adapter trains in the
same jitted steps; the inference outputs are checked against an inference-only run. Then the
same runs behind the OpenAI-compatible server (`jgraph.coserve._demo_serve`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import optax

from jgraph.core import DemoReport, atomic_write_json
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._engine import TRAINABLE, CoServeEngine
from jgraph.coserve._lora import init_lora, save_peft
from jgraph.coserve._model import init_params
from jgraph.coserve._tokenizer import ByteTokenizer

__all__ = ["demo"]

log = logging.getLogger(__name__)

PHRASE = "jgraph co-serves LLM inference and LoRA finetuning in one jitted step."
PROMPTS = ["Hello, ", "The cat ", "JAX is ", "Once upon a time", "jgraph co-", "LoRA "]


def _serve(engine: CoServeEngine, prompts: list[list[int]], new: int) -> tuple[list, float, list]:
    """Runs until the requests finish (timed), then until finetuning is done (not timed)."""
    rids = [engine.submit(p, max_new_tokens=new) for p in prompts]
    reports, pending = [], set(rids)
    start = time.perf_counter()
    while pending:
        reports.append(engine.step())
        pending -= set(reports[-1].finished)
    seconds = time.perf_counter() - start
    reports += engine.run(max_steps=5000)
    return [engine.result(r) for r in rids], seconds, reports


def _serving(out_dir: Path) -> dict[str, Any]:
    try:
        from jgraph.coserve._demo_serve import serve_demo

        return serve_demo(out_dir)
    except ImportError as exc:  # the serve extra and openai are optional for the library
        log.info("server demo skipped: %s", exc)
        return {"skipped": f"{exc} (install jgraph[all])"}


def _serving_rows(s: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    if "skipped" in s:
        return (("server (jgraph serve)", f"skipped: {s['skipped']}"),)
    losses = s["job_losses"]
    tpot = s["tpot_s_median"]
    return (
        ("server", f"{s['url']} (tiny model, API key), ready in {s['startup_s']:.1f}s"),
        (
            f"{s['streams']} openai-client streams x {s['max_tokens']} tokens",
            f"TTFT median {s['ttft_s_median'] * 1e3:.0f} ms (max {s['ttft_s_max'] * 1e3:.0f}), "
            f"TPOT median {'n/a' if tpot is None else f'{tpot * 1e3:.1f} ms'} (client side)",
        ),
        (
            f"finetuning job {s['job_id']} ({s['job_status']})",
            f"{len(losses)} loss events, {losses[0]:.3f} -> {losses[-1]:.3f}; "
            f"{s['ft_samples_while_streaming']} samples trained while the streams ran"
            if losses
            else "no loss events",
        ),
        (f"{s['fine_tuned_model']} continues 'jgraph co-'", repr(s["fine_tuned_answer"])),
    )


def demo(out_dir: Path) -> DemoReport:
    """Co-serves 6 greedy requests with LoRA finetuning on one phrase (tiny model, CPU), then
    runs the HTTP server with a finetuning job and streamed requests from the ``openai`` client
    (TTFT/TPOT and the job's losses under ``summary.json``'s ``serving``; skipped without the
    ``serve`` extra and ``openai``).

    Writes ``loss.png``, ``summary.json``, the trained adapter (PEFT layout) and the server's
    state directory (``serve-state``) to ``out_dir``.

    Example:
        >>> import tempfile, pathlib
        >>> report = demo(pathlib.Path(tempfile.mkdtemp()))  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = ByteTokenizer()
    cfg = LlamaConfig.tiny()
    params = init_params(cfg, key=jax.random.key(0))
    # A random base with std-0.02 embeddings and head cannot produce confident logits, so no
    # adapter could lower the loss much; sharper (8x) random embeddings make the demo visible.
    params = {**params, "embed": params["embed"] * 8, "lm_head": params["lm_head"] * 8}
    lora_cfg = LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj", "down_proj"))
    scfg = CoServeConfig(
        token_budget=32, max_requests=8, page_size=16, num_pages=32, max_pages_per_request=4,
        max_adapters=0, ft_max_len=80, bwd_chunk=40, grad_accum=1,
    )  # fmt: skip
    lora0 = init_lora(cfg, lora_cfg, key=jax.random.key(1))
    engine = CoServeEngine(
        cfg, params, scfg, lora_cfg, optimizer=optax.adam(3e-2), key=jax.random.key(2), lora=lora0
    )
    prompts = [tok.encode(p) for p in PROMPTS]
    new = 24
    _serve(engine, prompts[:1], 2)  # compile once, outside the timings

    engine.reset(lora=lora0, key=jax.random.key(3))
    alone, t_alone, _ = _serve(engine, prompts, new)

    engine.reset(lora=lora0, key=jax.random.key(3))
    assert tok.eos_id is not None, "the byte tokenizer always has an end-of-text id"
    sample = [*tok.encode(PHRASE), tok.eos_id]
    engine.add_finetuning([sample], epochs=25)
    together, t_co, reports = _serve(engine, prompts, new)
    identical = together == alone
    losses = engine.losses
    ft_tokens = sum(r.ft_forward_tokens for r in reports)

    probe = engine.submit(tok.encode("jgraph co-"), max_new_tokens=30, adapter=TRAINABLE)
    engine.run(max_steps=100)
    continuation = tok.decode(engine.result(probe))
    save_peft(out_dir / "adapter", engine.trainable_adapter(), lora_cfg, base_model="tiny-random")

    artifacts = [out_dir / "summary.json", out_dir / "adapter"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(range(1, len(losses) + 1), losses, marker=".")
        ax.set(xlabel="finetuning sample", ylabel="loss", title="LoRA loss, co-served (CPU)")
        fig.tight_layout()
        fig.savefig(out_dir / "loss.png", dpi=100)
        plt.close(fig)
        artifacts.insert(0, out_dir / "loss.png")
    except ImportError:  # matplotlib is optional for the library
        log.info("matplotlib missing; loss.png not written")
    n_tok = len(prompts) * new
    ft_during_inference = sum(
        r.ft_forward_tokens for r in reports if r.decode_tokens or r.prefill_tokens
    )
    summary = {
        "outputs_identical_with_and_without_finetuning": identical,
        "inference_tokens_per_s_alone_cpu": n_tok / t_alone,
        "inference_tokens_per_s_coserved_cpu": n_tok / t_co,
        "finetuning_forward_tokens": ft_tokens,
        "finetuning_forward_tokens_in_inference_steps": ft_during_inference,
        "finetuning_losses": losses,
        "steps": len(reports),
        "trained_adapter_continuation": continuation,
    }
    serving = _serving(out_dir)
    summary["serving"] = serving
    if "skipped" not in serving:
        artifacts.append(out_dir / "serve-state")
    atomic_write_json(out_dir / "summary.json", summary)
    headline = (
        f"{len(prompts)} greedy requests co-served with {len(losses)} LoRA finetuning samples in "
        f"{len(reports)} jitted steps (CPU): loss {losses[0]:.2f} -> {losses[-1]:.2f}, inference "
        f"outputs {'identical to' if identical else 'DIFFERENT from'} the inference-only run"
    )
    rows = (
        ("inference tokens/s, alone (CPU)", f"{n_tok / t_alone:.0f}"),
        ("inference tokens/s, co-served (CPU)", f"{n_tok / t_co:.0f}"),
        ("finetuning fwd tokens in steps with inference", str(ft_during_inference)),
        ("finetuning loss first -> last", f"{losses[0]:.3f} -> {losses[-1]:.3f}"),
        ("outputs identical to inference-only", str(identical)),
        ("trained adapter continues 'jgraph co-'", repr(continuation)),
        *_serving_rows(serving),
    )
    return DemoReport(headline=headline, rows=rows, artifacts=tuple(artifacts))
