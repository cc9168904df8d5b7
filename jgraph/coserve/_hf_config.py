"""Hugging Face ``config.json`` -> `LlamaConfig`, for the transformers 4.x and 5.x layouts.

One rule: every key that changes the model's math is either implemented or refused with a
`ConfigError` naming the key, its value and what to do; nothing is silently dropped or
defaulted differently from transformers. The two layouts differ in where RoPE lives
(4.x: top-level ``rope_theta`` + ``rope_scaling``; 5.x: ``rope_parameters`` holding
``rope_theta``, ``rope_type`` and the scaling fields) and in the dtype key (``torch_dtype``
vs ``dtype``). Defaults are transformers' ``LlamaConfig`` defaults (``rms_norm_eps`` 1e-6,
``rope_theta`` 10000, SiLU, no biases, untied embeddings).

Supported: Llama 1-3.x (``rope_type`` default, linear, dynamic NTK or llama3), Mistral when its sliding window
covers ``max_position_embeddings`` (then it is plain causal attention), and Qwen2/Qwen2.5 (q/k/v
biases) without sliding-window layers. Refused, with the
reason: other RoPE types (yarn, longrope, ...), Llama's ``attention_bias``
(it adds an o_proj bias too) and MLP biases, activations other than SiLU, a shorter sliding window, and other
model types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jgraph.core import ConfigError
from jgraph.coserve._config import LlamaConfig

__all__ = ["SUPPORTED_ARCHITECTURES", "config_from_hf"]

SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",  # q/k/v biases (LlamaConfig.qkv_bias)
}
_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor",
              "high_freq_factor", "original_max_position_embeddings"}  # fmt: skip


def _refuse(key: str, value: Any, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"config.json {key}", value, problem, fix)


def _family(hf: Mapping[str, Any]) -> str:
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type is None:
        known = [m for m, a in SUPPORTED_ARCHITECTURES.items() if a in archs]
        if not known:
            raise _refuse(
                "model_type", None, f"is missing and architectures {archs} names no supported "
                "model", "pass the config.json written with the checkpoint (Llama, Mistral, Qwen2)",
            )  # fmt: skip
        return known[0]
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise _refuse(
            "model_type", model_type, "is not a supported family",
            f"serve one of {sorted(SUPPORTED_ARCHITECTURES)}",
        )  # fmt: skip
    want = SUPPORTED_ARCHITECTURES[model_type]
    if archs and want not in archs:
        raise _refuse(
            "architectures", archs, f"does not include {want} (model_type {model_type!r})",
            "pass a causal-LM checkpoint of a supported family",
        )  # fmt: skip
    return str(model_type)


def _rope(hf: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
    """(theta, llama3 scaling fields or {}) from either layout."""
    params = hf.get("rope_parameters")
    if params is not None:  # transformers 5.x
        if not isinstance(params, Mapping) or not set(params) <= _ROPE_KEYS | {
            "partial_rotary_factor"
        }:
            raise _refuse(
                "rope_parameters", params, "is not one RoPE setting for every layer",
                "only a single rope_parameters dict (rope_theta, rope_type, scaling fields) "
                "is supported",
            )  # fmt: skip
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling: Mapping[str, Any] = params
        key = "rope_parameters"
    else:  # transformers 4.x
        theta = hf.get("rope_theta", 10000.0)
        scaling = hf.get("rope_scaling") or {}
        key = "rope_scaling"
    kind = scaling.get("rope_type", scaling.get("type")) or "default"
    if kind == "default":
        return float(theta), {}
    if kind not in ("llama3", "linear", "dynamic"):
        raise _refuse(
            f"{key}.rope_type", kind, "is not implemented (serving it would give wrong logits)",
            "use a checkpoint with default, linear, dynamic or llama3 RoPE",
        )  # fmt: skip
    if "factor" not in scaling:
        raise _refuse(f"{key}.factor", None, f"{kind} scaling needs a factor", "add it")
    if kind == "dynamic":
        # transformers scales from max_position_embeddings (its default 2048), not from
        # rope_parameters' original_max_position_embeddings
        max_len = hf.get("max_position_embeddings", 2048)
        return float(theta), {**scaling, "rope_type": kind,
                              "original_max_position_embeddings": max_len}  # fmt: skip
    return float(theta), {**scaling, "rope_type": kind}


def _check_math_keys(hf: Mapping[str, Any], family: str) -> None:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse("hidden_act", act, "only SiLU (SwiGLU MLP) is implemented", "use SiLU")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise _refuse(key, hf[key], "biases are not implemented", "use a bias-free model")
    partial = (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
    if float(hf.get("partial_rotary_factor", partial)) != 1.0:
        raise _refuse("partial_rotary_factor", partial, "partial RoPE is not implemented", "")
    window = hf.get("sliding_window")
    # Mistral uses its window whenever one is set; Qwen2 only with use_sliding_window.
    uses_window = hf.get("use_sliding_window", family == "mistral")
    if family in ("mistral", "qwen2") and window is not None and uses_window:
        max_len = int(hf.get("max_position_embeddings", 0))
        if int(window) < max_len:
            raise _refuse(
                "sliding_window", window,
                f"is shorter than max_position_embeddings ({max_len}); sliding-window "
                "attention is not implemented",
                "use a checkpoint without a sliding window (Mistral v0.2+)",
            )  # fmt: skip


def config_from_hf(hf: Mapping[str, Any], *, dtype: str | None = None) -> LlamaConfig:
    """Builds a `LlamaConfig` from a Hugging Face ``config.json`` dict (4.x or 5.x keys).

    Args:
        hf: the parsed ``config.json``.
        dtype: parameter dtype override (default: the file's ``dtype``/``torch_dtype``,
            else float32).

    Returns:
        The config.

    Raises:
        ConfigError: a missing field, or a key whose math is not implemented (named, with
            its value and what to do).

    Example:
        >>> cfg = config_from_hf({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        ...     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        ...     "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        ...     "dtype": "bfloat16"})
        >>> cfg.rope_theta, cfg.dtype, cfg.norm_eps
        (500000.0, 'bfloat16', 1e-06)
    """
    family = _family(hf)
    _check_math_keys(hf, family)
    theta, rope = _rope(hf)
    raw_dtype = hf.get("dtype", hf.get("torch_dtype")) or "float32"
    if str(raw_dtype) not in _DTYPES:
        raise _refuse("dtype", raw_dtype, "is not a float dtype", "pass dtype= to override")
    try:
        n_heads = int(hf["num_attention_heads"])
        d_model = int(hf["hidden_size"])
        return LlamaConfig(
            vocab_size=int(hf["vocab_size"]),
            d_model=d_model,
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            head_dim=int(hf.get("head_dim") or d_model // n_heads),
            d_ff=int(hf["intermediate_size"]),
            rope_theta=theta,
            rope_scaling_factor=float(rope["factor"]) if rope else None,
            rope_scaling_type=rope.get("rope_type", "llama3"),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_len=int(rope.get("original_max_position_embeddings", 8192)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2",
            dtype=dtype or _DTYPES[str(raw_dtype)],  # type: ignore[arg-type]  # validated by LlamaConfig
        )
    except KeyError as exc:
        raise ConfigError(
            "config.json", exc.args[0], "missing field", "pass a transformers LlamaConfig"
        ) from None
