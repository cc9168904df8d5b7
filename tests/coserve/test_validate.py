"""Hardened engine inputs (issue #16 step 4): each bad input gives a `ConfigError` that names the
leaf or field, on the host, instead of a wrong result or an error deep inside a trace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import AdapterBank, LlamaConfig, LoraConfig, init_lora, init_params, merge_lora
from jgraph.coserve.reference import plain_lora_train, sample_loss_reference
from jgraph.coserve.validate import check_adapter, check_params, check_prompt, check_token_samples

V = 260  # LlamaConfig.tiny().vocab_size


# -- adapters ----------------------------------------------------------------------------------
def test_rank_mismatched_adapter_is_refused_with_the_rank(cfg, lora_cfg, lora):
    check_adapter(cfg, lora_cfg, lora)  # the matching config passes
    wrong = LoraConfig(rank=8, alpha=lora_cfg.alpha, targets=lora_cfg.targets)
    with pytest.raises(ConfigError, match=r"q_proj\.A rank=4: != LoraConfig.rank=8") as e:
        check_adapter(cfg, wrong, lora, name="trainable")
    assert e.value.field == "trainable.q_proj.A rank"
    assert "alpha/8, not alpha/4" in e.value.problem
    assert "LoraConfig(rank=4" in e.value.fix


def test_adapter_targets_shapes_and_dtype_are_checked(cfg, lora_cfg, lora):
    qv = LoraConfig(rank=4, targets=("q_proj", "v_proj"))
    with pytest.raises(ConfigError, match=r"lora targets=.*!= LoraConfig.targets"):
        check_adapter(cfg, qv, lora)
    other = init_lora(LlamaConfig.tiny(d_ff=96), lora_cfg, key=jax.random.key(0))
    with pytest.raises(
        ConfigError, match=r"lora\.gate_proj\.B=\(2, 4, 96\): shape != \(2, r, 128\)"
    ):
        check_adapter(cfg, lora_cfg, other)
    ints = {**lora, "k_proj": {**lora["k_proj"], "B": jnp.zeros((2, 4, 32), jnp.int32)}}
    with pytest.raises(ConfigError, match=r"lora\.k_proj\.B='int32': must hold floating-point"):
        check_adapter(cfg, lora_cfg, ints)
    uneven = {**lora, "q_proj": {**lora["q_proj"], "B": lora["q_proj"]["B"][:, :2]}}
    with pytest.raises(ConfigError, match=r"A and B ranks differ"):
        check_adapter(cfg, lora_cfg, uneven)


def test_bank_build_names_the_mismatched_adapter_and_target(cfg, lora_cfg, lora):
    small_cfg = LoraConfig(rank=2, targets=("q_proj",))
    small = init_lora(cfg, small_cfg, key=jax.random.key(3))
    # Weights of rank 2 declared as rank 4: used to be a bare numpy broadcast error.
    declared4 = LoraConfig(rank=4, targets=("q_proj",))
    with pytest.raises(ConfigError, match=r"adapter 'b'\.q_proj\.A rank=2: != LoraConfig.rank=4"):
        AdapterBank.build(cfg, [("a", lora_cfg, lora), ("b", declared4, small)])
    other = init_lora(LlamaConfig.tiny(d_model=32, n_heads=2, head_dim=16), small_cfg,
                      key=jax.random.key(4))  # fmt: skip
    with pytest.raises(ConfigError, match=r"adapter 'c'\.q_proj\.A=\(2, 32, 2\): shape"):
        AdapterBank.build(cfg, [("c", small_cfg, other)])
    bank = AdapterBank.build(cfg, [("a", lora_cfg, lora), ("b", small_cfg, small)])
    assert bank.weights["q_proj"]["A"].shape[-1] == 4  # mixed ranks still build when declared


def test_merge_lora_refuses_a_rank_mismatch(cfg, params, lora_cfg, lora):
    with pytest.raises(ConfigError, match=r"merge_lora adapter\.q_proj\.A rank"):
        merge_lora(cfg, params, lora, LoraConfig(rank=2, targets=lora_cfg.targets))


# -- base weights ------------------------------------------------------------------------------
def test_params_for_another_config_name_the_leaf(cfg, params):
    check_params(cfg, params)  # the right config passes
    cases = {
        "d_model=96": (LlamaConfig.tiny(d_model=96), r"params\.embed=\(260, 64\): shape != \(260, 96\) \(axis 1 is d_model=96"),
        "vocab": (LlamaConfig.tiny(vocab_size=300), r"params\.embed=\(260, 64\).*axis 0 is vocab_size=300"),
        "n_layers": (LlamaConfig.tiny(n_layers=3), r"params\.layers\.down_proj=\(2, 128, 64\).*axis 0 is n_layers=3"),
        "kv heads": (LlamaConfig.tiny(n_kv_heads=4), r"params\.layers\.k_proj=\(2, 64, 32\).*axis 2 is .*n_kv_heads\*head_dim=64"),
        "tied": (LlamaConfig.tiny(tie_embeddings=True), r"params\.lm_head='present'.*tie_embeddings=True has no lm_head"),
        "qkv bias": (LlamaConfig.tiny(qkv_bias=True), r"params\.layers\.k_bias=None: is missing \(3 missing\)"),
    }  # fmt: skip
    for other, pattern in cases.values():
        with pytest.raises(ConfigError, match=pattern):
            check_params(other, params)


def test_params_leaf_types_are_checked(cfg, params):
    ints = {**params, "final_norm": np.ones(cfg.d_model, np.int32)}
    with pytest.raises(ConfigError, match=r"params\.final_norm='int32': must hold floating-point"):
        check_params(cfg, ints)
    with pytest.raises(ConfigError, match=r"params\.final_norm='list': is not an array"):
        check_params(cfg, {**params, "final_norm": [1.0] * cfg.d_model})
    with pytest.raises(ConfigError, match=r"params='list': must be a dict"):
        check_params(cfg, [params])
    abstract = jax.eval_shape(lambda: init_params(cfg, key=jax.random.key(0)))
    check_params(cfg, abstract)  # shape-only trees (ShapeDtypeStruct) pass


# -- token ids ---------------------------------------------------------------------------------
def test_float_token_ids_are_refused_not_truncated():
    with pytest.raises(ConfigError, match=r"samples\[0\]\[1\]=3\.0: is a float.*not truncated"):
        check_token_samples([[1, 3.0, 4]], vocab_size=V)
    with pytest.raises(ConfigError, match=r"samples\[1\]='float32': a sample must hold integer"):
        check_token_samples([[1, 2], np.array([1.0, 2.0], np.float32)], vocab_size=V)
    with pytest.raises(ConfigError, match=r"samples\[0\]\[0\]=True: is a bool"):
        check_token_samples([[True, 2]], vocab_size=V)


def test_strings_none_and_wrong_nesting_are_refused():
    with pytest.raises(
        ConfigError, match=r"samples\[0\]='hello': a sample must be token ids, not str"
    ):
        check_token_samples(["hello"], vocab_size=V)
    with pytest.raises(ConfigError, match=r"samples='hi there': must be a list of samples"):
        check_token_samples("hi there", vocab_size=V)
    with pytest.raises(ConfigError, match=r"samples=None"):
        check_token_samples(None, vocab_size=V)
    with pytest.raises(ConfigError, match=r"one flat list of ids.*pass a list of samples"):
        check_token_samples([1, 2, 3], vocab_size=V)
    with pytest.raises(
        ConfigError, match=r"an array of samples must be 2-D.*pass a list of samples"
    ):
        check_token_samples(np.arange(4), vocab_size=V)
    with pytest.raises(
        ConfigError, match=r"samples\[0\]\[1\]=\[2, 3\]: is nested one level too deep"
    ):
        check_token_samples([[1, [2, 3]]], vocab_size=V)
    with pytest.raises(ConfigError, match=r"samples\[0\]=None"):
        check_token_samples([None], vocab_size=V)  # fmt: skip


def test_ids_and_lengths_are_bounded():
    with pytest.raises(
        ConfigError, match=r"samples\[1\]\[2\]=260: is outside the vocabulary \[0, 260\)"
    ):
        check_token_samples([[1, 2], [1, 2, 260]], vocab_size=V)
    with pytest.raises(ConfigError, match=r"samples\[0\]\[0\]=-1: is outside"):
        check_token_samples([np.array([-1, 2])], vocab_size=V)
    with pytest.raises(ConfigError, match=r"samples\[0\] length=1: must be between 2 and 16"):
        check_token_samples([[5]], vocab_size=V, max_len=16)
    with pytest.raises(ConfigError, match=r"ft\[0\] length=17: must be between 2 and 16"):
        check_token_samples([list(range(17))], vocab_size=V, max_len=16, field="ft")


def test_accepted_samples_come_back_as_python_ints():
    got = check_token_samples(
        [(1, np.int64(2)), np.array([3, 4], np.uint8), jnp.array([5, 6])], vocab_size=V
    )
    assert got == [[1, 2], [3, 4], [5, 6]]
    assert all(type(t) is int for s in got for t in s)
    assert check_token_samples(np.array([[1, 2], [3, 4]]), vocab_size=V) == [[1, 2], [3, 4]]
    assert check_token_samples([], vocab_size=V) == []


def test_prompt_rules():
    assert check_prompt(np.array([256, 7]), vocab_size=V, max_len=4) == [256, 7]
    with pytest.raises(
        ConfigError, match=r"prompt='hi': a prompt must be token ids, not str.*tokenize"
    ):
        check_prompt("hi", vocab_size=V)
    with pytest.raises(ConfigError, match=r"prompt\[0\]=\[1, 2\]: is nested"):
        check_prompt([[1, 2]], vocab_size=V)
    with pytest.raises(ConfigError, match=r"prompt\[1\]=2\.0: is a float"):
        check_prompt([1, 2.0], vocab_size=V)
    with pytest.raises(ConfigError, match=r"prompt length=0: must be between 1 and 4"):
        check_prompt([], vocab_size=V, max_len=4)
    with pytest.raises(ConfigError, match=r"prompt length=5"):
        check_prompt([1] * 5, vocab_size=V, max_len=4)
    with pytest.raises(ConfigError, match=r"prompt\[0\]=999: is outside"):
        check_prompt([999], vocab_size=V)  # fmt: skip


# -- sample_loss_reference ---------------------------------------------------------------------
def test_sample_loss_reference_refuses_bad_samples(cfg, params, lora_cfg, lora):
    def loss(tokens, length=None):
        return sample_loss_reference(cfg, params, lora, lora_cfg, tokens, length)

    assert np.isfinite(float(loss(jnp.array([1, 2, 3]))))  # a good sample has a finite loss
    with pytest.raises(ConfigError, match=r"tokens\[1\]=260: is outside the vocabulary"):
        loss(jnp.array([1, 260, 3]))  # used to be NaN
    with pytest.raises(ConfigError, match=r"tokens=\(1,\): must be 1-D with >= 2 tokens"):
        loss(jnp.array([5]))  # used to be NaN
    with pytest.raises(ConfigError, match=r"tokens=\(0,\)"):
        loss(jnp.zeros((0,), jnp.int32))  # used to divide by zero
    with pytest.raises(ConfigError, match=r"length=1: must be between 2 and tokens.shape\[0\]=4"):
        loss(jnp.array([1, 2, 0, 0]), 1)
    with pytest.raises(ConfigError, match=r"tokens='float32': must hold integer ids"):
        loss(jnp.array([1.0, 2.0]))
    # Padding past `length` is not checked (it is not part of the sample).
    assert np.isfinite(float(loss(jnp.array([1, 2, 999]), 2)))


def test_plain_lora_train_validates_before_tracing(cfg, params, lora_cfg, lora):
    import optax

    with pytest.raises(ConfigError, match=r"samples\[1\] length=1"):
        plain_lora_train(cfg, params, lora, lora_cfg, optax.sgd(0.1), [[1, 2, 3], [4]])
    with pytest.raises(ConfigError, match=r"samples=\[\]: is empty"):
        plain_lora_train(cfg, params, lora, lora_cfg, optax.sgd(0.1), [])
