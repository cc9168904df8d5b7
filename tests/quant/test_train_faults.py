"""Training under faults: a process killed mid-checkpoint, then resumed; legacy folders.

`train` commits each epoch's state and its run record (history, settings,
training seconds) as one Orbax step. The faults are injected inside that save,
after the state item is written and before the step is committed:

* ``"record"``: while the JSON record item is written;
* ``"commit"``: both items are on disk, the final rename has not happened.

The fast tests raise at ``"commit"`` (in-process; an exception raised while
Orbax's item writers run leaves them waiting on each other for minutes, so
``"record"`` is only killed for real); the slow twins SIGKILL a subprocess at
either point. Either way the resumed run must give the uninterrupted
run's history entry for entry and its weights bit for bit (on the CPU, whose
XLA kernels are deterministic), at epoch 1 (nothing committed yet: the folder
must resume and restart alike) and mid-run.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import atomicity

from jgraph import quant
from jgraph.core import ConfigError
from jgraph.core.checkpoints import Checkpoints
from jgraph.quant.training import linen_apply, train
from jgraph.testing import assert_trees_close

RECIPE = quant.recipes.Recipe(epochs=3, batch_size=64, tau_start=0.05)
SEED = 3


class Net(nn.Module):
    """Dense + BatchNorm: mutable statistics in the checkpoint, and a quick compile."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(16)(x.reshape(len(x), -1)))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(16)(x))
        return nn.Dense(10)(nn.relu(x))


def _setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(192, 8, 8, 1)).astype(np.float32)
    y = (x.reshape(192, -1)[:, :10].argmax(axis=1)).astype(np.int32)  # learnable labels
    xy = (x[:128], y[:128], x[128:], y[128:])
    apply = linen_apply(Net())
    v = apply.init(jax.random.key(0), x[:1])
    qmodel = quant.dgms(Net(), quant.DGMSConfig(bits=2))
    qv = qmodel.init(v, x[:1], key=jax.random.key(1))
    return linen_apply(qmodel), jax.device_put(qv, jax.devices("cpu")[0]), xy


class Fault(Exception):  # noqa: N818 (a simulated kill, not an error)
    """Stands for the process dying at the injection point."""


def _inject(monkeypatch, point, at_epoch, action):
    """Runs ``action()`` inside the save of epoch ``at_epoch`` (the n-th save of the process)."""
    calls = {"n": 0}
    if point == "record":
        target, name = ocp.JsonCheckpointHandler, "async_save"
    else:
        target, name = atomicity.AtomicRenameTemporaryPath, "finalize"
    original = getattr(target, name)

    async def faulty(self, *args, **kwargs):
        # finalize also runs for each item's folder; count the step folder's (``<epoch>``) only
        if point == "record" or self.get_final().name.isdigit():
            calls["n"] += 1
            if calls["n"] == at_epoch:
                action()
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(target, name, faulty)


@pytest.fixture(scope="module")
def setup():
    return _setup()


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    apply, qv, xy = setup
    return train(apply, qv, *xy, RECIPE, seed=SEED, ckpt_dir=tmp_path_factory.mktemp("full"))


def _check_resumes_exactly(apply, qv, xy, ckpt, at_epoch, full):
    committed = at_epoch - 1
    # what survived the fault: the epochs before it, never a half-written one
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert steps == ([committed] if committed else []), steps
    if committed == 0:
        # nothing was committed: the folder restarts without --resume, too
        fresh = train(apply, qv, *xy, RECIPE, seed=SEED, ckpt_dir=ckpt)
        assert fresh.resumed_from == 0
        assert fresh.history == full.history
        return
    # the committed record matches the committed weights: history up to that epoch
    record = Checkpoints(ckpt).record(committed)
    assert record["history"] == full.history[:committed]
    assert record["seconds"] > 0
    resumed = train(apply, qv, *xy, RECIPE, seed=SEED, ckpt_dir=ckpt, resume=True)
    assert resumed.resumed_from == committed
    assert resumed.history == full.history
    assert_trees_close(resumed.variables, full.variables, kind="exact")
    # training time adds the killed process's committed epochs to this one's
    assert resumed.seconds > record["seconds"]


@pytest.mark.parametrize("at_epoch", [1, 2], ids=["epoch1", "mid-run"])
def test_fault_in_checkpoint_then_resume(setup, uninterrupted, tmp_path, monkeypatch, at_epoch):
    apply, qv, xy = setup
    point = "commit"

    def die():
        raise Fault(f"killed in the {point} step of epoch {at_epoch}'s checkpoint")

    _inject(monkeypatch, point, at_epoch, die)
    with pytest.raises(Fault):
        train(apply, qv, *xy, RECIPE, seed=SEED, ckpt_dir=tmp_path)
    monkeypatch.undo()
    _check_resumes_exactly(apply, qv, xy, tmp_path, at_epoch, uninterrupted)


def test_resume_at_epoch_1_with_resume_flag_starts_over(
    setup, uninterrupted, tmp_path, monkeypatch
):
    apply, qv, xy = setup

    def die():
        raise Fault("killed before the first commit")

    _inject(monkeypatch, "commit", 1, die)
    with pytest.raises(Fault):
        train(apply, qv, *xy, RECIPE, seed=SEED, ckpt_dir=tmp_path)
    monkeypatch.undo()
    again = train(apply, qv, *xy, RECIPE, seed=SEED, ckpt_dir=tmp_path, resume=True)
    assert again.resumed_from == 0
    assert again.history == uninterrupted.history
    assert_trees_close(again.variables, uninterrupted.variables, kind="exact")


def test_legacy_checkpoint_without_record_is_refused(setup, tmp_path):
    apply, qv, xy = setup
    # the layout before the record moved into the checkpoint: state only, history.json beside
    mngr = ocp.CheckpointManager(tmp_path.absolute())
    mngr.save(1, args=ocp.args.StandardSave({"step": np.int32(2)}))
    mngr.wait_until_finished()
    mngr.close()
    with pytest.raises(ConfigError, match=r"without its run record .*older jgraph.*new folder"):
        train(apply, qv, *xy, RECIPE, seed=SEED, ckpt_dir=tmp_path, resume=True)


_KILLED_RUN = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")
import runpy
mod = runpy.run_path(sys.argv[1])
mod["_killed_run"](sys.argv[2], int(sys.argv[3]), sys.argv[4])
"""


def _killed_run(point, at_epoch, ckpt):
    """Subprocess body: trains and SIGKILLs itself inside epoch ``at_epoch``'s checkpoint."""
    import pytest

    apply, qv, xy = _setup()
    with pytest.MonkeyPatch.context() as mp:
        _inject(mp, point, at_epoch, lambda: os.kill(os.getpid(), signal.SIGKILL))
        train(apply, qv, *xy, RECIPE, seed=SEED, ckpt_dir=Path(ckpt))
    raise SystemExit("not killed")


@pytest.mark.slow  # a subprocess that imports JAX and trains (~15-30 s each)
@pytest.mark.parametrize(
    ("point", "at_epoch"), [("record", 1), ("commit", 1), ("record", 2), ("commit", 2)]
)
def test_sigkill_in_checkpoint_then_resume(setup, uninterrupted, tmp_path, point, at_epoch):
    apply, qv, xy = setup
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JGRAPH_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, __file__, point, str(at_epoch), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _check_resumes_exactly(apply, qv, xy, tmp_path, at_epoch, uninterrupted)
