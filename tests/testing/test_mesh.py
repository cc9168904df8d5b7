"""8 fake CPU devices, meshes over them, and a shard_map run on rank-coded inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from jgraph.core import DATA, STAGE
from jgraph.testing import assert_trees_close, cpu_mesh


def test_conftest_started_eight_cpu_devices():
    assert len(jax.devices("cpu")) == 8


def test_cpu_mesh_shape_and_names():
    mesh = cpu_mesh((4, 2), (STAGE, DATA))
    assert dict(mesh.shape) == {STAGE: 4, DATA: 2}
    assert {d.platform for d in mesh.devices.flat} == {"cpu"}


@pytest.mark.parametrize(
    ("shape", "names", "match"),
    [((4, 4), (STAGE, DATA), "needs 16 CPU devices, have 8"), ((8,), (STAGE, DATA), "2 in names")],
)
def test_cpu_mesh_errors(shape, names, match):
    with pytest.raises(ValueError, match=match):
        cpu_mesh(shape, names)


def test_shard_map_over_the_mesh_with_rank_coded_inputs():
    mesh = cpu_mesh((4, 2), (STAGE, DATA))
    # Row i holds 100*i + column: a mis-routed shard shows up as an exact wrong number.
    x = np.arange(8)[:, None] * 100.0 + np.arange(6)[None, :]
    xs = jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, jax.P((STAGE, DATA))))

    def body(block):  # [1, 6] per device
        rank = jax.lax.axis_index(STAGE) * 2 + jax.lax.axis_index(DATA)
        return jax.lax.psum(block, (STAGE, DATA)), rank.reshape(1)

    total, rank = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=jax.P((STAGE, DATA)),
        out_specs=(jax.P(), jax.P((STAGE, DATA))),
    )(xs)
    assert_trees_close(total, x.sum(0, keepdims=True).astype(np.float32), kind="exact")
    np.testing.assert_array_equal(np.asarray(rank), np.arange(8))
