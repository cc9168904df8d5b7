"""Hugging Face configs of both transformers layouts, and checkpoint files: what loads and
what is refused (issue #15: several real checkpoints used to load silently with wrong math)."""

import dataclasses
import json

import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.coserve import LlamaConfig
from jgraph.coserve._safetensors import read_safetensors, write_safetensors
from jgraph.coserve.checkpoint import config_from_hf, load_hf_checkpoint, save_hf_checkpoint
from jgraph.testing import assert_trees_close

_LLAMA3 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _base(**extra):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 260,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "rms_norm_eps": 1e-5,
        **extra,
    }


def test_transformers5_layout_reads_rope_parameters_and_dtype():
    v4 = config_from_hf(
        _base(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", **_LLAMA3},
              torch_dtype="bfloat16")
    )  # fmt: skip
    v5 = config_from_hf(
        _base(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **_LLAMA3},
              dtype="bfloat16")
    )  # fmt: skip
    assert v5 == v4
    # the values that used to be dropped: theta 10000 and no scaling, float32
    assert v5.rope_theta == 500000.0
    assert v5.rope_scaling_factor == 8.0
    assert v5.dtype == "bfloat16"


def test_defaults_are_transformers_defaults():
    hf = _base()
    del hf["rms_norm_eps"]
    cfg = config_from_hf(hf)
    assert cfg.norm_eps == 1e-6  # transformers' LlamaConfig default (not 1e-5)
    assert cfg.rope_theta == 10000.0
    assert cfg.rope_scaling_factor is None
    assert cfg.dtype == "float32"
    assert not cfg.tie_embeddings
    assert cfg.head_dim == 16
    assert config_from_hf(_base(head_dim=32)).head_dim == 32
    assert config_from_hf(_base(rope_parameters={"rope_type": "default"})).rope_theta == 10000.0


def test_qwen2_is_llama_with_qkv_biases():
    hf = {**_base(use_sliding_window=False, sliding_window=4096), "model_type": "qwen2"}
    hf["architectures"] = ["Qwen2ForCausalLM"]
    cfg = config_from_hf(hf)
    assert cfg.qkv_bias
    assert cfg == dataclasses.replace(config_from_hf(_base()), qkv_bias=True)


def test_qkv_biases_round_trip_and_change_the_output(tmp_path):
    import jax
    import jax.numpy as jnp

    from jgraph.coserve import init_params
    from jgraph.coserve.model import forward

    cfg = LlamaConfig.tiny(qkv_bias=True)
    params = init_params(cfg, key=jax.random.key(2))
    assert params["layers"]["k_bias"].shape == (cfg.n_layers, cfg.n_kv_heads * cfg.head_dim)
    save_hf_checkpoint(tmp_path, cfg, params)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen2"
    cfg2, params2 = load_hf_checkpoint(tmp_path)
    assert cfg2 == cfg
    assert_trees_close(params2, params, kind="exact")
    # negative check: the biases are used (dropping them changes the logits)
    no_bias = {**params, "layers": {k: v for k, v in params["layers"].items()
                                    if not k.endswith("_bias")}}  # fmt: skip
    ids = jnp.arange(6)
    assert not np.allclose(forward(cfg, params, ids), forward(cfg, no_bias, ids))


def test_mistral_without_a_short_window_is_llama():
    mistral = {**_base(sliding_window=None), "model_type": "mistral"}
    mistral["architectures"] = ["MistralForCausalLM"]
    assert config_from_hf(mistral) == config_from_hf(_base())
    covering = {**mistral, "sliding_window": 4096, "max_position_embeddings": 4096}
    assert config_from_hf(covering) == config_from_hf(_base())


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope_scaling.rope_type"),
        ({"rope_scaling": {"type": "longrope", "factor": 2.0}}, "rope_scaling.rope_type"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters.rope_type"),
        ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "rope_parameters"),
        ({"rope_scaling": {"rope_type": "llama3"}}, "rope_scaling.factor"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"model_type": "gemma"}, "model_type"),
        (
            {
                "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"],
                "use_sliding_window": True,
                "sliding_window": 32,
                "max_position_embeddings": 64,
            },
            "sliding_window",
        ),
        ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
        ({"torch_dtype": "int8"}, "dtype"),
    ],
)
def test_math_changing_keys_are_refused_by_name(extra, key):
    with pytest.raises(ConfigError, match=rf"config\.json {key}="):
        config_from_hf(_base(**extra))


def test_missing_model_type_is_not_taken_as_llama():
    hf = _base()
    del hf["model_type"]
    assert config_from_hf(hf) == config_from_hf(_base())  # architectures says Llama
    del hf["architectures"]
    with pytest.raises(ConfigError, match=r"config\.json model_type=None"):
        config_from_hf(hf)


def test_mistral_with_a_short_sliding_window_is_refused():
    hf = {**_base(sliding_window=4096, max_position_embeddings=32768), "model_type": "mistral"}
    hf["architectures"] = ["MistralForCausalLM"]
    with pytest.raises(ConfigError, match=r"sliding_window=4096: is shorter"):
        config_from_hf(hf)


# -- checkpoint files ---------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path, params):
    cfg = LlamaConfig.tiny()
    save_hf_checkpoint(tmp_path, cfg, params)
    return tmp_path


def _shard(directory):
    """Splits model.safetensors into two shards with an index, as transformers does."""
    tensors, meta = read_safetensors(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    parts = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for file, part in parts.items():
        write_safetensors(directory / file, {n: tensors[n] for n in part}, meta)
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return weight_map


def test_sharded_checkpoint_loads_like_one_file(saved, params):
    _shard(saved)
    cfg, loaded = load_hf_checkpoint(saved)
    assert cfg == LlamaConfig.tiny()
    assert_trees_close(loaded, params, kind="exact")


def test_missing_shard_is_named(saved):
    _shard(saved)
    (saved / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"index\.json=\['model-00002-of-00002\.safetensors'\]"):
        load_hf_checkpoint(saved)


def test_index_entry_missing_from_its_shard_is_named(saved):
    weight_map = _shard(saved)
    name = next(n for n, f in weight_map.items() if f.startswith("model-00001"))
    index = json.loads((saved / "model.safetensors.index.json").read_text())
    index["weight_map"][name] = "model-00002-of-00002.safetensors"
    (saved / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=rf"{name}=.*not found in model-00002"):
        load_hf_checkpoint(saved)


def test_truncated_safetensors_names_file_and_tensor(saved):
    path = saved / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ConfigError, match=r"model\.safetensors:[\w.]+=.*truncated or corrupt"):
        load_hf_checkpoint(saved)


def test_bias_tensors_are_refused_not_dropped(saved):
    tensors, meta = read_safetensors(saved / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    write_safetensors(saved / "model.safetensors", tensors, meta)
    with pytest.raises(ConfigError, match=r"q_proj\.bias=.*biases are not implemented"):
        load_hf_checkpoint(saved)


def test_buffers_transformers_ignores_are_ignored(saved, params):
    tensors, meta = read_safetensors(saved / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    write_safetensors(saved / "model.safetensors", tensors, meta)
    _, loaded = load_hf_checkpoint(saved)
    assert_trees_close(loaded, params, kind="exact")


@pytest.mark.parametrize("kind", ["linear", "llama3", "dynamic"])
def test_rope_scaling_round_trips_through_save(tmp_path, kind):
    import jax

    from jgraph.coserve import init_params

    cfg = LlamaConfig.tiny(rope_scaling_factor=4.0, rope_scaling_type=kind)
    save_hf_checkpoint(tmp_path, cfg, init_params(cfg, key=jax.random.key(1)))
    assert load_hf_checkpoint(tmp_path)[0] == cfg
