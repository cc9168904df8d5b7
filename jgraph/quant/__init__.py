"""DGMS differentiable Gaussian-mixture weight sharing as a Flax training transform.

Each selected Conv/Dense kernel is softly assigned to a learnable Gaussian
mixture of K = 2**b components (one pinned at zero) during training, and hard
assigned at inference, leaving a b-bit index per weight and a K-entry codebook
per layer (Dong et al., ICML 2022).

* `DGMSConfig`, `dgms` (Linen), `dgms_nnx` (NNX): the transform.
* `harden`, `compression_report`: deployable form and sizes.
* `jgraph.quant.recipes`: data, models and the two-phase training run
  (`Recipe.original()` reproduces the released code), for the bundled
  models or yours.
* `jgraph.quant.training`: the run's steps for your own Linen or NNX model
  (adapters, `train`, `evaluate`, BatchNorm re-estimation, `make_optimizer`:
  the optimizer that treats mixture parameters apart).
* `jgraph.quant.mixture`: the underlying math (soft/hard weights, k-means init,
  index packing).
* `demo`: the `jgraph demo` part.
"""

from jgraph.quant import mixture as mixture
from jgraph.quant import recipes as recipes
from jgraph.quant import training as training
from jgraph.quant._config import MIXTURE as MIXTURE
from jgraph.quant._config import DGMSConfig as DGMSConfig
from jgraph.quant._demo import demo as demo
from jgraph.quant._harden import CompressionReport as CompressionReport
from jgraph.quant._harden import Hardened as Hardened
from jgraph.quant._harden import compression_report as compression_report
from jgraph.quant._harden import harden as harden
from jgraph.quant._nnx import DGMSLayer as DGMSLayer
from jgraph.quant._nnx import MixtureParam as MixtureParam
from jgraph.quant._nnx import dgms_nnx as dgms_nnx
from jgraph.quant._nnx import harden_nnx as harden_nnx

# Kept importable for code written before `training` existed; documented and listed in
# jgraph.quant.training, so it is not in __all__ here.
from jgraph.quant._train import make_optimizer as make_optimizer
from jgraph.quant._transform import DGMS as DGMS
from jgraph.quant._transform import Layer as Layer
from jgraph.quant._transform import dgms as dgms

__all__ = [
    "DGMS",
    "MIXTURE",
    "CompressionReport",
    "DGMSConfig",
    "DGMSLayer",
    "Hardened",
    "Layer",
    "MixtureParam",
    "compression_report",
    "demo",
    "dgms",
    "dgms_nnx",
    "harden",
    "harden_nnx",
    "mixture",
    "recipes",
    "training",
]
