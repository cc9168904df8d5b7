"""The GraphPipe paper's benchmark models as costed DAGs (`ModelGraph`), at paper scale.

Analytic: each layer's FLOPs, bytes and activation sizes come from its shapes, no weights
are made (see GraphPipe Appendix A.2 for the configurations). `paper_model` looks a model up
by name; `MODEL_NAMES` lists every name it knows (the CLI's ``--model`` choices), of which
`PAPER_MODELS` are the four models of the paper's main evaluation.

Example:
    >>> from jgraph.pipeline.models import mmt, paper_model
    >>> g = mmt(branches=2, layers=2)
    >>> len(g.nodes) > 4, paper_model("mmt", branches=2).name
    (True, 'mmt')
"""

from jgraph.pipeline._models import MODEL_NAMES as MODEL_NAMES
from jgraph.pipeline._models import PAPER_MODELS as PAPER_MODELS
from jgraph.pipeline._models import candle_uno as candle_uno
from jgraph.pipeline._models import dlrm as dlrm
from jgraph.pipeline._models import mmt as mmt
from jgraph.pipeline._models import paper_model as paper_model
from jgraph.pipeline._models import sequential_transformer as sequential_transformer
from jgraph.pipeline._models import synthetic_branches as synthetic_branches

__all__ = [
    "MODEL_NAMES",
    "PAPER_MODELS",
    "candle_uno",
    "dlrm",
    "mmt",
    "paper_model",
    "sequential_transformer",
    "synthetic_branches",
]
