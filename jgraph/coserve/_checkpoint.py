"""Hugging Face Llama checkpoints (``config.json`` + ``*.safetensors``) from a local directory.

Nothing is downloaded. Tensors are mapped from the ``transformers`` names
(``model.layers.{i}.self_attn.q_proj.weight`` [out, in], ...) to the layer-stacked ``[in, out]``
layout of `jgraph.coserve.init_params`; every shape is checked against the config first, so a
checkpoint for another model fails with the tensor's name and both shapes instead of a
broadcasting error deep in a jitted step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jgraph.core import ConfigError, atomic_write_json
from jgraph.coserve._config import LORA_TARGETS, LlamaConfig
from jgraph.coserve._safetensors import read_safetensors, write_safetensors

__all__ = ["config_from_hf", "load_hf_checkpoint", "save_hf_checkpoint"]

_GROUP = {t: ("self_attn" if t[0] in "qkvo" else "mlp") for t in LORA_TARGETS}


def config_from_hf(hf: dict[str, Any], *, dtype: str | None = None) -> LlamaConfig:
    """Builds a `LlamaConfig` from a Hugging Face ``config.json`` dict.

    Raises:
        ConfigError: not a Llama config, or a missing field.
    """
    arch = hf.get("model_type", "llama")
    if arch != "llama":
        raise ConfigError("config.json model_type", arch, "is not 'llama'", "pass a Llama model")
    try:
        n_heads = int(hf["num_attention_heads"])
        d_model = int(hf["hidden_size"])
        rope = hf.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type"))
        if rope and kind != "llama3":
            raise ConfigError(
                "config.json rope_scaling", rope, "only 'llama3' scaling is supported", "drop it"
            )
        hf_dtype = {"bfloat16": "bfloat16", "float16": "float16"}.get(
            str(hf.get("torch_dtype", "float32")), "float32"
        )
        return LlamaConfig(
            vocab_size=int(hf["vocab_size"]),
            d_model=d_model,
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads", n_heads)),
            head_dim=int(hf.get("head_dim") or d_model // n_heads),
            d_ff=int(hf["intermediate_size"]),
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            rope_scaling_factor=float(rope["factor"]) if rope else None,
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_len=int(rope.get("original_max_position_embeddings", 8192)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            dtype=dtype or hf_dtype,  # type: ignore[arg-type]  # validated by LlamaConfig
        )
    except KeyError as exc:
        raise ConfigError(
            "config.json", exc.args[0], "missing field", "pass a transformers LlamaConfig"
        ) from None


def _hf_names(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Expected tensor name -> Hugging Face shape."""
    names: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg.vocab_size, cfg.d_model),
        "model.norm.weight": (cfg.d_model,),
    }
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}"
        names[f"{p}.input_layernorm.weight"] = (cfg.d_model,)
        names[f"{p}.post_attention_layernorm.weight"] = (cfg.d_model,)
        for t in LORA_TARGETS:
            d_in, d_out = cfg.proj_shape(t)
            names[f"{p}.{_GROUP[t]}.{t}.weight"] = (d_out, d_in)
    return names


def load_hf_checkpoint(
    directory: str | Path, *, dtype: str | None = None
) -> tuple[LlamaConfig, dict[str, Any]]:
    """Loads a local Hugging Face Llama checkpoint.

    Args:
        directory: holds ``config.json`` and one or more ``*.safetensors`` files.
        dtype: parameter dtype (default: the checkpoint's ``torch_dtype``).

    Returns:
        (config, params in the `init_params` layout).

    Raises:
        ConfigError: missing files or tensors, or a tensor whose shape does not match
            ``config.json`` (the message names the tensor, both shapes and the config field).
    """
    directory = Path(directory)
    conf_path = directory / "config.json"
    files = sorted(directory.glob("*.safetensors"))
    if not conf_path.is_file() or not files:
        raise ConfigError(
            "checkpoint directory",
            str(directory),
            "needs config.json and *.safetensors",
            "point at a local Hugging Face Llama snapshot",
        )
    cfg = config_from_hf(json.loads(conf_path.read_text()), dtype=dtype)
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(read_safetensors(f)[0])
    if cfg.tie_embeddings is False and "lm_head.weight" not in tensors:
        raise ConfigError("lm_head.weight", None, "missing", "set tie_word_embeddings: true")
    for name, shape in _hf_names(cfg).items():
        if name not in tensors:
            raise ConfigError(name, None, "tensor missing from the checkpoint", "re-export it")
        if tuple(tensors[name].shape) != shape:
            raise ConfigError(
                name,
                tuple(tensors[name].shape),
                f"shape does not match config.json (expected {shape})",
                "use the config.json that came with these weights",
            )
    dt = jnp.dtype(cfg.dtype)

    def stack(fmt: str, transpose: bool) -> jnp.ndarray:
        arrs = [tensors[fmt.format(i)] for i in range(cfg.n_layers)]
        return jnp.asarray(np.stack([a.T if transpose else a for a in arrs]), dt)

    layers = {t: stack(f"model.layers.{{}}.{_GROUP[t]}.{t}.weight", True) for t in LORA_TARGETS}
    layers["input_norm"] = stack("model.layers.{}.input_layernorm.weight", False)
    layers["post_norm"] = stack("model.layers.{}.post_attention_layernorm.weight", False)
    params: dict[str, Any] = {
        "embed": jnp.asarray(tensors["model.embed_tokens.weight"], dt),
        "layers": layers,
        "final_norm": jnp.asarray(tensors["model.norm.weight"], dt),
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = jnp.asarray(tensors["lm_head.weight"].T, dt)
    return cfg, params


def save_hf_checkpoint(directory: str | Path, cfg: LlamaConfig, params: dict[str, Any]) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` in the Hugging Face layout (round trip of
    `load_hf_checkpoint`; also how tests build a tiny checkpoint without downloads)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": cfg.dtype,
        "hidden_act": "silu",
    }
    if cfg.rope_scaling_factor is not None:
        hf["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": cfg.rope_scaling_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_len,
        }
    t: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": np.asarray(params["embed"]),
        "model.norm.weight": np.asarray(params["final_norm"]),
    }
    if not cfg.tie_embeddings:
        t["lm_head.weight"] = np.asarray(params["lm_head"]).T
    lay = params["layers"]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = np.asarray(lay["input_norm"][i])
        t[f"{p}.post_attention_layernorm.weight"] = np.asarray(lay["post_norm"][i])
        for name in LORA_TARGETS:
            t[f"{p}.{_GROUP[name]}.{name}.weight"] = np.asarray(lay[name][i]).T
    write_safetensors(directory / "model.safetensors", t, {"format": "pt"})
    atomic_write_json(directory / "config.json", hf)
    return directory
