"""DGMS differentiable Gaussian-mixture weight sharing as a Flax training transform.

Each selected Conv/Dense kernel is softly assigned to a learnable Gaussian
mixture of K = 2**b components (one pinned at zero) during training, and hard
assigned at inference, leaving a b-bit index per weight and a K-entry codebook
per layer (Dong et al., ICML 2022).

* `DGMSConfig`, `dgms` (Linen), `dgms_nnx` (NNX): the transform.
* `harden`, `compression_report`, `pack_indices`: deployable form and sizes.
* `Recipe`, `make_optimizer`, `RunConfig`, `run_recipe`: training recipes
  (`Recipe.original()` reproduces the released code).
* `soft_weights`, `hard_weights`, `init_mixture`: the underlying math.
* `demo`: the `jgraph demo` part.
"""

from jgraph.quant._config import MIXTURE as MIXTURE
from jgraph.quant._config import DGMSConfig as DGMSConfig
from jgraph.quant._config import Recipe as Recipe
from jgraph.quant._data import Dataset as Dataset
from jgraph.quant._data import load_dataset as load_dataset
from jgraph.quant._demo import demo as demo
from jgraph.quant._gmm import hard_weights as hard_weights
from jgraph.quant._gmm import log_responsibilities as log_responsibilities
from jgraph.quant._gmm import soft_weights as soft_weights
from jgraph.quant._harden import CompressionReport as CompressionReport
from jgraph.quant._harden import Hardened as Hardened
from jgraph.quant._harden import compression_report as compression_report
from jgraph.quant._harden import harden as harden
from jgraph.quant._harden import pack_indices as pack_indices
from jgraph.quant._harden import unpack_indices as unpack_indices
from jgraph.quant._kmeans import init_mixture as init_mixture
from jgraph.quant._kmeans import kmeans_1d as kmeans_1d
from jgraph.quant._models import make_model as make_model
from jgraph.quant._nnx import DGMSLayer as DGMSLayer
from jgraph.quant._nnx import MixtureParam as MixtureParam
from jgraph.quant._nnx import dgms_nnx as dgms_nnx
from jgraph.quant._nnx import harden_nnx as harden_nnx
from jgraph.quant._recipe import RunConfig as RunConfig
from jgraph.quant._recipe import RunResult as RunResult
from jgraph.quant._recipe import run_recipe as run_recipe
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
    "Dataset",
    "Hardened",
    "Layer",
    "MixtureParam",
    "Recipe",
    "RunConfig",
    "RunResult",
    "compression_report",
    "demo",
    "dgms",
    "dgms_nnx",
    "hard_weights",
    "harden",
    "harden_nnx",
    "init_mixture",
    "kmeans_1d",
    "load_dataset",
    "log_responsibilities",
    "make_model",
    "make_optimizer",
    "pack_indices",
    "run_recipe",
    "soft_weights",
    "unpack_indices",
]
