"""Training recipes around the DGMS transform: data, models, the two-phase run.

`run_recipe(RunConfig(...))` trains a float model (`Recipe` for the FP phase), then finetunes
it with `jgraph.quant.dgms` (a second `Recipe`; `Recipe.original()` reproduces the released
code's settings), hardens it and reports accuracy and compression, checkpointing with Orbax.
`load_dataset` reads data that ships inside packages (scikit-learn's digits) or local files;
`make_model` builds the small CNN / ResNet-20 / MLP models the benchmarks use;
`RunConfig.model` also takes your own Linen or NNX module (`jgraph.quant.training`
has the same steps one at a time).
`MODEL_NAMES`, `BUNDLED_DATASETS`, `RECIPE_PRESETS` and `INIT_METHODS` (the DGMS
initializers, `DGMSConfig.init`) are the names these accept; the CLI offers exactly these.

Example:
    >>> from jgraph.quant.recipes import Recipe
    >>> Recipe(epochs=2).epochs
    2
"""

from jgraph.quant._config import INIT_METHODS as INIT_METHODS
from jgraph.quant._config import RECIPE_PRESETS as RECIPE_PRESETS
from jgraph.quant._config import Recipe as Recipe
from jgraph.quant._data import BUNDLED_DATASETS as BUNDLED_DATASETS
from jgraph.quant._data import Dataset as Dataset
from jgraph.quant._data import load_dataset as load_dataset
from jgraph.quant._models import MODEL_NAMES as MODEL_NAMES
from jgraph.quant._models import make_model as make_model
from jgraph.quant._recipe import RunConfig as RunConfig
from jgraph.quant._recipe import RunResult as RunResult
from jgraph.quant._recipe import run_recipe as run_recipe
from jgraph.quant._saved_run import SavedRun as SavedRun
from jgraph.quant._saved_run import load_run as load_run

__all__ = [
    "BUNDLED_DATASETS",
    "INIT_METHODS",
    "MODEL_NAMES",
    "RECIPE_PRESETS",
    "Dataset",
    "Recipe",
    "RunConfig",
    "RunResult",
    "SavedRun",
    "load_dataset",
    "load_run",
    "make_model",
    "run_recipe",
]
