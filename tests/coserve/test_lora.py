"""LoRA: multi-adapter batches, merging, the PEFT layout, and bank errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jgraph.core import ConfigError
from jgraph.coserve import AdapterBank, LoraConfig, init_lora, merge_lora
from jgraph.coserve.checkpoint import load_peft, save_peft
from jgraph.coserve.model import BASE, adapter_sel, forward
from jgraph.testing import assert_trees_close

TOKENS = jnp.array([256, 10, 20, 30, 40, 50], jnp.int32)


def _single(cfg, params, lora, lc, tokens=TOKENS):
    sel = jnp.full((tokens.shape[0], 1), lc.scale, jnp.float32)
    return forward(cfg, params, tokens, lora=jax.tree.map(lambda a: a[None], lora), sel=sel)


@pytest.fixture(scope="module")
def bank_parts(cfg, lora_cfg, lora):
    small_cfg = LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "down_proj"))
    small = init_lora(cfg, small_cfg, key=jax.random.key(7), b_std=0.1)
    return [("all", lora_cfg, lora), ("small", small_cfg, small)]


def test_multi_lora_batch_equals_per_adapter_runs(cfg, params, bank_parts):
    bank = AdapterBank.build(cfg, bank_parts, capacity=3)  # one empty slot
    assert bank.weights["q_proj"]["A"].shape == (3, cfg.n_layers, cfg.d_model, 4)
    seqs = jnp.stack([TOKENS, TOKENS[::-1], TOKENS + 1])
    idx = jnp.array([0, 1, BASE])

    def one(toks, i):
        sel = adapter_sel(bank.scales, jnp.full(toks.shape, i))
        return forward(cfg, params, toks, lora=bank.weights, sel=sel)

    batched = jax.vmap(one)(seqs, idx)
    expected = [
        _single(cfg, params, bank_parts[0][2], bank_parts[0][1], seqs[0]),
        _single(cfg, params, bank_parts[1][2], bank_parts[1][1], seqs[1]),
        forward(cfg, params, seqs[2]),
    ]
    for got, want in zip(batched, expected, strict=True):
        assert_trees_close(got, want, kind="forward")
    # Negative check: an adapter really changes the output.
    base0 = forward(cfg, params, seqs[0])
    assert float(jnp.max(jnp.abs(batched[0] - base0))) > 1e-3


def test_merged_weights_equal_adapter_output(cfg, params, lora_cfg, lora):
    merged = merge_lora(cfg, params, lora, lora_cfg)
    adapted = _single(cfg, params, lora, lora_cfg)
    assert_trees_close(forward(cfg, merged, TOKENS), adapted, kind="forward")
    assert float(jnp.max(jnp.abs(adapted - forward(cfg, params, TOKENS)))) > 1e-3


def test_zero_b_adapter_is_the_base_model(cfg, params, lora_cfg):
    fresh = init_lora(cfg, lora_cfg, key=jax.random.key(4))
    # Bit-exact on CPU; on GPU XLA fuses the (zero) LoRA add into a different matmul kernel
    # (seen: 1.5e-7 abs on an H200), so the comparison is "same math, different kernel".
    assert_trees_close(
        _single(cfg, params, fresh, lora_cfg), forward(cfg, params, TOKENS), kind="forward"
    )


def test_peft_round_trip(tmp_path, cfg, lora_cfg, lora):
    save_peft(tmp_path, lora, lora_cfg, base_model="tiny")
    raw = safetensors.numpy.load_file(tmp_path / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"
    assert raw[key].shape == (lora_cfg.rank, cfg.d_ff)  # PEFT's [r, in]
    lc2, lora2 = load_peft(tmp_path, cfg)
    assert lc2 == lora_cfg
    assert_trees_close(lora2, lora, kind="exact")


def test_peft_load_into_wrong_model_fails(tmp_path, cfg, lora_cfg, lora):
    save_peft(tmp_path, lora, lora_cfg)
    bigger = cfg.__class__.tiny(n_layers=3)
    with pytest.raises(ConfigError, match=r"layers.2.*tensor missing"):
        load_peft(tmp_path, bigger)
    wider = cfg.__class__.tiny(d_ff=96)
    with pytest.raises(ConfigError, match=r"A/B shapes do not fit the model"):
        load_peft(tmp_path, wider)


def test_unknown_adapter_and_bank_limits(cfg, bank_parts):
    bank = AdapterBank.build(cfg, bank_parts)
    assert bank.index("small") == 1
    assert bank.index(None) == BASE
    with pytest.raises(ConfigError, match=r"adapter='nope': is not loaded in the bank"):
        bank.index("nope")
    with pytest.raises(ConfigError, match=r"capacity=1: < 2 adapters"):
        AdapterBank.build(cfg, bank_parts, capacity=1)
    with pytest.raises(ConfigError, match=r"rank=4: exceeds bank rank 2"):
        AdapterBank.build(cfg, bank_parts, rank=2)


def test_bank_zero_pads_ranks_exactly(cfg, params, bank_parts):
    bank = AdapterBank.build(cfg, bank_parts)
    a = np.asarray(bank.weights["q_proj"]["A"][1])
    assert np.all(a[..., 2:] == 0)
    assert np.any(a[..., :2] != 0)
    assert np.all(np.asarray(bank.weights["k_proj"]["B"][1]) == 0)  # target absent in "small"
