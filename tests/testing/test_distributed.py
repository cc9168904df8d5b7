"""run_distributed: two real JAX processes joined over gloo compute one collective."""

import pytest

from jgraph.testing import run_distributed

pytestmark = pytest.mark.multiprocess

PSUM_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding
mesh = jax.make_mesh((jax.device_count(),), ("data",))
rank = jax.process_index()
# Each process contributes rows coded by its devices' global positions (ids are not contiguous).
position = {d: i for i, d in enumerate(jax.devices())}
local = np.stack([np.full(3, 10.0 * position[d]) for d in jax.local_devices()]).astype(np.float32)
x = jax.make_array_from_process_local_data(NamedSharding(mesh, jax.P("data")), local)
total = jax.jit(
    jax.shard_map(lambda b: jax.lax.psum(b, "data"), mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P())
)(x)
print("RESULT", rank, jax.device_count(), float(np.asarray(total.addressable_data(0))[0, 0]))
"""


def test_two_processes_psum_over_gloo():
    outs = run_distributed(PSUM_SCRIPT, num_processes=2, devices_per_process=2)
    # gloo writes its own lines to stdout; ours are tagged.
    rows = [
        next(line.split()[1:] for line in out.splitlines() if line.startswith("RESULT"))
        for out in outs
    ]
    assert [r[0] for r in rows] == ["0", "1"]
    assert all(r[1] == "4" for r in rows)  # 2 processes x 2 devices each
    expected = 10.0 * sum(range(4))
    assert all(float(r[2]) == expected for r in rows)


def test_a_failing_process_is_reported():
    with pytest.raises(AssertionError, match=r"a process failed(.|\n)*process 1: exit 1"):
        run_distributed("import sys\nif jax.process_index() == 1: sys.exit(1)\n", num_processes=2)
