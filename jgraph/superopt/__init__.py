"""Mirage μGraph superoptimization: search kernel/block/thread-level μGraphs equivalent to a tensor program, prune with abstract expressions, verify probabilistically, lower to Pallas.

Status: not built yet; issue #4 (IR, search, verification) and a later issue (Pallas lowering) builds it. Until then this package
exports nothing and `jgraph demo` reports the part as not built.
"""

__all__: list[str] = []
