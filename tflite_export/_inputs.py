"""Checking what the user passes to `export`, before anything is traced or converted."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jgraph.core import ConfigError

__all__ = ["as_batches", "check_example_args", "check_outputs", "default_names"]

# dtypes LiteRT signatures take as inputs and that jax2tf maps one to one.
_INPUT_DTYPES = ("float32", "int32", "int64", "int8", "uint8", "bool")


def _leaf_spec(path: str, leaf: Any) -> jax.ShapeDtypeStruct:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        shape, dtype = leaf.shape, np.dtype(leaf.dtype)
    elif hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
    else:
        raise ConfigError(
            f"example_args{path}",
            type(leaf).__name__,
            "is not an array",
            "pass arrays (or jax.ShapeDtypeStruct) with the exact shapes the model will get",
        )
    if any(not isinstance(d, int) for d in shape):
        raise ConfigError(
            f"example_args{path}",
            shape,
            "has a symbolic dimension; .tflite export uses fixed shapes",
            "pass a concrete shape (export once per batch size you need)",
        )
    if dtype.name not in _INPUT_DTYPES:
        raise ConfigError(
            f"example_args{path}",
            dtype.name,
            f"is not a supported input dtype ({', '.join(_INPUT_DTYPES)})",
            "cast the input (e.g. images to float32) before export",
        )
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def check_example_args(example_args: Any) -> tuple[list[Any], list[jax.ShapeDtypeStruct], Any]:
    """Flattens ``example_args`` (a tuple of the function's positional arguments).

    Returns:
        (key paths, specs, treedef).
    """
    if not isinstance(example_args, tuple | list):
        raise ConfigError(
            "example_args",
            type(example_args).__name__,
            "must be a tuple of the function's positional arguments",
            "wrap a single input: example_args=(x,)",
        )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tuple(example_args))
    if not leaves:
        raise ConfigError("example_args", example_args, "has no arrays", "pass at least one input")
    paths = [p for p, _ in leaves]
    specs = [_leaf_spec(jax.tree_util.keystr(p), leaf) for p, leaf in leaves]
    return paths, specs, treedef


def check_outputs(fn: Callable[..., Any], args: Sequence[Any]) -> tuple[list[Any], Any]:
    """Traces ``fn`` abstractly; its outputs must be arrays. Returns (paths, treedef)."""
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:  # the user's function failed on the example arguments
        if "not a valid JAX type" in str(err):
            raise ConfigError(
                "output",
                str(err).splitlines()[0][:300],
                "the model returns something that is not an array",
                "return arrays (or a pytree of arrays) only",
            ) from err
        raise ConfigError(
            "example_args",
            [f"{a.shape}:{a.dtype}" for a in jax.tree.leaves(args)],
            f"the model fails on them ({type(err).__name__}: {str(err).splitlines()[0][:300]})",
            "pass arguments shaped the way the model is called",
        ) from err
    leaves, treedef = jax.tree_util.tree_flatten_with_path(out)
    if not leaves:
        raise ConfigError("model", out, "returns no arrays", "return the output array(s)")
    for p, leaf in leaves:
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            raise ConfigError(
                f"output{jax.tree_util.keystr(p)}", leaf, "is not an array", "return arrays only"
            )
    return [p for p, _ in leaves], treedef


_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def default_names(
    given: tuple[str, ...] | None, paths: Sequence[Any], stem: str, field: str
) -> tuple[str, ...]:
    """Signature names: ``given``, else dict keys / attribute names, else ``stem_i``."""
    count = len(paths)
    if given is not None:
        if len(given) != count:
            raise ConfigError(
                field, given, f"has {len(given)} names for {count} tensors", f"give {count} names"
            )
        return given
    keyed = []
    for path in paths:
        last = path[-1] if path else None
        key = getattr(last, "key", None) if last is not None else None
        key = getattr(last, "name", key) if last is not None else key
        keyed.append(key if isinstance(key, str) and _IDENT.match(key) else None)
    if all(keyed) and len(set(keyed)) == count:
        return tuple(str(k) for k in keyed)
    return (stem,) if count == 1 else tuple(f"{stem}_{i}" for i in range(count))


def as_batches(
    data: Any, specs: Sequence[jax.ShapeDtypeStruct], field: str, limit: int | None = None
) -> list[list[np.ndarray]]:
    """Splits a dataset (one array per input, sample axis first) into example-shaped batches.

    ``data`` is an array (single input) or a tuple of arrays; each is shaped
    ``[n, *spec.shape[1:]]`` and is cut into ``n // spec.shape[0]`` batches.
    """
    arrays = list(data) if isinstance(data, tuple | list) else [data]
    if len(arrays) != len(specs):
        raise ConfigError(
            field,
            len(arrays),
            f"has {len(arrays)} arrays for {len(specs)} inputs",
            "pass one array per input, samples on the first axis",
        )
    batches: list[list[np.ndarray]] | None = None
    for i, (arr, spec) in enumerate(zip(arrays, specs, strict=True)):
        a = np.asarray(arr)
        if not spec.shape:
            raise ConfigError(
                field, a.shape, "cannot batch a scalar input", "pass example-shaped sets"
            )
        if a.ndim != len(spec.shape) or a.shape[1:] != spec.shape[1:]:
            raise ConfigError(
                f"{field}[{i}]",
                a.shape,
                f"does not match the example input {spec.shape} (samples first, then "
                f"{spec.shape[1:]})",
                "pass data shaped like example_args apart from the first axis",
            )
        if not np.can_cast(a.dtype, spec.dtype, casting="same_kind"):
            raise ConfigError(
                f"{field}[{i}]",
                a.dtype.name,
                f"cannot be cast to the input dtype {spec.dtype}",
                "pass data of the example's dtype",
            )
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ConfigError(
                f"{field}[{i}]", "NaN/inf", "contains non-finite values", "pass finite data"
            )
        b = spec.shape[0]
        n = a.shape[0] // b
        if n == 0:
            raise ConfigError(
                f"{field}[{i}]",
                a.shape[0],
                f"has fewer samples than one batch ({b})",
                f"pass at least {b} samples",
            )
        if limit is not None:
            n = min(n, limit)
        parts = [a[k * b : (k + 1) * b].astype(spec.dtype) for k in range(n)]
        if batches is None:
            batches = [[p] for p in parts]
        else:
            if len(parts) != len(batches):
                raise ConfigError(
                    field,
                    [x.shape[0] for x in map(np.asarray, arrays)],
                    "inputs have different sample counts",
                    "pass equal counts",
                )
            for batch, p in zip(batches, parts, strict=True):
                batch.append(p)
    assert batches is not None
    return batches
