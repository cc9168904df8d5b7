"""LoRA adapters: initialization, a multi-adapter bank with per-token selection, merging, and
the PEFT safetensors layout.

One adapter is ``{target: {"A": [L, in, r], "B": [L, r, out]}}`` (layer-stacked like the model).
The bank stacks n adapters as ``{target: {"A": [n, L, in, r], "B": [n, L, r, out]}}`` over the
union of their targets, zero-padded to the largest rank (zero rows/columns add exactly nothing),
with one scale per adapter (`LoraConfig.scale`: ``alpha / rank``, or ``alpha / sqrt(rank)`` for
rsLoRA). A token selects its adapter through a row of
``sel = one_hot(index) * scale`` (Punica's BGMV written as a one-hot einsum, as tpu-inference
does); index `BASE` (-1) selects none.

References:
    Hu et al., "LoRA", ICLR 2022; Chen et al., "Punica: Multi-Tenant LoRA Serving", MLSys 2024.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgraph.core import ConfigError, atomic_write_json
from jgraph.coserve._config import LORA_TARGETS, LlamaConfig, LoraConfig
from jgraph.coserve._safetensors import read_safetensors, write_safetensors
from jgraph.coserve._validate import check_adapter

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
        scales: `LoraConfig.scale` per adapter [n] (float32).
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
                outside ``targets``, or weights that do not match their `LoraConfig` (rank,
                targets) or the model (`check_adapter`; the message names the adapter and the
                target).
        """
        names = tuple(n for n, _, _ in adapters)
        if len(set(names)) != len(names):
            raise ConfigError("AdapterBank.names", names, "has duplicates", "name each once")
        for name, c, w in adapters:  # before stacking: a bad one names itself, not a broadcast
            check_adapter(cfg, c, w, name=f"adapter {name!r}")
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
    """Base weights with the adapter folded in: ``W + scale A B`` (for export or checks).

    ``scale`` is `LoraConfig.scale` (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA).

    Raises:
        ConfigError: the adapter does not match ``lora_cfg`` (rank, targets) or the model.
    """
    check_adapter(cfg, lora_cfg, lora, name="merge_lora adapter")
    layers = dict(params["layers"])
    for t, ab in lora.items():
        delta = jnp.einsum("lir,lro->lio", ab["A"].astype(jnp.float32), ab["B"].astype(jnp.float32))
        layers[t] = (layers[t].astype(jnp.float32) + lora_cfg.scale * delta).astype(layers[t].dtype)
    return {**params, "layers": layers}


def _peft_key(layer: int, target: str, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{_GROUP[target]}.{target}.lora_{which}.weight"


# adapter_config.json keys that change the math and that this loader does not implement:
# key -> (values that mean "off", what is wrong otherwise, what to do).
_MERGE = "merge it into the base weights with PEFT (merge_and_unload) and load that checkpoint"
_PEFT_UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str, str]] = {
    "use_dora": (
        (False, None),
        "DoRA (magnitude vector and column norm) is not implemented",
        f"train a plain LoRA adapter, or {_MERGE}",
    ),
    "rank_pattern": (({}, None), "per-module ranks are not supported", f"use one r, or {_MERGE}"),
    "alpha_pattern": (
        ({}, None),
        "per-module alphas are not supported",
        f"use one lora_alpha, or {_MERGE}",
    ),
    "layers_pattern": (
        (None, "", []),
        "layer-pattern targeting is not supported",
        f"adapt all layers, or {_MERGE}",
    ),
    "bias": (("none", None), "trained biases are not supported", f"use bias='none', or {_MERGE}"),
    "lora_bias": ((False, None), "a bias on lora_B is not supported", _MERGE),
    "fan_in_fan_out": (
        (False, None),
        "transposed (Conv1D-style) weights do not fit Llama's linear layers",
        "save the adapter with fan_in_fan_out=false",
    ),
    "modules_to_save": (
        (None, []),
        "fully trained extra modules are not supported",
        f"train without modules_to_save, or {_MERGE}",
    ),
    "layer_replication": ((None, []), "layer replication is not supported", _MERGE),
    "use_qalora": ((False, None), "QA-LoRA pooling is not supported", _MERGE),
    "target_parameters": ((None, []), "parameter targeting is not supported", _MERGE),
    "trainable_token_indices": ((None, [], {}), "trainable tokens are not supported", _MERGE),
    "alora_invocation_tokens": ((None, []), "activated LoRA is not supported", _MERGE),
    # PiSSA, OLoRA, CorDA and LoftQ also change the base weights, which the adapter then needs.
    "init_lora_weights": (
        (True, False, None, "gaussian", "eva"),
        "this initialization changes the base weights, so the adapter alone is not a LoRA delta",
        "save it with PEFT's path_initial_model_for_weight_conversion (a plain LoRA adapter)",
    ),
}


def _peft_field(key: str) -> str:
    return f"adapter_config.json {key}"


def _peft_targets(conf: Mapping[str, Any], cfg: LlamaConfig) -> tuple[str, ...]:
    """The projections ``target_modules`` selects, with PEFT's matching rules.

    A list entry matches a module whose name equals it or ends with ``"." + entry``; a string is
    a regular expression matched in full (``"all-linear"``: every linear layer but the output
    head, i.e. all of `LORA_TARGETS` for Llama). A bare projection name as a string is taken as
    that projection. A target must be adapted in every layer.
    """
    spec = conf.get("target_modules")
    field = _peft_field("target_modules")
    fix = f"target only {', '.join(LORA_TARGETS)} (or 'all-linear')"
    if spec == "all-linear":
        return LORA_TARGETS
    if isinstance(spec, str) and spec in LORA_TARGETS:
        return (spec,)
    names = {
        (t, layer): f"model.layers.{layer}.{_GROUP[t]}.{t}"
        for t in LORA_TARGETS
        for layer in range(cfg.n_layers)
    }
    if isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise ConfigError(field, spec, f"is not a valid regular expression ({e})", fix) from e
        hits = {k for k, name in names.items() if pattern.fullmatch(name)}
        if not hits:
            raise ConfigError(field, spec, "matches none of the supported modules", fix)
    elif isinstance(spec, list) and spec and all(isinstance(m, str) for m in spec):
        hits = set()
        for m in spec:
            mine = {k for k, name in names.items() if name == m or name.endswith("." + m)}
            if not mine:
                raise ConfigError(field, m, "names a module this model does not have", fix)
            hits |= mine
    else:
        raise ConfigError(field, spec, "must be a non-empty list of module names or a regex", fix)
    out = []
    for t in LORA_TARGETS:
        layers = sorted(layer for tt, layer in hits if tt == t)
        if layers and len(layers) != cfg.n_layers:
            raise ConfigError(
                field,
                spec,
                f"adapts {t} in layers {layers} only, not all {cfg.n_layers}",
                f"adapt every layer, or {_MERGE}",
            )
        if layers:
            out.append(t)
    return tuple(out)


def _peft_config(conf: Mapping[str, Any], cfg: LlamaConfig) -> LoraConfig:
    """The `LoraConfig` of a PEFT ``adapter_config.json``; refuses what would load wrong math."""
    if conf.get("peft_type", "LORA") != "LORA":
        raise ConfigError(
            _peft_field("peft_type"), conf["peft_type"], "is not LORA", "use a LoRA adapter"
        )
    for key, (off, problem, fix) in _PEFT_UNSUPPORTED.items():
        if key in conf and conf[key] not in off:
            raise ConfigError(_peft_field(key), conf[key], problem, fix)
    ltt = conf.get("layers_to_transform")
    if ltt is not None:
        chosen = [ltt] if isinstance(ltt, int) else ltt
        if not isinstance(chosen, list) or sorted(chosen) != list(range(cfg.n_layers)):
            raise ConfigError(
                _peft_field("layers_to_transform"),
                ltt,
                f"adapts only some of the {cfg.n_layers} layers (not supported)",
                f"use null (all layers), or {_MERGE}",
            )
    rslora = conf.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise ConfigError(_peft_field("use_rslora"), rslora, "must be a bool", "true or false")
    for key in ("r", "lora_alpha"):
        if key not in conf:
            raise ConfigError(_peft_field(key), None, "is missing", "save the adapter with PEFT")
    return LoraConfig(
        rank=int(conf["r"]),
        alpha=float(conf["lora_alpha"]),
        targets=_peft_targets(conf, cfg),
        rslora=rslora,
    )


def save_peft(
    directory: str | Path, lora: Lora, lora_cfg: LoraConfig, *, base_model: str = ""
) -> Path:
    """Writes ``adapter_config.json`` and ``adapter_model.safetensors`` in the PEFT layout.

    PEFT stores ``lora_A.weight`` as [r, in] and ``lora_B.weight`` as [out, r] per layer. The
    config spells out every option that changes the math (``use_rslora``, ``use_dora``, the
    rank/alpha patterns, ``layers_to_transform``, ...) so that PEFT reloads it exactly.

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
            "use_rslora": lora_cfg.rslora,
            "use_dora": False,
            "target_modules": list(lora_cfg.targets),
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": None,
            "layers_pattern": None,
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "modules_to_save": None,
            "lora_dropout": 0.0,
            "bias": "none",
            "base_model_name_or_path": base_model,
        },
    )
    return directory


def load_peft(directory: str | Path, cfg: LlamaConfig) -> tuple[LoraConfig, Lora]:
    """Loads a PEFT LoRA adapter for the model ``cfg``.

    Plain LoRA and rsLoRA (``use_rslora``) load; ``target_modules`` may be a list, a regex or
    ``"all-linear"``. ``lora_dropout`` and ``init_lora_weights`` only matter for training and
    are ignored.

    Raises:
        ConfigError: missing files, a non-LoRA adapter, an option whose math is not implemented
            (DoRA, rank/alpha patterns, a subset of layers, biases, fan_in_fan_out,
            modules_to_save, ...; the message names the ``adapter_config.json`` key), a target
            module the model does not have, missing tensors, tensors the loader would ignore,
            or shapes that do not match the model.
    """
    directory = Path(directory)
    conf_path, w_path = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    for p in (conf_path, w_path):
        if not p.is_file():
            raise ConfigError("adapter directory", str(directory), f"lacks {p.name}", "save_peft")
    lora_cfg = _peft_config(json.loads(conf_path.read_text()), cfg)
    tensors, _ = read_safetensors(w_path)
    dt = jnp.dtype(cfg.dtype)
    lora: Lora = {}
    used: set[str] = set()
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
            used |= {ka, kb}
        lora[t] = {"A": jnp.asarray(np.stack(As), dt), "B": jnp.asarray(np.stack(Bs), dt)}
    extra = sorted(set(tensors) - used)
    if extra:
        raise ConfigError(
            "adapter_model.safetensors",
            extra[:3] + (["..."] if len(extra) > 3 else []),
            f"holds {len(extra)} tensor(s) this loader would ignore (e.g. DoRA magnitude "
            "vectors, biases, embedding adapters, or targets missing from target_modules)",
            f"load only plain LoRA A/B weights of {', '.join(LORA_TARGETS)}, or {_MERGE}",
        )
    _check_compatible(cfg, lora, f"adapter {directory.name!r}")
    for t, ab in lora.items():
        if ab["A"].shape[-1] != lora_cfg.rank:
            raise ConfigError(
                f"adapter {t}.rank", ab["A"].shape[-1], f"!= r={lora_cfg.rank}", "fix the config"
            )
    return lora_cfg, lora
