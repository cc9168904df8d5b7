"""Dependent parallelization on 8 fake CPU devices: LoRA shardings follow the base weights, the
tensor-parallel forward equals the single-device model, and adapters add no collective."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jgraph.core import DATA, MODEL, ConfigError
from jgraph.coserve import (
    AdapterBank,
    CoServeConfig,
    CoServeEngine,
    LlamaConfig,
    LoraConfig,
    StepBatch,
    empty_batch,
    init_lora,
    init_params,
    init_state,
    make_coserve_step,
)
from jgraph.coserve.model import LORA_TARGETS, adapter_sel, forward
from jgraph.coserve.parallel import (
    coserve_specs,
    count_collectives,
    lora_specs,
    make_tp_forward,
    param_specs,
    shard_tree,
)
from jgraph.coserve.reference import plain_lora_train
from jgraph.testing import assert_trees_close, cpu_mesh

CFG = LlamaConfig.tiny(n_heads=8, n_kv_heads=4, head_dim=8)


@pytest.fixture(scope="module")
def setup():
    mesh = cpu_mesh((2, 4), (DATA, MODEL))
    params = init_params(CFG, key=jax.random.key(0))
    lc = LoraConfig(rank=4, targets=LORA_TARGETS)
    # Rank-coded adapters: adapter i has distinct B, so a routing mix-up is visible.
    adapters = [
        (f"a{i}", lc, init_lora(CFG, lc, key=jax.random.key(10 + i), b_std=0.05 * (i + 1)))
        for i in range(2)
    ]
    bank = AdapterBank.build(CFG, adapters)
    ps = param_specs(CFG)
    bspecs = {t: lora_specs(ps["layers"][t], stacked_adapters=True) for t in LORA_TARGETS}
    tokens = (jnp.arange(4 * 6).reshape(4, 6) * 7) % 250
    adapter = jnp.array([0, 1, -1, 1])
    return (
        mesh,
        params,
        bank,
        shard_tree(params, ps, mesh),
        shard_tree(bank.weights, bspecs, mesh),
        tokens,
        adapter,
    )


def test_lora_specs_follow_the_base_weight():
    ps = param_specs(CFG)["layers"]
    # Row-parallel (o/down): A sharded on its input dim like W, B replicated.
    assert lora_specs(ps["down_proj"], stacked_adapters=False) == {
        "A": P(None, MODEL, None),
        "B": P(None, None, None),
    }
    # Column-parallel (q/k/v/gate/up): A replicated, B sharded on its output dim like W.
    assert lora_specs(ps["q_proj"], stacked_adapters=True) == {
        "A": P(None, None, None, None),
        "B": P(None, None, None, MODEL),
    }


def test_tp_multi_lora_forward_equals_single_device(setup):
    mesh, params, bank, pp, bw, tokens, adapter = setup
    out = make_tp_forward(CFG, mesh, LORA_TARGETS)(pp, bw, bank.scales, tokens, adapter)
    for b in range(tokens.shape[0]):
        sel = adapter_sel(bank.scales, jnp.full((6,), adapter[b]))
        ref = forward(CFG, params, tokens[b], lora=bank.weights, sel=sel)
        assert_trees_close(np.asarray(out[b]), ref, kind="forward")
    assert float(jnp.max(jnp.abs(out[0] - out[2]))) > 1e-3  # adapter vs base differ


def test_lora_adds_no_collective(setup):
    mesh, _, bank, pp, bw, tokens, adapter = setup
    base = make_tp_forward(CFG, mesh, None).lower(pp, {}, jnp.zeros(0), tokens, adapter)
    lora = make_tp_forward(CFG, mesh, LORA_TARGETS).lower(pp, bw, bank.scales, tokens, adapter)
    base_counts = count_collectives(base.compile().as_text())
    lora_counts = count_collectives(lora.compile().as_text())
    # The scanned layer body holds the two Megatron all-reduces (after o_proj and down_proj).
    assert base_counts == {"all-reduce": 2}
    assert lora_counts == base_counts


def test_count_collectives_reads_hlo():
    text = (
        "%all-reduce.1 = f32[4]{0} all-reduce(f32[4]{0} %x), replica_groups={}\n"
        "%ag = (f32[2]{0}, f32[8]{0}) all-gather-start(f32[2]{0} %y)\n"
        "%agd = f32[8]{0} all-gather-done((f32[2]{0}, f32[8]{0}) %ag)\n"
    )
    assert count_collectives(text) == {"all-reduce": 1, "all-gather": 1}


def test_indivisible_heads_are_rejected():
    mesh = cpu_mesh((1, 8), (DATA, MODEL))
    with pytest.raises(ConfigError, match=r"LlamaConfig.n_kv_heads=4: not divisible by the model"):
        make_tp_forward(CFG, mesh, None)


@pytest.fixture(scope="module")
def tp_step_setup():
    """Tensor-parallel co-serving step (MODEL=4) and its single-device twin, same inputs."""
    mesh = cpu_mesh((4,), (MODEL,))
    params = init_params(CFG, key=jax.random.key(0))
    lc = LoraConfig(rank=4, targets=LORA_TARGETS)
    lora = init_lora(CFG, lc, key=jax.random.key(1), b_std=0.05)
    bank = AdapterBank.build(
        CFG, [("a", lc, init_lora(CFG, lc, key=jax.random.key(2), b_std=0.05))], capacity=1
    )
    scfg = CoServeConfig(
        token_budget=8, max_requests=2, ft_max_len=16, bwd_chunk=4, page_size=4, max_adapters=1
    )
    return mesh, params, lc, lora, bank, scfg, optax.adam(1e-2)


def _sample_batches(scfg):
    """A mixed forward step (3 inference rows with adapter 0, 5 finetuning rows), then the
    sample's two backward chunks."""
    sample = np.arange(3, 16, dtype=np.int32)
    b = empty_batch(scfg)
    b["page_table"][0, :2] = [0, 1]
    b["tokens"][:3], b["positions"][:3], b["slots"][:3], b["adapters"][:3] = (
        [7, 8, 9],
        [0, 1, 2],
        0,
        0,
    )
    rows = slice(3, 8)
    b["tokens"][rows], b["positions"][rows] = sample[:5], np.arange(5)
    b["is_ft"][rows], b["adapters"][rows], b["labels"][rows] = True, 1, sample[1:6]
    b["loss_scale"] = np.float32(1 / 4)
    out = [StepBatch(**b)]
    for chunk in (1, 0):
        b = empty_batch(scfg)
        b["bwd_chunk"], b["bwd_len"] = np.int32(chunk), np.int32(5)
        b["bwd_first"], b["bwd_last"] = np.bool_(chunk == 1), np.bool_(chunk == 0)
        out.append(StepBatch(**b))
    return out


@pytest.mark.slow  # whole engines; the TP forward and the collective count stay fast
def test_tp_engine_equals_single_device_engine(engine, cfg, params, lora_cfg, bank):
    """The session engine (tiny model) against the same engine tensor-parallel over MODEL=2:
    greedy multi-LoRA outputs, finetuning losses and the trained adapter (SGD with momentum
    over accumulated gradients) agree."""
    tp = CoServeEngine(
        cfg, params, engine.scfg, lora_cfg, optimizer=optax.sgd(0.3, momentum=0.9),
        key=jax.random.key(0), bank=bank, ft_tokens_per_step=6, mesh=cpu_mesh((2,), (MODEL,)),
    )  # fmt: skip
    lora0 = init_lora(cfg, lora_cfg, key=jax.random.key(31), b_std=0.02)
    results = []
    for eng in (engine, tp):
        eng.reset(lora=lora0, key=jax.random.key(0))
        eng.add_finetuning([[256, *range(5, 17)], [256, 9, 8, 7, 6, 5, 4]], epochs=2)
        rids = [
            eng.submit(p, max_new_tokens=5, adapter=a)
            for p, a in (([256, 72, 105], "a"), ([256, 3], None), ([256, 1, 2, 3, 4], "b"))
        ]
        eng.run(max_steps=300)
        results.append(([eng.result(r) for r in rids], eng.losses, eng.trainable_adapter()))
    (ref_out, ref_loss, ref_lora), (tp_out, tp_loss, tp_lora) = results
    assert tp_out == ref_out
    assert_trees_close(np.float32(tp_loss), np.float32(ref_loss), kind="forward")
    assert_trees_close(jax.device_get(tp_lora), ref_lora, kind="gradient")
    assert float(jnp.max(jnp.abs(ref_lora["o_proj"]["B"] - lora0["o_proj"]["B"]))) > 1e-3


def test_coserving_step_adds_no_forward_collective(tp_step_setup):
    mesh, params, lc, lora, bank, scfg, opt = tp_step_setup
    targets = tuple(bank.weights)
    ps, bs, ss = coserve_specs(CFG, scfg, lc, opt, mesh, targets)
    args = (
        shard_tree(params, ps, mesh),
        shard_tree(bank.weights, bs, mesh),
        bank.scales,
        shard_tree(init_state(CFG, scfg, lora, opt, key=jax.random.key(0)), ss, mesh),
        _sample_batches(scfg)[0],
    )
    inference = make_coserve_step(
        CFG, scfg, lc, opt, mesh=mesh, bank_targets=targets, inference_only=True
    )
    counts = count_collectives(inference.lower(*args).compile().as_text())
    base_mesh = cpu_mesh((1, 4), (DATA, MODEL))
    base = make_tp_forward(CFG, base_mesh, None).lower(
        shard_tree(params, ps, base_mesh),
        {},
        jnp.zeros(0),
        jnp.zeros((1, 8), jnp.int32),
        jnp.zeros(1, jnp.int32),
    )
    base_counts = count_collectives(base.compile().as_text())
    # Bank adapters and the trainable adapter on all seven projections ride the two Megatron
    # all-reduces of the base model: the inference step has exactly the base model's count.
    assert counts == base_counts == {"all-reduce": 2}


@pytest.mark.slow  # compiles two engines' steps
def test_tp_layer_level_backward_equals_single_device_token_level(engine, cfg, params, lora_cfg):
    """FlexLLM's layer-level backward (one layer per step) under tensor parallelism gives the
    single-device token-level engine's generations, and the loss curve and trained adapter of
    a plain LoRA training loop (SGD with momentum over 2 accumulated samples, 2 epochs)."""
    import dataclasses

    scfg = dataclasses.replace(engine.scfg, max_adapters=0, backward_mode="layer")
    tp = CoServeEngine(
        cfg, params, scfg, lora_cfg, optimizer=optax.sgd(0.3, momentum=0.9),
        key=jax.random.key(0), ft_tokens_per_step=6, mesh=cpu_mesh((2,), (MODEL,)),
    )  # fmt: skip
    lora0 = init_lora(cfg, lora_cfg, key=jax.random.key(32), b_std=0.02)
    samples = [[256, *range(5, 17)], [256, 9, 8, 7, 6, 5, 4]]
    results = []
    for eng in (engine, tp):
        eng.reset(lora=lora0, key=jax.random.key(0))
        eng.add_finetuning(samples, epochs=2)
        rids = [eng.submit(p, max_new_tokens=5) for p in ([256, 72, 105], [256, 3])]
        reports = eng.run(max_steps=400)
        results.append(([eng.result(r) for r in rids], eng.losses, eng.trainable_adapter()))
    # Two layer groups per sample, top first, some of them beside decode tokens.
    assert [r.bwd_chunk for r in reports if r.bwd_chunk is not None] == [1, 0] * 4
    assert any(r.bwd_chunk is not None and r.decode_tokens for r in reports)
    (ref_out, _, _), (tp_out, tp_loss, tp_lora) = results
    assert tp_out == ref_out
    losses, final = plain_lora_train(
        cfg, params, lora0, lora_cfg, optax.sgd(0.3, momentum=0.9), samples * 2, grad_accum=2
    )
    assert_trees_close(np.float32(tp_loss), np.float32(losses), kind="gradient")
    assert_trees_close(jax.device_get(tp_lora), final, kind="gradient")
    assert losses[-1] < losses[0]  # it learns
    assert float(jnp.max(jnp.abs(final["q_proj"]["B"] - lora0["q_proj"]["B"]))) > 1e-4


def test_pallas_attention_with_a_mesh_is_refused(cfg, lora_cfg):
    scfg = CoServeConfig(attention_impl="pallas", page_size=4)
    with pytest.raises(ConfigError, match=r"attention_impl='pallas': is not supported with a"):
        make_coserve_step(cfg, scfg, lora_cfg, optax.sgd(0.1), mesh=cpu_mesh((2,), (MODEL,)))


def test_tp_forward_with_qkv_biases_equals_single_device():
    # Qwen2's q/k/v biases are column-parallel like their weights: each device adds its slice.
    cfg = LlamaConfig.tiny(n_heads=8, n_kv_heads=4, head_dim=8, qkv_bias=True)
    mesh = cpu_mesh((2, 4), (DATA, MODEL))
    params = init_params(cfg, key=jax.random.key(3))
    assert param_specs(cfg)["layers"]["q_bias"] == P(None, MODEL)
    pp = shard_tree(params, param_specs(cfg), mesh)
    tokens = (jnp.arange(2 * 6).reshape(2, 6) * 5) % 250
    out = make_tp_forward(cfg, mesh, None)(pp, {}, jnp.zeros(0), tokens, jnp.array([-1, -1]))
    for b in range(tokens.shape[0]):
        assert_trees_close(np.asarray(out[b]), forward(cfg, params, tokens[b]), kind="forward")
