"""DGMS differentiable Gaussian-mixture weight sharing as a Flax training transform.

Status: not built yet; issue #6 builds it. Until then this package
exports nothing and `jgraph demo` reports the part as not built.
"""

__all__: list[str] = []
