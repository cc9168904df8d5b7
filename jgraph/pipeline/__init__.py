"""GraphPipe graph pipeline parallelism: plan a model DAG as a graph of pipeline stages.

The planner side of GraphPipe (Jeon et al., ASPLOS'25): a costed model DAG
(`ModelGraph`, from the paper's analytic benchmark models or by profiling a DAG
of Flax modules), a series-parallel decomposition, the GraphPipe partitioner
(binary search on bottleneck time per sample + a DP over the SP tree, and the
same search over contiguous ranges of topological orders run as stage DAGs, so
its space holds every sequential plan), a DAG-aware 1F1B scheduler whose
tables are plain data, a discrete-event simulator, and PipeDream-, Piper- and
GPipe-style sequential baselines on the same cost model; and the runtime that trains a plan: `compile` turns a
`StagePlan` of a `ModuleGraph` into one jitted `jax.shard_map` train step
(heterogeneous stages, DAG-1F1B or GPipe, data parallelism inside stages).

Public submodules: `jgraph.pipeline.models` (the paper's benchmark models and
their names), `jgraph.pipeline.planners` (planner names, schedule kinds and the
plan assembler), `jgraph.pipeline.report` (a plan's stage table and chart) and
`jgraph.pipeline.profiling` (a DAG of Flax modules, costed by profiling) and
`jgraph.pipeline.runtime` (the compiled program, training loop and checkpoints).

Example:
    >>> from jgraph.pipeline import ClusterConfig, plan_pipeline
    >>> from jgraph.pipeline.models import mmt
    >>> plan = plan_pipeline(mmt(branches=2, layers=2), ClusterConfig(num_devices=4), batch=32)
    >>> plan.planner, plan.max_memory_bytes <= plan.memory_limit_bytes
    ('graphpipe', True)
"""

from jgraph.pipeline._api import plan_pipeline as plan_pipeline
from jgraph.pipeline._compile import compile as compile
from jgraph.pipeline._config import ClusterConfig as ClusterConfig
from jgraph.pipeline._config import PlannerConfig as PlannerConfig
from jgraph.pipeline._cost import CostModel as CostModel
from jgraph.pipeline._demo import demo as demo
from jgraph.pipeline._errors import NoPlanError as NoPlanError
from jgraph.pipeline._graph import ModelGraph as ModelGraph
from jgraph.pipeline._graph import Node as Node
from jgraph.pipeline._plan import Stage as Stage
from jgraph.pipeline._plan import StagePlan as StagePlan
from jgraph.pipeline._schedule import Schedule as Schedule
from jgraph.pipeline._schedule import make_schedule as make_schedule
from jgraph.pipeline._simulate import SimResult as SimResult
from jgraph.pipeline._simulate import simulate as simulate

__all__ = [
    "ClusterConfig",
    "CostModel",
    "ModelGraph",
    "NoPlanError",
    "Node",
    "PlannerConfig",
    "Schedule",
    "SimResult",
    "Stage",
    "StagePlan",
    "compile",
    "demo",
    "make_schedule",
    "plan_pipeline",
    "simulate",
]
