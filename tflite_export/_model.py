"""Turning what a user has (a JAX function, a Linen module, an NNX model) into one function."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jgraph.core import ConfigError
from jgraph.quant import Hardened
from tflite_export._codebook import _kernel_holder, snap_codebooks

__all__ = ["as_function"]


def _is_linen(obj: Any) -> bool:
    import flax.linen as nn

    return isinstance(obj, nn.Module)


def _is_nnx(obj: Any) -> bool:
    from flax import nnx

    return isinstance(obj, nnx.Module)


def _with_kernels(variables: Mapping[str, Any], hardened: Hardened) -> dict[str, Any]:
    """``variables`` with each hardened layer's kernel taken from ``hardened``."""
    import copy

    out = copy.deepcopy(dict(variables))
    for name in hardened.indices:
        src = _kernel_holder(hardened.variables["params"], name)
        try:
            dst = _kernel_holder(out["params"], name)
        except (KeyError, IndexError, AttributeError, ValueError) as err:
            raise ConfigError(
                "variables",
                name,
                "has no such layer, but hardened does",
                "pass the variables of the model the codebooks came from",
            ) from err
        dst["kernel"] = src["kernel"]
    return out


def as_function(
    fn_or_model: Any,
    *,
    variables: Mapping[str, Any] | None,
    hardened: Hardened | None,
    snap: bool,
    apply_kwargs: Mapping[str, Any] | None,
) -> tuple[Callable[..., Any], Hardened | None]:
    """The function to export and the codebooks it carries (snapped when ``snap``).

    * a Linen module: ``module.apply(variables, *args, **apply_kwargs)``;
      ``variables`` default to ``hardened.variables``.
    * an NNX model: a copy in eval mode (BatchNorm uses its running averages,
      Dropout is off), with hardened kernels written into it.
    * any other callable: used as it is (it must close over its weights).
    """
    kwargs = dict(apply_kwargs or {})
    book = snap_codebooks(hardened) if (hardened is not None and snap) else hardened
    if _is_linen(fn_or_model):
        if variables is None and book is None:
            raise ConfigError(
                "variables",
                None,
                "is required to export a Linen module",
                "pass variables=model.init(...) / trained variables, or hardened=harden(...)",
            )
        if variables is None:
            assert book is not None
            v: Mapping[str, Any] = book.variables
        else:
            v = variables if book is None else _with_kernels(variables, book)
        module = fn_or_model

        def linen_fn(*args: Any) -> Any:
            return module.apply(v, *args, **kwargs)

        return linen_fn, book
    if _is_nnx(fn_or_model):
        from flax import nnx

        model = nnx.clone(fn_or_model)
        model.eval()
        if book is not None:
            import jax.numpy as jnp

            for name in book.indices:
                layer = _kernel_holder(model, name)
                layer.kernel[...] = jnp.asarray(
                    _kernel_holder(book.variables["params"], name)["kernel"],
                    layer.kernel[...].dtype,
                )
        graphdef, state = nnx.split(model)

        def nnx_fn(*args: Any) -> Any:
            return nnx.merge(graphdef, state)(*args, **kwargs)

        return nnx_fn, book
    if not callable(fn_or_model):
        raise ConfigError(
            "fn_or_model",
            type(fn_or_model).__name__,
            "is neither a function nor a Flax module",
            "pass a JAX function, a flax.linen.Module (with variables=) or an nnx.Module",
        )
    if variables is not None:
        raise ConfigError(
            "variables",
            "given",
            "only applies to a Linen module; a function closes over its own weights",
            "drop variables=, or pass the Linen module itself",
        )
    fn = fn_or_model
    if kwargs:

        def bound(*args: Any) -> Any:
            return fn(*args, **kwargs)

        return bound, book
    return fn, book
