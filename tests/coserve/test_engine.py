"""The engine: multi-LoRA greedy serving equals dense per-adapter decoding, finetuning in the
same steps leaves inference outputs unchanged, page/slot accounting, and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import (
    AdapterBank,
    CoServeEngine,
    LlamaConfig,
    LoraConfig,
    init_lora,
    init_params,
)
from jgraph.coserve.model import TRAINABLE, adapter_sel, forward
from jgraph.coserve.sampling import SamplingParams, request_key, sample_tokens
from jgraph.testing import assert_no_recompile, assert_trees_close, tolerance

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
        ConfigError, match=r"finetuning samples\[1\] length=17: must be between 2 and 16"
    ):
        engine.add_finetuning([[1, 2, 3], list(range(17))])
    with pytest.raises(ConfigError, match=r"prompt \+ max_new_tokens=20: exceeds the 16 tokens"):
        engine.submit(list(range(10)), max_new_tokens=10)
    with pytest.raises(ConfigError, match=r"prompt length=0: must be >= 1"):
        engine.submit([], max_new_tokens=1)
    with pytest.raises(ConfigError, match=r"prompt\[0\]=999: is outside the vocabulary \[0, 260\)"):
        engine.submit([999], max_new_tokens=1)
    with pytest.raises(ConfigError, match=r"bank capacity=0: != CoServeConfig.max_adapters=2"):
        CoServeEngine(
            cfg, params, engine.scfg, lora_cfg, optimizer=optax.sgd(0.1),
            key=jax.random.key(0), bank=AdapterBank.build(cfg, [], capacity=0),
        )  # fmt: skip


TIGHT_PROMPTS = [[256, 3, 1], [256, 5, 9], [256, 2, 6]]


def _serve_tight(engine, lora):
    engine.reset(lora=lora, key=jax.random.key(5))
    rids = [
        engine.submit(p, max_new_tokens=9, adapter=a)
        for p, a in zip(TIGHT_PROMPTS, ["a", None, "b"], strict=True)
    ]
    reports = engine.run(max_steps=300)
    assert engine.idle
    engine._table.check()
    return [engine.result(r) for r in rids], reports


@pytest.fixture(scope="module")
def tight(engine, cfg, params, lora_cfg, bank):
    """The shared engine with 3 KV pages of 4 tokens: each request of 12 tokens is admitted
    with 1 page and needs 3, so the newest ones are preempted and recomputed."""
    return CoServeEngine(
        cfg, params, dataclasses.replace(engine.scfg, num_pages=3), lora_cfg,
        optimizer=optax.sgd(0.3, momentum=0.9), key=jax.random.key(0), bank=bank,
    )  # fmt: skip


def test_preempted_requests_finish_with_the_same_greedy_output(engine, tight, lora):
    ample, reports = _serve_tight(engine, lora)  # 3 requests x 3 pages <= 10 pages
    assert not any(r.preempted for r in reports)
    outs, reports = _serve_tight(tight, lora)
    preempted = [rid for r in reports for rid in r.preempted]
    assert preempted
    assert 0 not in preempted  # the oldest request is never the victim
    assert outs == ample
    assert [len(o) for o in outs] == [9, 9, 9]
    with pytest.raises(ConfigError, match=r"=13: exceeds the 12 tokens the whole KV pool holds"):
        tight.submit([256] * 4, max_new_tokens=9)


def test_set_bank_adapter_swaps_weights_without_recompiling(engine, cfg, lora_cfg, lora, bank):
    engine.reset(lora=lora, key=jax.random.key(5))
    prompt = [PROMPTS[0]]
    before = engine.generate(prompt, max_new_tokens=5, adapter="b")  # also warms the step up
    new_cfg = LoraConfig(rank=3, alpha=9.0, targets=("q_proj", "down_proj"))
    new = init_lora(cfg, new_cfg, key=jax.random.key(7), b_std=0.3)
    full = LoraConfig(rank=4, alpha=8.0, targets=tuple(bank.weights))  # scale 2, as "b"
    old_b = {t: {k: w[k][1] for k in ("A", "B")} for t, w in bank.weights.items()}
    try:
        with assert_no_recompile("bank hot swap"):
            assert engine.set_bank_adapter("b", new_cfg, new) == 1
            swapped = engine.generate(prompt, max_new_tokens=5, adapter="b")
            assert swapped != before
            with pytest.raises(ConfigError, match="the bank is full"):
                engine.set_bank_adapter("c", new_cfg, new)
            engine.remove_bank_adapter("b")
            with pytest.raises(ConfigError, match=r"adapter='b': is not loaded"):
                engine.submit([256], max_new_tokens=1, adapter="b")
            assert engine.set_bank_adapter("c", new_cfg, new) == 1  # the freed slot
            assert engine.generate(prompt, max_new_tokens=5, adapter="c") == swapped
            rid = engine.submit([256, 1], max_new_tokens=2, adapter="c")
            with pytest.raises(ConfigError, match=rf"is used by requests \[{rid}\]"):
                engine.remove_bank_adapter("c")
            engine.run()
            engine.remove_bank_adapter("c")
        with pytest.raises(ConfigError, match=r"rank=8: exceeds bank rank 4"):
            engine.set_bank_adapter("x", LoraConfig(rank=8), init_lora(
                cfg, LoraConfig(rank=8), key=jax.random.key(0)))  # fmt: skip
    finally:  # the engine is shared: put "b" back exactly
        engine.set_bank_adapter("b", full, old_b)
    assert engine.bank.names == ("a", "b")
    assert_trees_close(engine.bank.weights, bank.weights, kind="exact")
    assert engine.generate(prompt, max_new_tokens=5, adapter="b") == before


# -- per-request sampling -------------------------------------------------------------------
SEEDED = {"temperature": 0.8, "top_p": 0.9, "seed": 123}


def _run_requests(engine, reqs, *, key=5, lora=None):
    """Resets the engine (``lora``: the adapter) and runs ``reqs`` [(prompt, submit kwargs)]."""
    engine.reset(lora=lora, key=jax.random.key(key))
    rids = [engine.submit(p, **kw) for p, kw in reqs]
    reports = engine.run(max_steps=300)
    assert engine.idle
    return [engine.result(r) for r in rids], reports


def test_seeded_sampling_does_not_depend_on_the_batch(engine, dense_logits, bank, lora):
    x = (PROMPTS[0], {"max_new_tokens": 6, "adapter": "a", **SEEDED})
    [alone], _ = _run_requests(engine, [x], lora=lora)
    # Other rows around it (an unseeded sampled request, a greedy one, finetuning), another
    # engine key, and it arrives third, so it lands in other rows and steps.
    engine.reset(lora=lora, key=jax.random.key(6))
    engine.add_finetuning([[256, *range(30, 40)]])
    others = [(PROMPTS[2], {"max_new_tokens": 4, "temperature": 1.0}),
              (PROMPTS[1], {"max_new_tokens": 6})]  # fmt: skip
    rids = [engine.submit(p, **kw) for p, kw in [*others, x]]
    engine.run(max_steps=300)
    assert engine.result(rids[2]) == alone
    # The key of generated token i is fold_in(seed_key(seed), i): dense logits + request_key.
    seq, idx = list(PROMPTS[0]), jnp.int32(bank.index("a"))
    for i in range(6):
        toks = jnp.asarray(seq + [0] * (PAD_LEN - len(seq)), jnp.int32)
        row = dense_logits(toks, idx, bank.weights, bank.scales)[len(seq) - 1][None]
        key = request_key(123, i)[None]
        seq.append(int(sample_tokens(row, jnp.full(1, 0.8), jnp.full(1, 0.9), key)[0]))
    assert alone == seq[len(PROMPTS[0]) :]
    # Negative checks: sampling really samples, and another seed gives other tokens.
    greedy, _ = _run_requests(engine, [(PROMPTS[0], {"max_new_tokens": 6, "adapter": "a"})],
                              lora=lora)  # fmt: skip
    x2 = (PROMPTS[0], {"max_new_tokens": 6, "adapter": "a", **SEEDED, "seed": 124})
    [other_seed], _ = _run_requests(engine, [x2], lora=lora)
    assert alone != greedy[0]
    assert other_seed != alone


def test_unseeded_sampling_follows_the_engine_key(engine, lora):
    reqs = [(p, {"max_new_tokens": 5, "temperature": 1.0}) for p in PROMPTS[:2]]
    a, _ = _run_requests(engine, reqs, key=8, lora=lora)
    b, _ = _run_requests(engine, reqs, key=8, lora=lora)
    c, _ = _run_requests(engine, reqs, key=9, lora=lora)
    assert a == b
    assert a != c  # negative check: the key matters
    assert a[0] != a[1]


def test_tiny_top_p_is_greedy(engine, lora):
    greedy, _ = _run_requests(engine, [(p, {"max_new_tokens": 5}) for p in PROMPTS], lora=lora)
    nucleus = [(p, {"max_new_tokens": 5, "temperature": 1.5, "top_p": 1e-6, "seed": i})
               for i, p in enumerate(PROMPTS)]  # fmt: skip
    outs, _ = _run_requests(engine, nucleus, lora=lora)
    assert outs == greedy
    # Negative check: the full distribution at that temperature does not give greedy tokens.
    full = [(p, {**kw, "top_p": 1.0}) for p, kw in nucleus]
    assert _run_requests(engine, full, lora=lora)[0] != greedy


def test_seeded_sampling_survives_preemption(engine, tight, lora):
    reqs = [(p, {"max_new_tokens": 9, "adapter": a, "temperature": 1.0, "top_p": 0.95,
                 "seed": 40 + i})
            for i, (p, a) in enumerate(zip(TIGHT_PROMPTS, ["a", None, "b"], strict=True))]  # fmt: skip
    ample, reports = _run_requests(engine, reqs, lora=lora)
    assert not any(r.preempted for r in reports)
    outs, reports = _run_requests(tight, reqs, key=3, lora=lora)
    assert any(r.preempted for r in reports)
    assert outs == ample
    greedy, _ = _run_requests(tight, [(p, {**kw, "temperature": 0.0}) for p, kw in reqs],
                              lora=lora)  # fmt: skip
    assert outs != greedy  # negative check: these are sampled tokens


def test_sampling_mixes_do_not_recompile(engine, lora):
    engine.reset(lora=lora, key=jax.random.key(0))
    engine.generate([[256, 5]], max_new_tokens=2)  # warm-up
    with assert_no_recompile("sampled co-serving step"):
        engine.submit([256, 1, 2], max_new_tokens=4, temperature=0.7, top_p=0.5, seed=1)
        engine.submit([256, 3], max_new_tokens=3)
        engine.submit([256, 4], sampling=SamplingParams(temperature=1.2, max_tokens=3))
        engine.run(max_steps=100)
    assert engine.idle


def test_sampling_parameters_are_checked(engine):
    with pytest.raises(ConfigError, match=r"SamplingParams.top_p=0"):
        engine.submit([256], max_new_tokens=1, temperature=1.0, top_p=0.0)
    with pytest.raises(ConfigError, match=r"SamplingParams.temperature=-1"):
        engine.submit([256], max_new_tokens=1, temperature=-1.0)
    with pytest.raises(ConfigError, match=r"sampling=.*given together with"):
        engine.submit([256], sampling=SamplingParams(max_tokens=2), temperature=1.0)
    with pytest.raises(ConfigError, match=r"max_new_tokens=None: is required"):
        engine.submit([256])


# -- inputs validated at the engine boundary, before anything is traced ------------------------
def test_engine_refuses_mismatched_params_and_adapters(engine, cfg, params, lora_cfg, lora):
    def build(**kw):
        args = {"cfg": cfg, "params": params, "lora": None, **kw}
        return CoServeEngine(
            args["cfg"], args["params"], engine.scfg, lora_cfg, optimizer=optax.sgd(0.1),
            key=jax.random.key(0), lora=args["lora"],
        )  # fmt: skip

    other = init_params(LlamaConfig.tiny(vocab_size=300), key=jax.random.key(0))
    with pytest.raises(ConfigError, match=r"params.embed=\(300, 64\): shape != \(260, 64\)"):
        build(params=other)
    wide = init_lora(cfg, dataclasses.replace(lora_cfg, rank=8), key=jax.random.key(0))
    with pytest.raises(ConfigError, match=r"lora.\w+.A rank=8: != LoraConfig.rank=4"):
        build(lora=wide)
    with pytest.raises(ConfigError, match=r"lora.\w+.A rank=8: != LoraConfig.rank=4"):
        engine.reset(lora=wide, key=jax.random.key(0))
    few = {t: lora[t] for t in ("q_proj", "v_proj")}
    with pytest.raises(ConfigError, match=r"lora targets=.*!= LoraConfig.targets"):
        engine.reset(lora=few, key=jax.random.key(0))
    engine.reset(lora=lora, key=jax.random.key(0))  # the right adapter is accepted


def test_engine_refuses_bad_token_ids(engine, lora):
    engine.reset(lora=lora, key=jax.random.key(0))
    with pytest.raises(ConfigError, match=r"samples\[0\]\[1\]=2.0: .*float ids are refused"):
        engine.add_finetuning([[1, 2.0, 3]])
    with pytest.raises(ConfigError, match=r"samples\[0\]='abc': a sample must be token ids"):
        engine.add_finetuning(["abc"])
    with pytest.raises(ConfigError, match=r"is one flat list of ids, not a list of samples"):
        engine.add_finetuning([1, 2, 3])
    with pytest.raises(ConfigError, match=r"prompt\[1\]=1.5: is a float"):
        engine.submit([256, 1.5], max_new_tokens=1)
    with pytest.raises(ConfigError, match=r"prompt='hi': a prompt must be token ids"):
        engine.submit("hi", max_new_tokens=1)
    assert not engine._ft.busy  # nothing half-queued
    assert engine.idle


def test_abort_frees_pages_and_slot_of_queued_running_and_finished_requests(engine, lora):
    engine.reset(lora=lora, key=jax.random.key(5))
    first = engine.submit([256, 1, 2, 3, 4], max_new_tokens=6)  # 11 tokens: 3 pages of 4
    done = engine.submit([256, 9], max_new_tokens=1)
    engine.step()  # budget 8: first (5 prefill) and done (2 prefill) admitted
    queued = engine.submit([256, 7], max_new_tokens=2)
    st = engine.stats()
    assert (st.waiting, st.running, st.steps) == (1, 1, 1)  # "done" finished in its prefill
    assert st.free_pages == 10 - 2  # first holds ceil(5 / 4) = 2 pages
    assert st.free_slots == 3 - 1
    assert st.kv_utilization == pytest.approx(2 / 10)
    assert engine.abort(queued)
    assert engine.abort(first)
    st = engine.stats()
    assert (st.waiting, st.running, st.free_pages, st.free_slots) == (0, 0, 10, 3)
    engine._table.check()
    assert engine.idle
    assert len(engine.result(done)) == 1
    assert engine.abort(done)  # forgets the finished result
    assert engine.pop_result(done) is None
    assert not engine.abort(first)  # unknown now
    assert not engine.abort(12345)
    # The freed slot and pages serve a new request normally.
    rid = engine.submit([256, 1, 2, 3, 4], max_new_tokens=6)
    engine.run(max_steps=50)
    assert len(engine.pop_result(rid)) == 6
    assert engine.pop_result(rid) is None


FT_SAMPLES = [[256, *range(10, 24)], [256, 7, 7, 7, 8, 8, 8, 9]]


def test_reset_finetuning_restarts_the_job_and_keeps_requests(engine, cfg, lora_cfg, lora):
    engine.reset(lora=lora, key=jax.random.key(5))
    engine.add_finetuning(FT_SAMPLES, epochs=2)  # 4 samples, 2 updates (grad_accum=2)
    engine.run(max_steps=300)
    fresh = list(engine.losses)  # also warms the step up
    assert len(fresh) == 4
    # A job trains (one update done, a sample in flight) while a request runs; then restart.
    engine.reset(lora=lora, key=jax.random.key(5))
    engine.add_finetuning([[256, *range(30, 45)]] * 3)
    while engine.samples_done < 2:
        engine.step()
    rid = engine.submit([256, 72, 101, 108], max_new_tokens=12)
    engine.step()
    engine.step()
    assert int(engine.state.updates_done) == 1
    assert engine.stats().running == 1
    assert engine.stats().ft_samples_left == 1
    other = init_lora(cfg, lora_cfg, key=jax.random.key(9))
    engine.reset_finetuning(lora=other)
    assert_trees_close(engine.trainable_adapter(), other, kind="exact")
    engine.reset_finetuning(lora=lora)
    st = engine.stats()
    assert (st.ft_samples_left, st.ft_samples_done, st.running) == (0, 0, 1)
    assert engine.losses == []
    with assert_no_recompile("steps after reset_finetuning"):
        engine.add_finetuning(FT_SAMPLES, epochs=2)
        engine.run(max_steps=300)
    assert len(engine.result(rid)) == 12  # the request survived the restart
    tol = tolerance("forward", np.float32)
    # Same losses as the fresh job: adapter, gradient and optimizer state (momentum and the
    # accumulation counter) were all reset.
    np.testing.assert_allclose(engine.losses, fresh, rtol=tol.rtol, atol=tol.atol)
    assert int(engine.state.updates_done) == 2
    # Negative check: without a reset the trained adapter carries over; a rerun differs.
    engine.add_finetuning(FT_SAMPLES, epochs=2)
    engine.run(max_steps=300)
    assert not np.allclose(engine.losses[4:], fresh)
    with pytest.raises(ConfigError, match=r"lora targets=\['q_proj'\]"):
        engine.reset_finetuning(lora={"q_proj": lora["q_proj"]})
    small = init_lora(cfg, LoraConfig(rank=2, targets=lora_cfg.targets), key=jax.random.key(0))
    with pytest.raises(ConfigError, match=r"lora\.\w+\.A rank=2: != LoraConfig\.rank=4"):
        engine.reset_finetuning(lora=small)


def test_cancel_finetuning_drops_samples_and_keeps_the_adapter(engine, lora):
    engine.reset(lora=lora, key=jax.random.key(5))
    engine.add_finetuning(FT_SAMPLES, epochs=3)
    rid = engine.submit([256, 5, 6], max_new_tokens=10)
    while engine.samples_done < 2:
        engine.step()
    engine.step()  # the third sample is in flight now (6 forward tokens per step)
    trained = engine.trainable_adapter()
    assert engine.cancel_finetuning() == 4  # 1 in flight + 3 queued
    assert engine.stats().ft_samples_left == 0
    reports = engine.run(max_steps=50)
    assert all(r.ft_forward_tokens == 0 and r.bwd_chunk is None for r in reports)
    assert len(engine.result(rid)) == 10
    assert engine.samples_done == 2
    assert len(engine.losses) == 2
    assert_trees_close(engine.trainable_adapter(), trained, kind="exact")
    assert engine.cancel_finetuning() == 0
    # Finetuning resumes normally after a cancel (a fresh sample's backward starts at zero).
    engine.add_finetuning(FT_SAMPLES[:1])
    engine.run(max_steps=100)
    assert engine.samples_done == 3
    assert np.isfinite(engine.losses[-1])
