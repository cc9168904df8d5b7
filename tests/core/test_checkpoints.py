"""`jgraph.core.checkpoints`: the state and the run record are one step, or nothing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.core.checkpoints import Checkpoints


def test_state_and_record_round_trip_and_keep_the_newest(tmp_path) -> None:
    ckpt = Checkpoints(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, {"w": jnp.full(3, float(step))}, {"history": list(range(step))})
    assert ckpt.latest() == 3
    assert ckpt.record(3) == {"history": [0, 1, 2]}
    np.testing.assert_array_equal(ckpt.state(3, {"w": jnp.zeros(3)})["w"], [3.0, 3.0, 3.0])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "3"]
    ckpt.close()


def test_an_uncommitted_step_is_not_the_latest(tmp_path) -> None:
    """A process killed mid-save leaves Orbax's temporary folder: it is ignored, not resumed."""
    ckpt = Checkpoints(tmp_path)
    ckpt.save(1, {"w": jnp.ones(2)}, {"history": [1]})
    ckpt.close()
    partial = tmp_path / "2.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    reopened = Checkpoints(tmp_path)
    assert reopened.latest() == 1
    assert reopened.record(1) == {"history": [1]}
    reopened.close()


def test_a_checkpoint_without_its_record_is_refused(tmp_path) -> None:
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(tmp_path.absolute())
    mngr.save(5, args=ocp.args.StandardSave({"w": jnp.ones(2)}))
    mngr.wait_until_finished()
    mngr.close()
    ckpt = Checkpoints(tmp_path)
    with pytest.raises(ConfigError, match="without its run record"):
        ckpt.record(5)
    ckpt.close()
