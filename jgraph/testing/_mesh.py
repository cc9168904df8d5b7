"""Meshes over the fake CPU devices that tests run on (even where a GPU exists)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

__all__ = ["cpu_mesh"]


def cpu_mesh(shape: Sequence[int], names: Sequence[str]) -> Mesh:
    """Builds a mesh of the first ``prod(shape)`` CPU devices.

    Tests use CPU devices explicitly because a GPU backend cannot fake devices;
    `tests/conftest.py` starts 8 of them.

    Args:
        shape: mesh shape, e.g. ``(4, 2)``.
        names: one axis name per dimension, e.g. ``(STAGE, DATA)``.

    Returns:
        A `jax.sharding.Mesh`.

    Raises:
        ValueError: shape and names differ in length, or too few CPU devices.

    Example:
        >>> from jgraph.core import DATA, STAGE
        >>> cpu_mesh((2, 2), (STAGE, DATA)).shape["stage"]
        2
    """
    shape, names = tuple(shape), tuple(names)
    if len(shape) != len(names):
        raise ValueError(f"cpu_mesh: {len(shape)=} axes in {shape=} but {len(names)=} in {names=}")
    n = int(np.prod(shape))
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise ValueError(
            f"cpu_mesh: {shape=} needs {n} CPU devices, have {len(devices)}; set "
            'jax.config.update("jax_num_cpu_devices", N) before JAX starts (tests/conftest.py)'
        )
    return Mesh(np.asarray(devices[:n]).reshape(shape), names)
