"""PEFT adapter options: rsLoRA loads with its own scale, ``all-linear`` and regex targets
resolve, and every option whose math is not implemented is refused naming its key."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jgraph.core import ConfigError
from jgraph.coserve import AdapterBank, LoraConfig, init_lora, merge_lora
from jgraph.coserve.checkpoint import load_peft, save_peft
from jgraph.coserve.model import LORA_TARGETS, adapter_sel, forward
from jgraph.testing import assert_trees_close, tolerance

TOKENS = jnp.array([256, 10, 20, 30, 40, 50], jnp.int32)
RANK, ALPHA = 4, 8.0  # alpha/sqrt(r) = 4 differs from alpha/r = 2


@pytest.fixture(scope="module")
def rs_cfg():
    return LoraConfig(rank=RANK, alpha=ALPHA, targets=("q_proj", "down_proj"), rslora=True)


@pytest.fixture(scope="module")
def rs_lora(cfg, rs_cfg):
    return init_lora(cfg, rs_cfg, key=jax.random.key(3), b_std=0.05)


def _np_merged(params, lora, scale):
    """``W + scale * A @ B`` per layer, in float64 numpy (independent of merge_lora)."""
    layers = dict(params["layers"])
    for t, ab in lora.items():
        A, B = np.asarray(ab["A"], np.float64), np.asarray(ab["B"], np.float64)
        W = np.asarray(layers[t], np.float64)
        layers[t] = W + scale * np.einsum("lir,lro->lio", A, B)
    return layers


def _edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    conf = json.loads(path.read_text())
    conf.update(changes)
    path.write_text(json.dumps(conf))


def test_rslora_scale():
    assert LoraConfig(rank=RANK, alpha=ALPHA, rslora=True).scale == ALPHA / math.sqrt(RANK)
    assert LoraConfig(rank=RANK, alpha=ALPHA).scale == ALPHA / RANK
    with pytest.raises(ConfigError, match=r"LoraConfig.rslora='yes': must be a bool"):
        LoraConfig(rslora="yes")


def test_rslora_round_trip_merges_with_alpha_over_sqrt_r(tmp_path, cfg, params, rs_cfg, rs_lora):
    save_peft(tmp_path, rs_lora, rs_cfg)
    conf = json.loads((tmp_path / "adapter_config.json").read_text())
    assert conf["use_rslora"] is True
    lc, lora = load_peft(tmp_path, cfg)
    assert lc == rs_cfg
    assert lc.rslora
    merged = merge_lora(cfg, params, lora, lc)
    want = _np_merged(params, rs_lora, ALPHA / math.sqrt(RANK))
    wrong = _np_merged(params, rs_lora, ALPHA / RANK)
    for t in rs_cfg.targets:
        got = np.asarray(merged["layers"][t], np.float64)
        assert_trees_close(got, want[t], tol=tolerance("forward", np.float32))  # f32 weights
        assert np.max(np.abs(got - wrong[t])) > 1e-4  # alpha/r would be caught


def test_rslora_adapter_in_forward_uses_its_scale(cfg, params, rs_cfg, rs_lora):
    plain_cfg = LoraConfig(rank=RANK, alpha=ALPHA, targets=rs_cfg.targets)
    bank = AdapterBank.build(cfg, [("plain", plain_cfg, rs_lora), ("rs", rs_cfg, rs_lora)])
    np.testing.assert_allclose(np.asarray(bank.scales), [ALPHA / RANK, ALPHA / math.sqrt(RANK)])
    assert float(bank.scales[1] / bank.scales[0]) == pytest.approx(math.sqrt(RANK))
    merged = {**params, "layers": _np_merged(params, rs_lora, ALPHA / math.sqrt(RANK))}
    merged = jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), merged, params)
    for idx, want_rs in ((1, True), (0, False)):
        sel = adapter_sel(bank.scales, jnp.full(TOKENS.shape, idx))
        got = forward(cfg, params, TOKENS, lora=bank.weights, sel=sel)
        if want_rs:
            assert_trees_close(got, forward(cfg, merged, TOKENS), kind="forward")
        else:
            assert float(jnp.max(jnp.abs(got - forward(cfg, merged, TOKENS)))) > 1e-4


def test_save_peft_writes_the_fields_peft_reloads_exactly(tmp_path, lora_cfg, lora):
    save_peft(tmp_path, lora, lora_cfg)
    conf = json.loads((tmp_path / "adapter_config.json").read_text())
    assert conf["r"] == lora_cfg.rank
    assert conf["lora_alpha"] == lora_cfg.alpha
    assert conf["target_modules"] == list(lora_cfg.targets)
    expected = {
        "peft_type": "LORA",
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "bias": "none",
    }
    assert {k: conf[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("use_dora", True),
        ("rank_pattern", {"q_proj": 8}),
        ("alpha_pattern", {"model.layers.0.self_attn.q_proj": 32}),
        ("layers_to_transform", [0]),
        ("layers_pattern", "layers"),
        ("bias", "lora_only"),
        ("fan_in_fan_out", True),
        ("modules_to_save", ["lm_head"]),
        ("lora_bias", True),
        ("init_lora_weights", "pissa"),
    ],
)
def test_unsupported_option_is_refused(tmp_path, cfg, lora_cfg, lora, key, value):
    save_peft(tmp_path, lora, lora_cfg)
    _edit_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=rf"adapter_config\.json {key}=") as err:
        load_peft(tmp_path, cfg)
    assert "fix:" in str(err.value)


def test_dora_message_says_what_is_missing(tmp_path, cfg, lora_cfg, lora):
    save_peft(tmp_path, lora, lora_cfg)
    _edit_config(tmp_path, use_dora=True)
    with pytest.raises(ConfigError, match=r"use_dora=True: DoRA \(magnitude vector"):
        load_peft(tmp_path, cfg)


def test_neutral_options_load(tmp_path, cfg, lora_cfg, lora):
    save_peft(tmp_path, lora, lora_cfg)
    _edit_config(tmp_path, layers_to_transform=list(range(cfg.n_layers)), lora_dropout=0.1)
    lc, loaded = load_peft(tmp_path, cfg)
    assert lc == lora_cfg
    assert_trees_close(loaded, lora, kind="exact")


def test_unknown_target_module_lists_the_supported_ones(tmp_path, cfg, lora_cfg, lora):
    save_peft(tmp_path, lora, lora_cfg)
    _edit_config(tmp_path, target_modules=["q_proj", "lm_head"])
    with pytest.raises(ConfigError, match=r"target_modules='lm_head'.*q_proj, k_proj, v_proj, "):
        load_peft(tmp_path, cfg)


def test_all_linear_and_regex_targets(tmp_path, cfg, lora_cfg, lora):
    assert set(lora_cfg.targets) == set(LORA_TARGETS)
    save_peft(tmp_path, lora, lora_cfg)
    _edit_config(tmp_path, target_modules="all-linear")
    lc, loaded = load_peft(tmp_path, cfg)
    assert lc.targets == LORA_TARGETS
    assert_trees_close(loaded, lora, kind="exact")

    sub = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    save_peft(tmp_path / "re", {t: lora[t] for t in sub.targets}, sub)
    _edit_config(tmp_path / "re", target_modules=r".*\.(q|v)_proj")
    assert load_peft(tmp_path / "re", cfg)[0] == sub
    _edit_config(tmp_path / "re", target_modules=r".*layers\.0\.self_attn\.(q|v)_proj")
    with pytest.raises(ConfigError, match=r"target_modules=.*adapts q_proj in layers \[0\] only"):
        load_peft(tmp_path / "re", cfg)


def test_tensor_the_loader_would_ignore_is_refused(tmp_path, cfg, lora_cfg, lora):
    save_peft(tmp_path, lora, lora_cfg)
    path = tmp_path / "adapter_model.safetensors"
    raw = safetensors.numpy.load_file(path)
    extra = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    raw[extra] = np.ones((cfg.d_model,), np.float32)
    safetensors.numpy.save_file(raw, path)
    with pytest.raises(ConfigError, match=r"lora_magnitude_vector.*1 tensor\(s\) this loader"):
        load_peft(tmp_path, cfg)


def test_target_missing_from_config_is_refused(tmp_path, cfg, lora_cfg, lora):
    save_peft(tmp_path, lora, lora_cfg)
    _edit_config(tmp_path, target_modules=["q_proj"])  # the file still holds the other six
    with pytest.raises(ConfigError, match=r"adapter_model\.safetensors=.*would ignore"):
        load_peft(tmp_path, cfg)
