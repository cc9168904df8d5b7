"""The co-serving step against full-sequence autodiff: exact chunked LoRA gradients, the loss
curve of a plain LoRA loop, and no recompilation across request mixes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import (
    AdapterBank,
    CoServeConfig,
    LlamaConfig,
    StepBatch,
    backward_steps,
    empty_batch,
    init_lora,
    init_params,
    init_state,
    make_coserve_step,
)
from jgraph.coserve.reference import plain_lora_train, sample_loss_reference
from jgraph.testing import assert_no_recompile, assert_trees_close

S = 16
_ref_grad = jax.jit(jax.value_and_grad(sample_loss_reference, argnums=2), static_argnums=(0, 3))


def _padded(sample):
    """One compiled reference for every sample length."""
    return jnp.asarray(np.pad(sample, (0, S - len(sample)))), jnp.int32(len(sample))


def _run_sample(cfg, params, scfg, step, state, sample, fwd_chunk, rope_len=None):
    """Forward the sample in chunks of ``fwd_chunk`` rows, each packed after 3 inference rows
    of an unrelated request (co-served), then its backward chunks last to first. Finetuning
    rows are rotated for the sample's length (``rope_len(positions)`` instead, if given)."""
    n = len(sample)
    bank = AdapterBank.build(cfg, [], capacity=scfg.max_adapters)
    cur, ipos = 0, 0
    while cur < n:
        b = empty_batch(scfg)
        b["page_table"][0, :2] = [0, 1]
        b["tokens"][:3] = [7, 8, 9]
        b["positions"][:3] = np.arange(ipos, ipos + 3) % 8
        b["slots"][:3] = 0
        ipos += 3
        m = min(fwd_chunk, n - cur)
        rows = slice(3, 3 + m)
        b["tokens"][rows] = sample[cur : cur + m]
        b["positions"][rows] = np.arange(cur, cur + m)
        b["rope_len"][rows] = n if rope_len is None else rope_len(b["positions"][rows])
        b["rope_len"][:3] = b["positions"][:3] + 1
        b["is_ft"][rows] = True
        b["adapters"][rows] = scfg.max_adapters
        nxt = np.arange(cur + 1, cur + m + 1)
        b["labels"][rows] = np.where(nxt < n, sample[np.minimum(nxt, n - 1)], -1)
        b["loss_scale"] = np.float32(1.0 / (n - 1))
        state, out = step(params, bank.weights, bank.scales, state, StepBatch(**b))
        cur += m
    fwd_loss = float(out.ft_loss)
    last = backward_steps(cfg, scfg, n) - 1
    for c in range(last, -1, -1):
        b = empty_batch(scfg)
        b["bwd_chunk"], b["bwd_first"], b["bwd_last"] = np.int32(c), c == last, c == 0
        b["bwd_len"] = np.int32(n)
        state, out = step(params, bank.weights, bank.scales, state, StepBatch(**b))
    return state, out, fwd_loss


# Chunk 1 and 4 exercise the dK/dV carry between chunks (a missing carry fails them); chunk S
# is a single chunk; n = S fills the buffers, n = 13 leaves a partial last chunk.
# (The engine fixture's chunk of 4 is checked against full-sequence gradients through the final
# adapter of the loss-curve test below.)
# One-token chunks (13 backward steps) are the slow case; (S, S) keeps the path in `-m "not slow"`.
@pytest.mark.parametrize(("chunk", "n"), [pytest.param(1, 13, marks=pytest.mark.slow), (S, S)])
def test_chunked_lora_gradients_equal_full_sequence_grad(cfg, params, lora_cfg, lora, chunk, n):
    scfg = CoServeConfig(token_budget=8, max_requests=2, ft_max_len=S, bwd_chunk=chunk, page_size=4)
    opt = optax.sgd(0.0)
    step = make_coserve_step(cfg, scfg, lora_cfg, opt)
    state = init_state(cfg, scfg, lora, opt, key=jax.random.key(0))
    # A longer sample first leaves stale buffers behind the real one (must not leak into it).
    stale = np.asarray(jax.random.randint(jax.random.key(99), (S,), 0, 256), np.int32)
    state, _, _ = _run_sample(cfg, params, scfg, step, state, stale, fwd_chunk=5)
    sample = np.asarray(jax.random.randint(jax.random.key(n), (n,), 0, 256), np.int32)
    state, out, fwd_loss = _run_sample(cfg, params, scfg, step, state, sample, fwd_chunk=5)
    ref_loss, ref_grad = _ref_grad(cfg, params, lora, lora_cfg, *_padded(sample))
    assert_trees_close(np.float32(fwd_loss), ref_loss, kind="forward")
    assert bool(out.sample_done)
    assert float(out.sample_loss) == fwd_loss
    assert_trees_close(state.grad, ref_grad, kind="gradient")
    # Negative check: the gradient is not trivially small, and a truncated backward differs.
    assert float(jnp.max(jnp.abs(ref_grad["k_proj"]["A"]))) > 1e-4


# FlexLLM's layer-level split: k = 1 and k = L on the 2-layer model, and k = 2 on a 3-layer
# model (a partial lowest group); query chunks of 4, S and 8 inside each layer.
@pytest.mark.parametrize(
    ("n_layers", "k", "chunk"),
    [
        (2, 1, 4),
        pytest.param(2, 2, S, marks=pytest.mark.slow),
        pytest.param(3, 2, 8, marks=pytest.mark.slow),
    ],
)
def test_layer_level_gradients_equal_full_sequence_grad(lora_cfg, n_layers, k, chunk):
    cfg = LlamaConfig.tiny(n_layers=n_layers)
    params = init_params(cfg, key=jax.random.key(5))
    lora = init_lora(cfg, lora_cfg, key=jax.random.key(6), b_std=0.05)
    scfg = CoServeConfig(
        token_budget=8, max_requests=2, ft_max_len=S, bwd_chunk=chunk, page_size=4,
        backward_mode="layer", bwd_layers=k,
    )  # fmt: skip
    opt = optax.sgd(0.0)
    step = make_coserve_step(cfg, scfg, lora_cfg, opt)
    state = init_state(cfg, scfg, lora, opt, key=jax.random.key(0))
    assert state.dk_acc.size == 0
    assert state.dv_acc.size == 0
    assert backward_steps(cfg, scfg, 13) == -(-n_layers // k)
    stale = np.asarray(jax.random.randint(jax.random.key(98), (S,), 0, 256), np.int32)
    state, _, _ = _run_sample(cfg, params, scfg, step, state, stale, fwd_chunk=5)
    sample = np.asarray(jax.random.randint(jax.random.key(7), (13,), 0, 256), np.int32)
    state, out, fwd_loss = _run_sample(cfg, params, scfg, step, state, sample, fwd_chunk=5)
    ref_loss, ref_grad = _ref_grad(cfg, params, lora, lora_cfg, *_padded(sample))
    assert bool(out.sample_done)
    assert_trees_close(np.float32(fwd_loss), ref_loss, kind="forward")
    assert_trees_close(state.grad, ref_grad, kind="gradient")
    # Negative check: every layer got a real gradient (a skipped group would leave zeros).
    for li in range(n_layers):
        assert float(jnp.max(jnp.abs(ref_grad["q_proj"]["A"][li]))) > 1e-4
        assert float(jnp.max(jnp.abs(state.grad["q_proj"]["A"][li]))) > 1e-4


def test_layer_mode_config_errors(cfg, lora_cfg):
    with pytest.raises(ConfigError, match=r"CoServeConfig.backward_mode='chunk'.*not one of"):
        CoServeConfig(backward_mode="chunk")
    with pytest.raises(ConfigError, match=r"CoServeConfig.bwd_layers=0: must be >= 1"):
        CoServeConfig(backward_mode="layer", bwd_layers=0)
    scfg = CoServeConfig(backward_mode="layer", bwd_layers=3)
    with pytest.raises(ConfigError, match=r"bwd_layers=3: exceeds the model's n_layers=2"):
        make_coserve_step(cfg, scfg, lora_cfg, optax.sgd(0.1))


@pytest.mark.slow  # many engine steps
def test_coserved_loss_curve_equals_plain_lora_loop(engine, cfg, params, lora_cfg):
    lora0 = init_lora(cfg, lora_cfg, key=jax.random.key(9))
    engine.reset(lora=lora0, key=jax.random.key(1))
    rng = np.random.default_rng(0)
    # A tiny memorization task so the loss visibly falls.
    base = [256, *rng.integers(0, 256, 11).tolist()]
    samples = [base[: 8 + (i % 5)] for i in range(8)]
    engine.add_finetuning(samples)
    for i in range(4):  # inference load during finetuning
        engine.submit([256, 1 + i, 2, 3], max_new_tokens=5)
    reports = engine.run(max_steps=500)
    assert engine.idle
    assert any(r.ft_forward_tokens and (r.decode_tokens or r.prefill_tokens) for r in reports)
    assert any(r.bwd_chunk is not None and r.decode_tokens for r in reports)
    assert sum(r.updated for r in reports) == 4  # 8 samples, grad_accum=2
    losses, final = plain_lora_train(
        cfg, params, lora0, lora_cfg, optax.sgd(0.3, momentum=0.9), samples, grad_accum=2
    )
    assert_trees_close(np.float32(engine.losses), np.float32(losses), kind="gradient")
    assert_trees_close(engine.trainable_adapter(), final, kind="gradient")
    assert losses[-1] < losses[0] - 0.1  # it learns (not a frozen adapter)


def test_no_recompile_across_request_mixes(engine, cfg, lora_cfg):
    engine.reset(lora=init_lora(cfg, lora_cfg, key=jax.random.key(2)), key=jax.random.key(3))
    engine.submit([256, 5], max_new_tokens=2)
    engine.step()  # warm-up (a no-op if an earlier test already compiled the step)
    prompts = [[256, 1, 2, 3, 4, 5, 6, 7, 8, 9], [256, 4], [256, 3, 3]]
    samples = [[256, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
    with assert_no_recompile("co-serving step"):
        engine.step()  # decode only
        engine.submit(prompts[0], max_new_tokens=3)  # chunked prefill
        engine.add_finetuning(samples)
        engine.step()
        engine.submit(prompts[1], max_new_tokens=2, adapter="trainable")
        engine.submit(prompts[1], max_new_tokens=3, adapter="b")
        engine.submit(prompts[2], max_new_tokens=4)
        engine.run(max_steps=100)  # decode + prefill + finetuning fwd/bwd + optimizer
    assert engine.idle
    assert engine.samples_done == 1


@pytest.mark.slow  # two engines run to the end
def test_finetuning_checkpoint_resumes_exactly(engine, cfg, lora_cfg, tmp_path):
    lora0 = init_lora(cfg, lora_cfg, key=jax.random.key(21))
    samples = [[256, *range(i, i + 9)] for i in range(3)]
    engine.reset(lora=lora0, key=jax.random.key(0))
    engine.add_finetuning(samples)
    engine.run(max_steps=200)
    straight_losses, straight = list(engine.losses), engine.trainable_adapter()

    engine.reset(lora=lora0, key=jax.random.key(0))
    engine.add_finetuning(samples)
    while engine.samples_done < 1:
        engine.step()
    with pytest.raises(ConfigError, match="no checkpoint"):
        engine.restore_finetuning(tmp_path / "empty")
    engine.save_finetuning(tmp_path / "ckpt")  # mid-accumulation: grad_accum=2, one sample done
    engine.step()  # start the next sample, then throw everything away
    with pytest.raises(ConfigError, match="a finetuning sample is in flight"):
        engine.save_finetuning(tmp_path / "ckpt")
    engine.reset(lora=init_lora(cfg, lora_cfg, key=jax.random.key(22)), key=jax.random.key(0))
    assert engine.restore_finetuning(tmp_path / "ckpt") == 1
    engine.run(max_steps=200)
    assert engine.samples_done == 3
    assert_trees_close(np.float32(engine.losses), np.float32(straight_losses), kind="forward")
    assert_trees_close(engine.trainable_adapter(), straight, kind="forward")


DYNAMIC = {"rope_scaling_factor": 2.0, "rope_scaling_type": "dynamic", "rope_original_max_len": 8}


# A partial last backward chunk (5 does not divide ft_max_len=12; samples of 12 and 11 end in
# chunks of 2 and 1 rows), in token and layer mode; and dynamic-NTK RoPE with a sample longer
# than rope_original_max_len, whose rotation depends on the sample's length (forward rows and
# the backward's recompute must both use it).
@pytest.mark.parametrize(
    ("rope", "mode", "n"),
    [("dynamic", "token", 11), ("plain", "layer", 12), pytest.param("plain", "token", 12,
                                                                   marks=pytest.mark.slow)],
)  # fmt: skip
def test_partial_chunks_and_dynamic_rope_gradients_equal_full_sequence_grad(
    lora_cfg, lora, rope, mode, n
):
    cfg = LlamaConfig.tiny(**(DYNAMIC if rope == "dynamic" else {}))
    params = init_params(cfg, key=jax.random.key(0))
    if rope == "dynamic":  # sharper attention, so that the rotation visibly matters
        lay = params["layers"]
        params = {**params, "layers": {**lay, "q_proj": 10 * lay["q_proj"],
                                       "k_proj": 10 * lay["k_proj"]}}  # fmt: skip
    S12 = 12
    scfg = CoServeConfig(
        token_budget=8, max_requests=2, ft_max_len=S12, bwd_chunk=5, page_size=4,
        backward_mode=mode,
    )  # fmt: skip
    assert scfg.ft_buffer_len == 15
    assert scfg.n_bwd_chunks == 3
    opt = optax.sgd(0.0)
    step = make_coserve_step(cfg, scfg, lora_cfg, opt)
    state0 = init_state(cfg, scfg, lora, opt)
    stale = np.asarray(jax.random.randint(jax.random.key(97), (S12,), 0, 256), np.int32)
    state0, _, _ = _run_sample(cfg, params, scfg, step, state0, stale, fwd_chunk=5)
    sample = np.asarray(jax.random.randint(jax.random.key(n), (n,), 0, 256), np.int32)
    state, out, fwd_loss = _run_sample(cfg, params, scfg, step, state0, sample, fwd_chunk=5)
    ref_loss, ref_grad = jax.value_and_grad(sample_loss_reference, argnums=2)(
        cfg, params, lora, lora_cfg, jnp.asarray(sample)
    )
    # padded to a longer buffer, the reference still rotates for the sample's own length
    pad_loss, pad_grad = jax.value_and_grad(sample_loss_reference, argnums=2)(
        cfg, params, lora, lora_cfg, jnp.asarray(np.pad(sample, (0, 16 - n))), jnp.int32(n)
    )
    assert_trees_close((pad_loss, pad_grad), (ref_loss, ref_grad), kind="forward")
    assert bool(out.sample_done)
    assert_trees_close(np.float32(fwd_loss), ref_loss, kind="forward")
    assert_trees_close(state.grad, ref_grad, kind="gradient")
    assert float(jnp.max(jnp.abs(ref_grad["k_proj"]["A"]))) > 1e-4
    if rope == "dynamic":
        # Negative checks: the reference differs from plain RoPE's, and rotating each
        # finetuning row for its own position + 1 (the per-row rule of generated tokens,
        # wrong for a full sample) misses it.
        def far(g):  # q_proj's LoRA gradient off by more than 3% of its largest entry
            d = jnp.max(jnp.abs(g["q_proj"]["A"] - ref_grad["q_proj"]["A"]))
            return float(d) > 0.03 * float(jnp.max(jnp.abs(ref_grad["q_proj"]["A"])))

        plain = jax.grad(sample_loss_reference, argnums=2)(
            LlamaConfig.tiny(), params, lora, lora_cfg, jnp.asarray(sample)
        )
        assert far(plain)
        state2 = init_state(cfg, scfg, lora, opt)
        state2, _, _ = _run_sample(
            cfg, params, scfg, step, state2, sample, fwd_chunk=5, rope_len=lambda p: p + 1
        )
        assert far(state2.grad)
        assert not far(state.grad)
