"""Activation memory on abstract shapes: bytes the co-serving step keeps for the LoRA backward
vs the residuals of `jax.vjp` (nothing is materialised, so 8B shapes trace on a laptop).
"""

from jgraph.coserve._memory import coserve_backward_bytes as coserve_backward_bytes
from jgraph.coserve._memory import vjp_residual_bytes as vjp_residual_bytes

__all__ = [
    "coserve_backward_bytes",
    "vjp_residual_bytes",
]
