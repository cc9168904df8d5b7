"""Training a `StagePlan`: the compiled pipelined program, the training loop, checkpoints.

`jgraph.pipeline.compile` turns a plan of a `ModuleGraph` into a `PipelineProgram`
(one jitted `jax.shard_map` step over a ``(stage, data)`` mesh); `train` runs it
with Orbax checkpoints that resume bit for bit; `TrainConfig` says how long and
where to save; `start_devices` and `plan_module_graph` start a (multi-process)
run and give every process the same plan. Multi-host launch: see `start_devices`.

Example:
    >>> from jgraph.pipeline.runtime import TrainConfig
    >>> TrainConfig(steps=10, checkpoint_every=5).checkpoint_every
    5
"""

from jgraph.pipeline._compile import compile as compile
from jgraph.pipeline._launch import broadcast_plan as broadcast_plan
from jgraph.pipeline._launch import plan_module_graph as plan_module_graph
from jgraph.pipeline._launch import start_devices as start_devices
from jgraph.pipeline._runtime import PipelineProgram as PipelineProgram
from jgraph.pipeline._train import TrainConfig as TrainConfig
from jgraph.pipeline._train import TrainResult as TrainResult
from jgraph.pipeline._train import fingerprint as fingerprint
from jgraph.pipeline._train import train as train

__all__ = [
    "PipelineProgram",
    "TrainConfig",
    "TrainResult",
    "broadcast_plan",
    "compile",
    "fingerprint",
    "plan_module_graph",
    "start_devices",
    "train",
]
