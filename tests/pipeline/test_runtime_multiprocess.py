"""The pipelined step in 2 real processes x 4 CPU devices (jax.distributed over gloo).

The same plan compiled in one process with 8 devices and in two processes with
4 each gives the same losses: the mesh spans both processes, transfers between
stages on different processes go through gloo, and data-parallel replicas
reduce across them.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import optax
import pytest

from jgraph.testing import assert_trees_close, run_distributed

HERE = Path(__file__).resolve().parent

SCRIPT = """
import json, sys
sys.path.insert(0, {here!r})
import optax
from test_runtime import FAN_4, compile, fan_graph, hand_plan, init_params, mse, rank_coded_batch
from jgraph.pipeline.runtime import TrainConfig, train

mg = fan_graph()
out = {{}}
for name, degrees in (("pipeline", [1, 1, 1, 1]), ("ragged", [4, 2, 1, 1])):
    plan = hand_plan(mg, FAN_4, degrees, micro=4, batch=16)
    prog = compile(plan, mg, mse, optax.adam(1e-2))
    data = lambda step: rank_coded_batch(mg, 16, 3)
    res = train(prog, init_params(mg, key=jax.random.key(0)), data, TrainConfig(steps=3))
    out[name] = [h["loss"] for h in res.history]
print(json.dumps(out))
"""


def _local_losses() -> dict[str, list[float]]:
    from test_runtime import (
        FAN_4,
        compile,
        fan_graph,
        hand_plan,
        init_params,
        mse,
        rank_coded_batch,
    )

    from jgraph.pipeline.runtime import TrainConfig, train

    mg = fan_graph()
    out = {}
    for name, degrees in (("pipeline", [1, 1, 1, 1]), ("ragged", [4, 2, 1, 1])):
        prog = compile(hand_plan(mg, FAN_4, degrees, micro=4, batch=16), mg, mse, optax.adam(1e-2))
        res = train(prog, init_params(mg, key=jax.random.key(0)),
                    lambda step: rank_coded_batch(mg, 16, 3), TrainConfig(steps=3))  # fmt: skip
        out[name] = [h["loss"] for h in res.history]
    return out


@pytest.mark.slow
def test_two_processes_train_like_one() -> None:
    import sys

    sys.path.insert(0, str(HERE))
    outs = run_distributed(
        SCRIPT.format(here=str(HERE)), num_processes=2, devices_per_process=4, timeout=300
    )
    got = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    assert got[0] == got[1]  # both processes see the same replicated loss
    local = _local_losses()
    # Same math, but gloo may sum data-parallel replicas in another order.
    assert_trees_close(got[0], local, kind="gradient")
