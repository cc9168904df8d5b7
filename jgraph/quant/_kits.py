"""What `run_recipe` needs from a model, for bundled names, Linen modules and NNX modules.

A kit turns the model into the steps of the recipe: fresh variables, the
full-precision `ApplyFn`, the DGMS model and its variables, the hardened form
and a Linen-shaped view of the variables for the histogram plots. Linen and
NNX differ in each step (a wrapper vs. in-place surgery, ``harden`` vs.
``harden_nnx``); the recipe does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from jgraph.core import ConfigError
from jgraph.quant._adapt import LinenApply, linen_apply
from jgraph.quant._adapt_nnx import NNXApply, nnx_apply
from jgraph.quant._config import MIXTURE, DGMSConfig
from jgraph.quant._harden import Hardened, harden
from jgraph.quant._models import MODEL_NAMES, make_model
from jgraph.quant._nnx import dgms_nnx, harden_nnx
from jgraph.quant._transform import _get, dgms, iter_mixtures

__all__ = ["LinenKit", "NNXKit", "check_model", "model_kit"]


def check_model(model: Any) -> None:
    """Refuses a `RunConfig.model` that is neither a bundled name nor a Flax module."""
    if isinstance(model, str):
        if model not in MODEL_NAMES:
            raise ConfigError(
                "RunConfig.model",
                model,
                f"is not a bundled model ({', '.join(MODEL_NAMES)})",
                "pass one of those names, or your own flax.linen / flax.nnx module",
            )
    elif not isinstance(model, nn.Module | nnx.Module):
        raise ConfigError(
            "RunConfig.model",
            type(model).__name__,
            "is neither a bundled model name nor a Flax module",
            f"pass one of {', '.join(MODEL_NAMES)} or a flax.linen / flax.nnx module",
        )


def describe(model: Any) -> str:
    """A stable, JSON-able name of the model (result.json, and what a resume must match)."""
    if isinstance(model, str):
        return model
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    if isinstance(model, nn.Module):
        fields = [
            f"{f.name}={getattr(model, f.name)!r}"
            for f in dataclasses.fields(model)
            if f.name not in ("parent", "name")
        ]
        return f"{cls}({', '.join(fields)})"
    leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return f"{cls} ({sum(int(np.size(leaf)) for leaf in leaves)} parameters)"


@dataclasses.dataclass(frozen=True)
class LinenKit:
    """A Linen module (bundled or a user's)."""

    model: nn.Module
    fp_apply: LinenApply

    def init(self, key: jax.Array, sample: np.ndarray) -> dict[str, Any]:
        return jax.jit(self.fp_apply.init)(key, sample)

    def check_layers(self, sample: np.ndarray, config: DGMSConfig) -> None:
        dgms(self.model, config).layers(sample, **self.fp_apply.call_kwargs(False))

    def quantize(
        self, fp_vars: Mapping[str, Any], sample: np.ndarray, config: DGMSConfig, key: jax.Array
    ) -> tuple[LinenApply, dict[str, Any]]:
        qmodel = dgms(self.model, config)
        qvars = qmodel.init(fp_vars, sample, key=key, **self.fp_apply.call_kwargs(False))
        return dataclasses.replace(self.fp_apply, model=qmodel), qvars

    def harden(self, q_apply: Any, qvars: Mapping[str, Any], config: DGMSConfig) -> Hardened:
        del q_apply
        return harden(qvars, config)

    def plot_view(self, qvars: Mapping[str, Any]) -> Mapping[str, Any]:
        return qvars


@dataclasses.dataclass(frozen=True)
class NNXKit:
    """An NNX module (a copy: the caller's object is never modified)."""

    model: nnx.Module
    fp_apply: NNXApply

    def init(self, key: jax.Array, sample: np.ndarray) -> dict[str, Any]:
        del key, sample  # an NNX module is initialized when it is built
        return self.fp_apply.variables

    def check_layers(self, sample: np.ndarray, config: DGMSConfig) -> None:
        dgms_nnx(nnx.clone(self.model), config, sample, key=jax.random.key(0))

    def quantize(
        self, fp_vars: Mapping[str, Any], sample: np.ndarray, config: DGMSConfig, key: jax.Array
    ) -> tuple[NNXApply, dict[str, Any]]:
        model = dgms_nnx(self.fp_apply.module(fp_vars), config, sample, key=key)
        mode = self.fp_apply.mode
        q_apply = nnx_apply(model, train_arg=mode.name, inverted=mode.inverted)
        return q_apply, q_apply.variables

    def harden(self, q_apply: Any, qvars: Mapping[str, Any], config: DGMSConfig) -> Hardened:
        del config  # the σ floor lives in each DGMSLayer
        _, hardened = harden_nnx(q_apply.module(qvars))
        return hardened

    def plot_view(self, qvars: Mapping[str, Any]) -> Mapping[str, Any]:
        # DGMSLayer keeps the kernel one level down (``<layer>/layer/kernel``); the plots
        # read ``params[<layer>]["kernel"]`` beside ``mixture[<layer>]``, named like harden_nnx.
        params, mixture = {}, {}
        for path, mix in iter_mixtures(qvars[MIXTURE]):
            name = "/".join(map(str, path))
            params[name] = {"kernel": _get(qvars["params"], (*path, "layer", "kernel"))}
            mixture[name] = mix
        return {"params": params, MIXTURE: mixture}


def model_kit(model: str | nn.Module | nnx.Module, num_classes: int) -> LinenKit | NNXKit:
    """The kit of a `RunConfig.model`: a bundled name, a Linen module or an NNX module."""
    check_model(model)
    if isinstance(model, str):
        model = make_model(model, num_classes)
    if isinstance(model, nn.Module):
        return LinenKit(model, linen_apply(model))
    assert isinstance(model, nnx.Module)  # check_model refused anything else
    copy = nnx.clone(model)
    return NNXKit(copy, nnx_apply(copy))
