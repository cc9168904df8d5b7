"""The model against an independent float64 numpy Llama, the Flax wrapper, checkpoints and
tokenizers."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jgraph.core import ConfigError
from jgraph.coserve import LlamaConfig, init_params
from jgraph.coserve._model import _inv_freq
from jgraph.coserve.checkpoint import (
    ByteTokenizer,
    HFTokenizer,
    load_hf_checkpoint,
    save_hf_checkpoint,
)
from jgraph.coserve.model import LlamaModel, forward
from jgraph.testing import assert_trees_close


def _np_llama(cfg, p, tokens):
    """Llama written from the paper/HF description in float64 numpy (no code shared)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    T, d = len(tokens), cfg.head_dim
    G = cfg.n_heads // cfg.n_kv_heads

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * w

    inv = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2) / d)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    x = p["embed"][tokens]
    L = p["layers"]
    for i in range(cfg.n_layers):
        h = norm(x, L["input_norm"][i])
        q = rope((h @ L["q_proj"][i]).reshape(T, cfg.n_heads, d))
        k = np.repeat(rope((h @ L["k_proj"][i]).reshape(T, cfg.n_kv_heads, d)), G, axis=1)
        v = np.repeat((h @ L["v_proj"][i]).reshape(T, cfg.n_kv_heads, d), G, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(d)
        s = np.where(np.tril(np.ones((T, T), bool))[None], s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", a, v).reshape(T, -1) @ L["o_proj"][i]
        h = norm(x, L["post_norm"][i])
        g = h @ L["gate_proj"][i]
        x = x + (g / (1 + np.exp(-g)) * (h @ L["up_proj"][i])) @ L["down_proj"][i]
    return norm(x, p["final_norm"]) @ p["lm_head"]


def test_forward_matches_numpy_float64_llama(cfg):
    # The default init keeps float32 round-off inside the forward tolerance (at 3x the logits
    # reach ~5 and round-off ~3e-6 exceeds atol on near-zero entries); the negative check
    # below shows RoPE still matters at this scale.
    params = init_params(cfg, key=jax.random.key(3))
    tokens = np.array([256, 5, 77, 3, 200, 9, 9, 100], np.int32)
    ours = forward(cfg, params, jnp.asarray(tokens))
    ref = _np_llama(cfg, params, tokens)
    assert float(np.std(ref)) > 0.01  # not a degenerate comparison
    # float32 result vs float64 oracle: the float32 forward tolerance applies.
    assert_trees_close(np.asarray(ours), ref, kind="forward")
    # Negative check: a model without RoPE is visibly different.
    no_rope = _np_llama(LlamaConfig.tiny(rope_theta=1e30), params, tokens)
    assert np.abs(no_rope - ref).max() > 1e-3


def test_flax_module_is_the_functional_model(cfg):
    m = LlamaModel(cfg=cfg)
    tokens = jnp.arange(6)
    variables = m.init(jax.random.key(0), tokens)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), variables["params"]["model"])
    assert shapes == jax.tree.map(
        lambda a: (a.shape, a.dtype), init_params(cfg, key=jax.random.key(0))
    )
    assert_trees_close(
        m.apply(variables, tokens), forward(cfg, variables["params"]["model"], tokens), kind="exact"
    )


def test_llama3_rope_scaling_formula():
    cfg = LlamaConfig.llama31_8b()
    inv = _inv_freq(cfg)
    base = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    wavelen = 2 * np.pi / base
    # Short wavelengths untouched, long ones divided by the factor (transformers' llama3 rule).
    assert np.allclose(inv[wavelen < 8192 / 4], base[wavelen < 8192 / 4])
    assert np.allclose(inv[wavelen > 8192], base[wavelen > 8192] / 8.0)
    mid = (wavelen >= 8192 / 4) & (wavelen <= 8192)
    assert mid.any()
    assert np.all(inv[mid] < base[mid])
    assert np.all(inv[mid] > base[mid] / 8.0)


def test_dynamic_ntk_rope_tables():
    from jgraph.coserve._model import rope_tables

    cfg = LlamaConfig.tiny(rope_scaling_factor=2.0, rope_scaling_type="dynamic",
                           rope_original_max_len=8)  # fmt: skip
    plain = LlamaConfig.tiny()
    d = cfg.head_dim

    def numpy_tables(n, length):  # float64 transcription of transformers' dynamic NTK rule
        length = max(length, 8)
        base = cfg.rope_theta * (2.0 * length / 8 - 1.0) ** (d / (d - 2))
        ang = np.arange(n)[:, None] / base ** (np.arange(0, d, 2) / d)[None, :]
        return np.cos(ang), np.sin(ang)

    # within max_position_embeddings: plain RoPE (to rounding: the dynamic frequencies are
    # computed in float32, as transformers does, the plain ones in float64 then cast)
    short = jnp.arange(6)
    assert_trees_close(rope_tables(cfg, short), rope_tables(plain, short), kind="forward")
    # a longer sequence: every token rotated for the whole length (the default), and a packed
    # batch of two sequences (12 and 5 tokens) with explicit lengths equals them one by one
    a, b = jnp.arange(12), jnp.arange(5)
    want_a = numpy_tables(12, 12)
    assert_trees_close(rope_tables(cfg, a), want_a, kind="forward")
    packed = rope_tables(cfg, jnp.concatenate([a, b]), jnp.array([12] * 12 + [5] * 5))
    want_b = numpy_tables(5, 5)
    want = tuple(np.concatenate([x, y]) for x, y in zip(want_a, want_b, strict=True))
    assert_trees_close(packed, want, kind="forward")
    # negative: the plain tables differ from the scaled ones past the first position
    assert not np.allclose(np.asarray(rope_tables(plain, a)[0]), want_a[0], atol=1e-3)


def test_dynamic_rope_needs_head_dim_above_two():
    with pytest.raises(ConfigError, match="head_dim"):
        LlamaConfig(vocab_size=8, d_model=4, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=2,
                    d_ff=8, rope_scaling_factor=2.0, rope_scaling_type="dynamic")  # fmt: skip


def test_hf_checkpoint_round_trip(tmp_path, cfg, params):
    save_hf_checkpoint(tmp_path, cfg, params)
    # The file is readable by the reference safetensors implementation, in HF's [out, in] layout.
    ref = safetensors.numpy.load_file(tmp_path / "model.safetensors")
    assert ref["model.layers.1.self_attn.q_proj.weight"].shape == (cfg.q_dim, cfg.d_model)
    np.testing.assert_array_equal(
        ref["model.layers.1.mlp.down_proj.weight"], np.asarray(params["layers"]["down_proj"][1]).T
    )
    cfg2, params2 = load_hf_checkpoint(tmp_path)
    assert cfg2 == cfg
    assert_trees_close(params2, params, kind="exact")


def test_hf_checkpoint_bf16_and_tied(tmp_path):
    cfg = LlamaConfig.tiny(dtype="bfloat16", tie_embeddings=True)
    params = init_params(cfg, key=jax.random.key(5))
    assert "lm_head" not in params
    save_hf_checkpoint(tmp_path, cfg, params)
    cfg2, params2 = load_hf_checkpoint(tmp_path)
    assert cfg2.tie_embeddings
    assert cfg2.dtype == "bfloat16"
    assert_trees_close(params2, params, kind="exact")


def test_mismatched_checkpoint_names_the_tensor(tmp_path, cfg, params):
    save_hf_checkpoint(tmp_path, cfg, params)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(
        ConfigError, match=r"model.layers.0.mlp.gate_proj.weight=\(128, 64\): shape does not match"
    ):
        load_hf_checkpoint(tmp_path)


def test_checkpoint_missing_files(tmp_path):
    with pytest.raises(ConfigError, match=r"needs config.json and \*.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_byte_tokenizer():
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids[0] == tok.bos_id
    assert all(0 <= i < 256 for i in ids[1:])
    assert tok.decode([*ids, tok.eos_id]) == "héllo"


def test_hf_tokenizer_from_local_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"])
    t.train_from_iterator(["the cat sat on the mat", "the dog sat"] * 20, trainer)
    t.save(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer(tmp_path)
    assert tok.bos_id == 1
    assert tok.eos_id == 2
    ids = tok.encode("the cat sat")
    assert ids[0] == 1
    assert len(ids) >= 4
    assert tok.decode(ids).replace(" ", "") == "thecatsat"
    with pytest.raises(ConfigError, match="not in vocabulary"):
        HFTokenizer(tmp_path, bos_token="<bos>")
    with pytest.raises(ConfigError, match="not found"):
        HFTokenizer(tmp_path / "nope")


def test_every_named_model_shape_builds():
    from jgraph.coserve import LlamaConfig
    from jgraph.coserve.model import MODEL_PRESETS

    for name in MODEL_PRESETS:
        assert LlamaConfig.preset(name) == getattr(LlamaConfig, name)()
    assert LlamaConfig.preset("tiny", n_layers=3).n_layers == 3
    with pytest.raises(ConfigError, match=r"LlamaConfig\.preset"):
        LlamaConfig.preset("huge")


def test_hf_tokenizer_reads_tokenizer_config(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=specials)
    t.train_from_iterator(["the cat sat on the mat"] * 20, trainer)
    t.save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": None, "eos_token": {"content": "<|im_end|>"},
                    "chat_template": [{"name": "default", "template": template}]})
    )  # fmt: skip
    tok = HFTokenizer(tmp_path)
    # the config's EOS (Qwen-style <|im_end|>), not the </s> the vocabulary also has
    assert tok.eos_id == 4
    assert tok.chat_template == template
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"tokenizer_config\.json"):
        HFTokenizer(tmp_path)
