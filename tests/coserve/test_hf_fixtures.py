"""jgraph against frozen Hugging Face outputs (issue #15).

The fixtures are tiny random-init float32 checkpoints and PEFT adapters written by
transformers/peft themselves (`scripts/make_hf_fixtures.py`, versions in each
``expected.json``), with HF's logits on fixed ids and its greedy continuation. Each is loaded
with jgraph: logits must match within the float32 forward tolerance, greedy tokens exactly,
and the cases transformers can run but jgraph cannot must be refused by name.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import (
    AdapterBank,
    CoServeConfig,
    CoServeEngine,
    LoraConfig,
    StepBatch,
    empty_batch,
    init_lora,
    init_state,
    make_coserve_step,
)
from jgraph.coserve.checkpoint import load_hf_checkpoint, load_peft
from jgraph.coserve.model import forward
from jgraph.testing import assert_trees_close

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.json").is_file())


def _expected(case):
    return json.loads((FIXTURES / case / "expected.json").read_text())


def _greedy(logits_fn, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        nxt = int(jnp.argmax(logits_fn(jnp.asarray(ids))[-1]))
        out.append(nxt)
        ids.append(nxt)
    return out


def test_every_case_is_covered():
    # a fixture directory nobody tests would be a silent gap
    assert len(CASES) == 16, CASES


@pytest.mark.parametrize("case", [c for c in CASES if _expected(c)["expect"] == "load"])
def test_hf_logits_and_greedy_tokens_match(case):
    exp = _expected(case)
    base = exp.get("base")
    cfg, params = load_hf_checkpoint(FIXTURES / (base or case))
    if base is None:
        fn = jax.jit(lambda ids: forward(cfg, params, ids))
    else:  # a PEFT adapter on the base model
        lora_cfg, lora = load_peft(FIXTURES / case, cfg)
        stacked = {t: {"A": ab["A"][None], "B": ab["B"][None]} for t, ab in lora.items()}
        n = len(exp["ids"]) + len(exp["greedy"])

        def fn(ids):
            sel = jnp.full((ids.shape[0], 1), lora_cfg.scale, jnp.float32)
            return forward(cfg, params, ids, lora=stacked, sel=sel)

        fn = jax.jit(fn)
        assert n > 0
    got = np.asarray(fn(jnp.asarray(exp["ids"])))
    assert_trees_close(got, np.asarray(exp["logits"], np.float32), kind="forward")
    # Re-running the whole sequence each step is HF's generation without a KV cache; it
    # differs from the cached one only for dynamic RoPE (expected.json then has both).
    assert _greedy(fn, exp["ids"], len(exp["greedy"])) == exp.get("greedy_full", exp["greedy"])


@pytest.mark.parametrize("case", [c for c in CASES if _expected(c)["expect"].startswith("refuse")])
def test_cases_jgraph_cannot_run_are_refused_by_key(case):
    key = _expected(case)["expect"].split(":", 1)[1]
    with pytest.raises(ConfigError, match=rf"config\.json {key}="):
        load_hf_checkpoint(FIXTURES / case)


def test_dynamic_rope_is_in_effect():
    # negative check: the dynamic fixture's prompt is longer than max_position_embeddings, so
    # plain RoPE (or dynamic scaling computed for the wrong length) misses HF's logits
    import dataclasses

    exp = _expected("llama_rope_dynamic")
    cfg, params = load_hf_checkpoint(FIXTURES / "llama_rope_dynamic")
    assert (cfg.rope_scaling_type, cfg.rope_scaling_factor, cfg.rope_original_max_len) == (
        "dynamic",
        2.0,
        8,
    )
    assert len(exp["ids"]) > cfg.rope_original_max_len
    want = np.asarray(exp["logits"], np.float32)
    plain = dataclasses.replace(cfg, rope_scaling_factor=None)
    with pytest.raises(AssertionError):
        assert_trees_close(np.asarray(forward(plain, params, jnp.asarray(exp["ids"]))), want,
                           kind="forward")  # fmt: skip
    longer = dataclasses.replace(cfg, rope_original_max_len=4)
    with pytest.raises(AssertionError):
        assert_trees_close(np.asarray(forward(longer, params, jnp.asarray(exp["ids"]))), want,
                           kind="forward")  # fmt: skip


def test_wrong_rope_would_be_caught():
    # negative check: the comparison above fails for a model loaded with the old fallback
    # (theta 10000, no llama3 scaling) that transformers 5 configs used to get
    exp = _expected("llama3_scaled")
    cfg, params = load_hf_checkpoint(FIXTURES / "llama3_scaled")
    import dataclasses

    wrong = dataclasses.replace(cfg, rope_theta=10000.0, rope_scaling_factor=None)
    got = np.asarray(forward(wrong, params, jnp.asarray(exp["ids"])))
    with pytest.raises(AssertionError):
        assert_trees_close(got, np.asarray(exp["logits"], np.float32), kind="forward")


def _dynamic_engine_parts(budget):
    cfg, params = load_hf_checkpoint(FIXTURES / "llama_rope_dynamic")
    scfg = CoServeConfig(
        token_budget=budget, max_requests=1, page_size=4, num_pages=6, max_pages_per_request=6,
        max_adapters=0, ft_max_len=8, bwd_chunk=4,
    )  # fmt: skip
    return cfg, params, scfg


# The prompt (12 tokens) is longer than max_position_embeddings=8, so dynamic-NTK RoPE scales:
# HF's cached generation rotates the prompt for its length and each new token for its position
# + 1. A budget of 4 prefills the prompt in 3 chunks, which must rotate it the same way.
@pytest.mark.parametrize("budget", [16, 4])
def test_engine_greedy_equals_hf_cached_generation_with_dynamic_rope(budget):
    exp = _expected("llama_rope_dynamic")
    cfg, params, scfg = _dynamic_engine_parts(budget)
    eng = CoServeEngine(cfg, params, scfg, LoraConfig(rank=2), optimizer=optax.sgd(0.0),
                        key=jax.random.key(0))  # fmt: skip
    rid = eng.submit(exp["ids"], max_new_tokens=len(exp["greedy"]))
    reports = eng.run(max_steps=100)
    assert eng.result(rid) == exp["greedy"]
    assert sum(r.prefill_tokens > 0 for r in reports) == (3 if budget == 4 else 1)


def test_packed_step_logits_need_the_prompt_length_for_dynamic_rope():
    # The step's logits of the prompt rows equal HF's (prompt rotated for its whole length);
    # negative check: rotating each row for its own position + 1 (rope_len ignored) misses.
    exp = _expected("llama_rope_dynamic")
    cfg, params, scfg = _dynamic_engine_parts(16)
    lora_cfg = LoraConfig(rank=2)
    opt = optax.sgd(0.0)
    step = make_coserve_step(cfg, scfg, lora_cfg, opt, inference_only=True, return_logits=True)
    n = len(exp["ids"])
    want = np.asarray(exp["logits"], np.float32)
    bank = AdapterBank.build(cfg, [], capacity=0)

    def logits(rope_len):
        b = empty_batch(scfg)
        b["tokens"][:n] = exp["ids"]
        b["positions"][:n] = np.arange(n)
        b["rope_len"][:n] = rope_len
        b["slots"][:n] = 0
        b["page_table"][0, :3] = [0, 1, 2]
        state = init_state(cfg, scfg, init_lora(cfg, lora_cfg, key=jax.random.key(0)), opt)
        _, out = step(params, bank.weights, bank.scales, state, StepBatch(**b))
        return np.asarray(out.logits)[:n]

    assert_trees_close(logits(n), want, kind="forward")
    with pytest.raises(AssertionError):
        assert_trees_close(logits(np.arange(n) + 1), want, kind="forward")
