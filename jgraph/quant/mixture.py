"""The Gaussian-mixture math under DGMS, as plain JAX functions.

`init_mixture` / `kmeans_1d` place the K = 2**b components (one pinned at zero) from a
kernel's weights; `log_responsibilities`, `soft_weights` (training: the temperature-scaled
expectation) and `hard_weights` (inference: the nearest component) apply them;
`pack_indices` / `unpack_indices` store b-bit indices densely (numpy, for export).

Example:
    >>> import numpy as np
    >>> from jgraph.quant.mixture import pack_indices, unpack_indices
    >>> idx = np.array([0, 3, 1, 2])
    >>> unpack_indices(pack_indices(idx, bits=2), bits=2, count=4).tolist()
    [0, 3, 1, 2]
"""

from jgraph.quant._gmm import hard_weights as hard_weights
from jgraph.quant._gmm import log_responsibilities as log_responsibilities
from jgraph.quant._gmm import soft_weights as soft_weights
from jgraph.quant._harden import pack_indices as pack_indices
from jgraph.quant._harden import unpack_indices as unpack_indices
from jgraph.quant._kmeans import init_mixture as init_mixture
from jgraph.quant._kmeans import kmeans_1d as kmeans_1d

__all__ = [
    "hard_weights",
    "init_mixture",
    "kmeans_1d",
    "log_responsibilities",
    "pack_indices",
    "soft_weights",
    "unpack_indices",
]
