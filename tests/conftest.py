"""Process-wide test settings; runs before any test module imports JAX code.

8 fake CPU devices are set once here. `jax_num_cpu_devices` raises if the
backend already started (a late XLA_FLAGS would be silently ignored), and the
count is asserted so that sharding tests fail loudly instead of skipping.
"""

import os

import jax
import pytest

N_CPU_DEVICES = 8

jax.config.update("jax_num_cpu_devices", N_CPU_DEVICES)
jax.config.update("jax_numpy_rank_promotion", "raise")
# dtype promotion stays "standard": "strict" breaks inside optax schedules and
# flax layers (float * int32 step counts), which we do not control.
# f32 references must not be degraded by TF32 matmuls when tests run on a GPU.
jax.config.update("jax_default_matmul_precision", "highest")

_cpu = jax.devices("cpu")
if len(_cpu) != N_CPU_DEVICES:
    raise RuntimeError(
        f"tests need {N_CPU_DEVICES} CPU devices, JAX started {len(_cpu)}: something initialised "
        "the JAX backend before tests/conftest.py ran"
    )

# Progress bars would interleave with pytest's output.
os.environ.setdefault("JGRAPH_PROGRESS", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselects `gpu` tests on a machine without an accelerator, and says so."""
    del config
    if jax.default_backend() != "cpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU/TPU backend; jax.default_backend() is 'cpu'")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
