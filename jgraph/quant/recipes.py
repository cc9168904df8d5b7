"""Training recipes around the DGMS transform: data, models, the two-phase run.

`run_recipe(RunConfig(...))` trains a float model (`Recipe` for the FP phase), then finetunes
it with `jgraph.quant.dgms` (a second `Recipe`; `Recipe.original()` reproduces the released
code's settings), hardens it and reports accuracy and compression, checkpointing with Orbax.
`load_dataset` reads data that ships inside packages (scikit-learn's digits) or local files;
`make_model` builds the small CNN / ResNet-20 / MLP models the benchmarks use.

Example:
    >>> from jgraph.quant.recipes import Recipe
    >>> Recipe(epochs=2).epochs
    2
"""

from jgraph.quant._config import Recipe as Recipe
from jgraph.quant._data import Dataset as Dataset
from jgraph.quant._data import load_dataset as load_dataset
from jgraph.quant._models import make_model as make_model
from jgraph.quant._recipe import RunConfig as RunConfig
from jgraph.quant._recipe import RunResult as RunResult
from jgraph.quant._recipe import run_recipe as run_recipe

__all__ = [
    "Dataset",
    "Recipe",
    "RunConfig",
    "RunResult",
    "load_dataset",
    "make_model",
    "run_recipe",
]
