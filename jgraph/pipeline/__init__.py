"""GraphPipe graph pipeline parallelism: partition a model's DAG into a graph of pipeline stages, search micro-batch schedules, and train with stages running as shard_map programs.

Status: not built yet; issue #3 (planner) and a later issue (shard_map runtime) builds it. Until then this package
exports nothing and `jgraph demo` reports the part as not built.
"""

__all__: list[str] = []
