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
from jgraph.coserve._config import LORA_TARGETS, QKV_BIASES, LlamaConfig
from jgraph.coserve._hf_config import SUPPORTED_ARCHITECTURES, config_from_hf
from jgraph.coserve._safetensors import read_safetensors, write_safetensors

__all__ = ["load_hf_checkpoint", "save_hf_checkpoint"]

_GROUP = {t: ("self_attn" if t[0] in "qkvo" else "mlp") for t in LORA_TARGETS}


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
            if cfg.qkv_bias and t in QKV_BIASES:
                names[f"{p}.self_attn.{t}.bias"] = (d_out,)
    return names


def _read_weights(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint: the shards ``model.safetensors.index.json`` names, else
    ``model.safetensors``, else every ``*.safetensors`` file."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        shards = sorted(set(weight_map.values()))
        missing = [f for f in shards if not (directory / f).is_file()]
        if missing:
            raise ConfigError(
                "model.safetensors.index.json", missing, "names shard files that are not there",
                "download or copy every shard of the checkpoint",
            )  # fmt: skip
        files = [directory / f for f in shards]
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            "checkpoint directory", str(directory), "needs config.json and *.safetensors",
            "point at a local Hugging Face snapshot with safetensors weights",
        )  # fmt: skip
    tensors: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for f in files:
        for name, arr in read_safetensors(f)[0].items():
            tensors[name] = arr
            where[name] = f.name
    if index.is_file():
        for name, shard in weight_map.items():
            if where.get(name) != shard:
                raise ConfigError(
                    name, shard, f"is listed in the index but not found in {shard}",
                    "re-download that shard",
                )  # fmt: skip
    return tensors


def load_hf_checkpoint(
    directory: str | Path, *, dtype: str | None = None
) -> tuple[LlamaConfig, dict[str, Any]]:
    """Loads a local Hugging Face Llama checkpoint.

    Args:
        directory: holds ``config.json`` and the weights: the shards named by
            ``model.safetensors.index.json``, or ``model.safetensors``, or ``*.safetensors``.
        dtype: parameter dtype (default: the checkpoint's ``dtype``/``torch_dtype``).

    Returns:
        (config, params in the `init_params` layout).

    Raises:
        ConfigError: missing files, shards or tensors, a config key whose math is not
            implemented (`config_from_hf`), a tensor the model does not have (a bias), a
            truncated file, or a tensor whose shape does not match ``config.json`` (the
            message names the tensor, both shapes and the config field).
    """
    directory = Path(directory)
    conf_path = directory / "config.json"
    if not conf_path.is_file():
        raise ConfigError(
            "checkpoint directory", str(directory), "needs config.json and *.safetensors",
            "point at a local Hugging Face Llama snapshot",
        )  # fmt: skip
    cfg = config_from_hf(json.loads(conf_path.read_text()), dtype=dtype)
    tensors = _read_weights(directory)
    expected = _hf_names(cfg)
    for name, shape in expected.items():
        if name not in tensors:
            fix = (
                "set tie_word_embeddings: true if the head is tied"
                if name == "lm_head.weight"
                else "re-export it"
            )
            raise ConfigError(name, None, "tensor missing from the checkpoint", fix)
        if tuple(tensors[name].shape) != shape:
            raise ConfigError(
                name,
                tuple(tensors[name].shape),
                f"shape does not match config.json (expected {shape})",
                "use the config.json that came with these weights",
            )
    for name in sorted(set(tensors) - set(expected)):
        if name.endswith("rotary_emb.inv_freq") or (
            name == "lm_head.weight" and cfg.tie_embeddings
        ):
            continue  # a recomputed buffer; a tied head transformers ignores too
        raise ConfigError(
            name, tuple(tensors[name].shape),
            "is in the checkpoint but the model has no such tensor (it would be dropped: "
            + ("biases are not implemented" if name.endswith(".bias") else "unknown tensor") + ")",
            "use a supported checkpoint (see the README's table)",
        )  # fmt: skip
    dt = jnp.dtype(cfg.dtype)

    def stack(fmt: str, transpose: bool) -> jnp.ndarray:
        arrs = [tensors[fmt.format(i)] for i in range(cfg.n_layers)]
        return jnp.asarray(np.stack([a.T if transpose else a for a in arrs]), dt)

    layers = {t: stack(f"model.layers.{{}}.{_GROUP[t]}.{t}.weight", True) for t in LORA_TARGETS}
    layers["input_norm"] = stack("model.layers.{}.input_layernorm.weight", False)
    layers["post_norm"] = stack("model.layers.{}.post_attention_layernorm.weight", False)
    if cfg.qkv_bias:
        for t, b in QKV_BIASES.items():
            layers[b] = stack(f"model.layers.{{}}.self_attn.{t}.bias", False)
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
    family = "qwen2" if cfg.qkv_bias else "llama"  # Llama has no q/k/v-only bias option
    hf: dict[str, Any] = {
        "architectures": [SUPPORTED_ARCHITECTURES[family]],
        "model_type": family,
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
    if cfg.rope_scaling_factor is not None and cfg.rope_scaling_type == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": cfg.rope_scaling_factor}
    elif cfg.rope_scaling_factor is not None and cfg.rope_scaling_type == "dynamic":
        hf["rope_scaling"] = {"rope_type": "dynamic", "factor": cfg.rope_scaling_factor}
        hf["max_position_embeddings"] = cfg.rope_original_max_len
    elif cfg.rope_scaling_factor is not None:
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
        if cfg.qkv_bias:
            for name, b in QKV_BIASES.items():
                t[f"{p}.self_attn.{name}.bias"] = np.asarray(lay[b][i])
    write_safetensors(directory / "model.safetensors", t, {"format": "pt"})
    atomic_write_json(directory / "config.json", hf)
    return directory
