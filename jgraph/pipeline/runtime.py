"""Training a `StagePlan`: the compiled pipelined program, the training loop, checkpoints.

`jgraph.pipeline.compile` turns a plan of a `ModuleGraph` into a `PipelineProgram`
(one jitted `jax.shard_map` step over a ``(stage, data)`` mesh); `train` runs it
with Orbax checkpoints that resume bit for bit; `TrainConfig` says how long and
where to save.

Example:
    >>> from jgraph.pipeline.runtime import TrainConfig
    >>> TrainConfig(steps=10, checkpoint_every=5).checkpoint_every
    5
"""

from jgraph.pipeline._runtime import PipelineProgram as PipelineProgram
from jgraph.pipeline._runtime import compile as compile
from jgraph.pipeline._train import TrainConfig as TrainConfig
from jgraph.pipeline._train import TrainResult as TrainResult
from jgraph.pipeline._train import fingerprint as fingerprint
from jgraph.pipeline._train import train as train

__all__ = ["PipelineProgram", "TrainConfig", "TrainResult", "compile", "fingerprint", "train"]
