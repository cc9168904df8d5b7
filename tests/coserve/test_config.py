import pytest

from jgraph.core import ConfigError
from jgraph.coserve import CoServeConfig, LlamaConfig, LoraConfig


def test_presets_shapes():
    big = LlamaConfig.llama31_8b()
    assert (big.n_layers, big.d_model, big.n_kv_heads, big.d_ff) == (32, 4096, 8, 14336)
    # 8.03B parameters is the published size of Llama-3.1-8B.
    assert abs(big.param_count() / 1e9 - 8.03) < 0.01
    assert LlamaConfig.tiny().proj_shape("down_proj") == (128, 64)


def test_lora_rank_zero_is_rejected():
    with pytest.raises(ConfigError, match=r"LoraConfig.rank=0: must be >= 1"):
        LoraConfig(rank=0)


def test_lora_bad_targets():
    with pytest.raises(ConfigError, match=r"LoraConfig.targets='attn'.*not one of"):
        LoraConfig(targets=("attn",))
    with pytest.raises(ConfigError, match=r"non-empty tuple"):
        LoraConfig(targets="q_proj")
    with pytest.raises(ConfigError, match=r"lists a target twice"):
        LoraConfig(targets=("q_proj", "q_proj"))


def test_llama_config_checks():
    with pytest.raises(ConfigError, match=r"LlamaConfig.n_kv_heads=3: must divide n_heads=4"):
        LlamaConfig.tiny(n_kv_heads=3)
    with pytest.raises(ConfigError, match=r"LlamaConfig.head_dim=15: RoPE needs an even"):
        LlamaConfig.tiny(head_dim=15)
    with pytest.raises(ConfigError, match=r"LlamaConfig.dtype='int8'"):
        LlamaConfig.tiny(dtype="int8")


def test_coserve_config_checks():
    # bwd_chunk need not divide ft_max_len: the buffers round up to whole chunks
    partial = CoServeConfig(ft_max_len=16, bwd_chunk=3)
    assert (partial.n_bwd_chunks, partial.ft_buffer_len) == (6, 18)
    assert (CoServeConfig(ft_max_len=16, bwd_chunk=4).ft_buffer_len) == 16
    with pytest.raises(ConfigError, match=r"CoServeConfig.bwd_chunk=32: must be <= 16"):
        CoServeConfig(ft_max_len=16, bwd_chunk=32)
    with pytest.raises(ConfigError, match=r"CoServeConfig.token_budget=0"):
        CoServeConfig(token_budget=0)
    assert CoServeConfig(page_size=4, max_pages_per_request=3).max_request_len == 12


def test_lora_targets_list_becomes_a_hashable_tuple():
    c = LoraConfig(targets=["q_proj", "down_proj"])
    assert c.targets == ("q_proj", "down_proj")
    assert hash(c) == hash(LoraConfig(targets=("q_proj", "down_proj")))
