"""The engine: multi-LoRA greedy serving equals dense per-adapter decoding, finetuning in the
same steps leaves inference outputs unchanged, page/slot accounting, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import AdapterBank, CoServeEngine
from jgraph.coserve.model import TRAINABLE, adapter_sel, forward

PAD_LEN = 24
PROMPTS = [[256, 72, 101, 108], [256, 9], [256, 1, 2, 3, 4, 5, 6, 7, 8], [256, 50, 60]]
ADAPTERS = ["a", None, "b", "a"]
NEW = [5, 6, 4, 5]


@pytest.fixture(scope="module")
def dense_logits(cfg, params):
    @jax.jit
    def logits(tokens, idx, weights, scales):
        sel = adapter_sel(scales, jnp.full((PAD_LEN,), idx))
        return forward(cfg, params, tokens, lora=weights, sel=sel)

    return logits


def _dense_greedy(logits, bank, prompt, n_new, adapter):
    """Reference: full recompute of the padded sequence for every new token (causal, so the
    padding after the last real token cannot change its logits)."""
    seq = list(prompt)
    idx = jnp.int32(bank.index(adapter))
    for _ in range(n_new):
        toks = jnp.asarray(seq + [0] * (PAD_LEN - len(seq)), jnp.int32)
        seq.append(int(jnp.argmax(logits(toks, idx, bank.weights, bank.scales)[len(seq) - 1])))
    return seq[len(prompt) :]


def _serve(engine, lora, samples=()):
    engine.reset(lora=lora, key=jax.random.key(5))
    if samples:
        engine.add_finetuning(samples, epochs=2)
    rids = [
        engine.submit(p, max_new_tokens=n, adapter=a)
        for p, n, a in zip(PROMPTS, NEW, ADAPTERS, strict=True)
    ]
    reports = engine.run(max_steps=300)
    assert engine.idle
    return [engine.result(r) for r in rids], reports


@pytest.mark.slow  # per-adapter decoding loops; test_lora checks the multi-LoRA batch fast
def test_multi_lora_serving_equals_dense_per_adapter_decoding(engine, dense_logits, bank, lora):
    outs, reports = _serve(engine, lora)
    for out, p, n, a in zip(outs, PROMPTS, NEW, ADAPTERS, strict=True):
        assert out == _dense_greedy(dense_logits, bank, p, n, a)
    # The batch really mixed adapters and phases: some step had decode and prefill rows.
    assert any(r.decode_tokens and r.prefill_tokens for r in reports)
    # Negative check: adapter "a" changes the greedy continuation of the first prompt.
    assert outs[0] != _dense_greedy(dense_logits, bank, PROMPTS[0], NEW[0], None)
    # Accounting invariants after everything retired.
    table = engine._table
    table.check()
    assert table.pages.n_free == engine.scfg.num_pages
    assert table.slots.n_free == engine.scfg.max_requests
    assert np.all(table.page_table == -1)


def test_greedy_outputs_identical_with_and_without_finetuning(engine, lora):
    alone, _ = _serve(engine, lora)
    samples = [[256, *range(10, 24)], [256, 7, 7, 7, 8, 8, 8, 9]]
    together, reports = _serve(engine, lora, samples)
    assert together == alone
    # Finetuning really ran in the same steps as inference, forward and backward.
    assert any(r.ft_forward_tokens and r.decode_tokens for r in reports)
    assert any(r.bwd_chunk is not None and (r.decode_tokens or r.prefill_tokens) for r in reports)
    assert engine.samples_done == 4
    assert all(np.isfinite(engine.losses))


def test_serving_the_trainable_adapter(engine, dense_logits, cfg, lora_cfg, lora):
    engine.reset(lora=lora, key=jax.random.key(5))
    rid = engine.submit(PROMPTS[0], max_new_tokens=5, adapter=TRAINABLE)
    engine.run(max_steps=50)
    solo = AdapterBank.build(cfg, [("t", lora_cfg, lora)])
    assert engine.result(rid) == _dense_greedy(dense_logits, solo, PROMPTS[0], 5, "t")


def test_bad_inputs(engine, cfg, params, lora_cfg):
    with pytest.raises(ConfigError, match=r"adapter='nope': is not loaded in the bank"):
        engine.submit([256, 1], max_new_tokens=2, adapter="nope")
    with pytest.raises(
        ConfigError, match=r"finetuning sample 1 length=17: must be between 2 and ft_max_len=16"
    ):
        engine.add_finetuning([[1, 2, 3], list(range(17))])
    with pytest.raises(ConfigError, match=r"prompt \+ max_new_tokens=20: exceeds the 16 tokens"):
        engine.submit(list(range(10)), max_new_tokens=10)
    with pytest.raises(ConfigError, match=r"prompt=\[\]: is empty"):
        engine.submit([], max_new_tokens=1)
    with pytest.raises(ConfigError, match=r"prompt=\[999\]: ids outside \[0, 260\)"):
        engine.submit([999], max_new_tokens=1)
    with pytest.raises(ConfigError, match=r"bank capacity=0: != CoServeConfig.max_adapters=2"):
        CoServeEngine(
            cfg, params, engine.scfg, lora_cfg, optimizer=optax.sgd(0.1),
            key=jax.random.key(0), bank=AdapterBank.build(cfg, [], capacity=0),
        )  # fmt: skip
