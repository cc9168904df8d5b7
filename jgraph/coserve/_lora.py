"""LoRA adapters: initialization, a multi-adapter bank with per-token selection, merging, and
the PEFT safetensors layout.

One adapter is ``{target: {"A": [L, in, r], "B": [L, r, out]}}`` (layer-stacked like the model).
The bank stacks n adapters as ``{target: {"A": [n, L, in, r], "B": [n, L, r, out]}}`` over the
union of their targets, zero-padded to the largest rank (zero rows/columns add exactly nothing),
with one ``alpha / rank`` scale per adapter. A token selects its adapter through a row of
``sel = one_hot(index) * scale`` (Punica's BGMV written as a one-hot einsum, as tpu-inference
does); index `BASE` (-1) selects none.

References:
    Hu et al., "LoRA", ICLR 2022; Chen et al., "Punica: Multi-Tenant LoRA Serving", MLSys 2024.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgraph.core import ConfigError, atomic_write_json
from jgraph.coserve._config import LlamaConfig, LoraConfig
from jgraph.coserve._safetensors import read_safetensors, write_safetensors

__all__ = [
    "BASE",
    "AdapterBank",
    "adapter_sel",
    "init_lora",
    "load_peft",
    "merge_lora",
    "save_peft",
]

BASE = -1
"""Adapter index meaning "base model, no adapter"."""

Lora = dict[str, dict[str, jax.Array]]
_GROUP = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def init_lora(
    cfg: LlamaConfig, lora_cfg: LoraConfig, *, key: jax.Array, b_std: float = 0.0
) -> Lora:
    """A new adapter: A ~ U(+-1/sqrt(in)) (PEFT's kaiming-uniform), B = 0 (so it starts as a no-op).

    Args:
        cfg: the base model shape.
        lora_cfg: rank, alpha, targets.
        key: PRNG key.
        b_std: if > 0, B is drawn from N(0, b_std) instead of zeros (tests, demos).

    Example:
        >>> import jax
        >>> from jgraph.coserve import LlamaConfig, LoraConfig, init_lora
        >>> a = init_lora(LlamaConfig.tiny(), LoraConfig(rank=4), key=jax.random.key(0))
        >>> a["q_proj"]["A"].shape, a["q_proj"]["B"].shape
        ((2, 64, 4), (2, 4, 64))
    """
    dt, L, r = jnp.dtype(cfg.dtype), cfg.n_layers, lora_cfg.rank
    out: Lora = {}
    for i, t in enumerate(lora_cfg.targets):
        d_in, d_out = cfg.proj_shape(t)
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        bound = 1.0 / math.sqrt(d_in)
        A = jax.random.uniform(ka, (L, d_in, r), jnp.float32, -bound, bound)
        B = b_std * jax.random.normal(kb, (L, r, d_out), jnp.float32)
        out[t] = {"A": A.astype(dt), "B": B.astype(dt)}
    return out


def adapter_sel(scales: jax.Array, index: jax.Array) -> jax.Array:
    """Per-token selection weights [T, n]: ``one_hot(index, n) * scale``; `BASE` gives zeros."""
    n = scales.shape[0]
    return jax.nn.one_hot(index, n, dtype=scales.dtype) * scales[None, :]


def _check_compatible(cfg: LlamaConfig, lora: Lora, where: str) -> None:
    for t, ab in lora.items():
        d_in, d_out = cfg.proj_shape(t)
        a, b = ab["A"].shape, ab["B"].shape
        if a[-3:-1] != (cfg.n_layers, d_in) or b[-3] != cfg.n_layers or b[-1] != d_out:
            raise ConfigError(
                f"{where}[{t!r}]",
                (tuple(a), tuple(b)),
                f"A/B shapes do not fit the model (want A [L={cfg.n_layers}, {d_in}, r], "
                f"B [L, r, {d_out}])",
                "use an adapter trained for this base model",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdapterBank:
    """Several inference adapters resident at once, selected per token.

    Attributes:
        names: adapter names; the position is the adapter index used in batches.
        weights: ``{target: {"A": [n, L, in, r_max], "B": [n, L, r_max, out]}}``.
        scales: ``alpha / rank`` per adapter [n] (float32).
    """

    names: tuple[str, ...]
    weights: Lora
    scales: jax.Array

    @classmethod
    def build(
        cls,
        cfg: LlamaConfig,
        adapters: Sequence[tuple[str, LoraConfig, Lora]],
        *,
        capacity: int | None = None,
        rank: int | None = None,
        targets: Sequence[str] | None = None,
    ) -> AdapterBank:
        """Stacks adapters into a bank (zero-padded ranks and targets).

        Args:
            cfg: the base model.
            adapters: (name, config, weights) triples.
            capacity: number of slots (default: ``len(adapters)``); empty slots are zero
                adapters, so a fixed-capacity engine can load adapters later without recompiling.
            rank: slot rank (default: the largest adapter rank).
            targets: the bank's targets (default: the union of the adapters' targets).

        Raises:
            ConfigError: duplicate names, too many adapters, a rank above ``rank``, a target
                outside ``targets``, or weights that do not fit the model.
        """
        names = tuple(n for n, _, _ in adapters)
        if len(set(names)) != len(names):
            raise ConfigError("AdapterBank.names", names, "has duplicates", "name each once")
        cap = len(adapters) if capacity is None else capacity
        if len(adapters) > cap:
            raise ConfigError(
                "AdapterBank.capacity", cap, f"< {len(adapters)} adapters", "raise the capacity"
            )
        r_max = rank if rank is not None else max((c.rank for _, c, _ in adapters), default=1)
        tg = (
            tuple(targets)
            if targets is not None
            else tuple(sorted({t for _, c, _ in adapters for t in c.targets})) or ("q_proj",)
        )
        dt = jnp.dtype(cfg.dtype)
        weights: Lora = {}
        for t in tg:
            d_in, d_out = cfg.proj_shape(t)
            A = np.zeros((cap, cfg.n_layers, d_in, r_max), dt)
            B = np.zeros((cap, cfg.n_layers, r_max, d_out), dt)
            for i, (name, c, w) in enumerate(adapters):
                _check_compatible(cfg, w, f"adapter {name!r}")
                if c.rank > r_max:
                    raise ConfigError(
                        f"adapter {name!r}.rank", c.rank, f"exceeds bank rank {r_max}", "raise it"
                    )
                extra = set(c.targets) - set(tg)
                if extra:
                    raise ConfigError(
                        f"adapter {name!r}.targets", c.targets, f"{extra} not in bank", "add them"
                    )
                if t in w:
                    A[i, :, :, : c.rank] = np.asarray(w[t]["A"])
                    B[i, :, : c.rank, :] = np.asarray(w[t]["B"])
            weights[t] = {"A": jnp.asarray(A), "B": jnp.asarray(B)}
        scales = np.zeros((cap,), np.float32)
        for i, (_, c, _) in enumerate(adapters):
            scales[i] = c.scale
        return cls(names=names, weights=weights, scales=jnp.asarray(scales))

    def index(self, name: str | None) -> int:
        """The slot of an adapter by name; None means the base model (`BASE`).

        Raises:
            ConfigError: the name is not loaded.
        """
        if name is None:
            return BASE
        if name not in self.names:
            raise ConfigError(
                "adapter", name, "is not loaded in the bank", f"use one of {list(self.names)}"
            )
        return self.names.index(name)


def merge_lora(cfg: LlamaConfig, params: Mapping[str, Any], lora: Lora, lora_cfg: LoraConfig):
    """Base weights with the adapter folded in: ``W + (alpha/r) A B`` (for export or checks)."""
    _check_compatible(cfg, lora, "merge_lora")
    layers = dict(params["layers"])
    for t, ab in lora.items():
        delta = jnp.einsum("lir,lro->lio", ab["A"].astype(jnp.float32), ab["B"].astype(jnp.float32))
        layers[t] = (layers[t].astype(jnp.float32) + lora_cfg.scale * delta).astype(layers[t].dtype)
    return {**params, "layers": layers}


def _peft_key(layer: int, target: str, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{_GROUP[target]}.{target}.lora_{which}.weight"


def save_peft(
    directory: str | Path, lora: Lora, lora_cfg: LoraConfig, *, base_model: str = ""
) -> Path:
    """Writes ``adapter_config.json`` and ``adapter_model.safetensors`` in the PEFT layout.

    PEFT stores ``lora_A.weight`` as [r, in] and ``lora_B.weight`` as [out, r] per layer.

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for t, ab in lora.items():
        A, B = np.asarray(ab["A"]), np.asarray(ab["B"])
        for layer in range(A.shape[0]):
            tensors[_peft_key(layer, t, "A")] = A[layer].T
            tensors[_peft_key(layer, t, "B")] = B[layer].T
    write_safetensors(directory / "adapter_model.safetensors", tensors, {"format": "pt"})
    atomic_write_json(
        directory / "adapter_config.json",
        {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": lora_cfg.rank,
            "lora_alpha": lora_cfg.alpha,
            "target_modules": list(lora_cfg.targets),
            "lora_dropout": 0.0,
            "bias": "none",
            "base_model_name_or_path": base_model,
        },
    )
    return directory


def load_peft(directory: str | Path, cfg: LlamaConfig) -> tuple[LoraConfig, Lora]:
    """Loads a PEFT LoRA adapter for the model ``cfg``.

    Raises:
        ConfigError: missing files, a non-LoRA adapter, missing tensors, or shapes that do not
            match the model.
    """
    directory = Path(directory)
    conf_path, w_path = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    for p in (conf_path, w_path):
        if not p.is_file():
            raise ConfigError("adapter directory", str(directory), f"lacks {p.name}", "save_peft")
    conf = json.loads(conf_path.read_text())
    if conf.get("peft_type", "LORA") != "LORA":
        raise ConfigError("adapter_config.peft_type", conf["peft_type"], "not LORA", "use LoRA")
    targets = conf["target_modules"]
    targets = tuple([targets] if isinstance(targets, str) else targets)
    lora_cfg = LoraConfig(rank=int(conf["r"]), alpha=float(conf["lora_alpha"]), targets=targets)
    tensors, _ = read_safetensors(w_path)
    dt = jnp.dtype(cfg.dtype)
    lora: Lora = {}
    for t in lora_cfg.targets:
        As, Bs = [], []
        for layer in range(cfg.n_layers):
            ka, kb = _peft_key(layer, t, "A"), _peft_key(layer, t, "B")
            if ka not in tensors or kb not in tensors:
                raise ConfigError(
                    "adapter_model.safetensors", ka, "tensor missing", "check n_layers/targets"
                )
            As.append(tensors[ka].T)
            Bs.append(tensors[kb].T)
        lora[t] = {"A": jnp.asarray(np.stack(As), dt), "B": jnp.asarray(np.stack(Bs), dt)}
    _check_compatible(cfg, lora, f"adapter {directory.name!r}")
    for t, ab in lora.items():
        if ab["A"].shape[-1] != lora_cfg.rank:
            raise ConfigError(
                f"adapter {t}.rank", ab["A"].shape[-1], f"!= r={lora_cfg.rank}", "fix the config"
            )
    return lora_cfg, lora
