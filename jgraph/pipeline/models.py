"""The GraphPipe paper's benchmark models: costed DAGs at paper scale, and a trainable tiny zoo.

Analytic: each layer's FLOPs, bytes and activation sizes come from its shapes, no weights
are made (see GraphPipe Appendix A.2 for the configurations). `paper_model` looks a model up
by name; `MODEL_NAMES` lists every name it knows (the CLI's ``--model`` choices), of which
`PAPER_MODELS` are the four models of the paper's main evaluation.

Trainable: `module_model` builds small Flax module graphs (`ModuleGraph`) of the same shapes
(`MODULE_MODEL_NAMES`: multi-branch MMT, DLRM, CANDLE-Uno and a sequential Transformer) for
a pipeline runtime to train; `module_model_loss` is each one's loss and `synthetic_batch`
makes learnable random data for it.

Example:
    >>> from jgraph.pipeline.models import mmt, paper_model
    >>> g = mmt(branches=2, layers=2)
    >>> len(g.nodes) > 4, paper_model("mmt", branches=2).name
    (True, 'mmt')
    >>> from jgraph.pipeline.models import module_model
    >>> module_model("transformer-tiny", layers=2).skeleton().topological_order
    ('x', 'proj', 'l0', 'l1', 'pool', 'head')
"""

from jgraph.pipeline._models import MODEL_NAMES as MODEL_NAMES
from jgraph.pipeline._models import PAPER_MODELS as PAPER_MODELS
from jgraph.pipeline._models import candle_uno as candle_uno
from jgraph.pipeline._models import dlrm as dlrm
from jgraph.pipeline._models import mmt as mmt
from jgraph.pipeline._models import paper_model as paper_model
from jgraph.pipeline._models import sequential_transformer as sequential_transformer
from jgraph.pipeline._models import synthetic_branches as synthetic_branches
from jgraph.pipeline._module_models import MODULE_MODEL_NAMES as MODULE_MODEL_NAMES
from jgraph.pipeline._module_models import module_model as module_model
from jgraph.pipeline._module_models import module_model_loss as module_model_loss
from jgraph.pipeline._module_models import synthetic_batch as synthetic_batch

ALL_MODEL_NAMES: tuple[str, ...] = MODEL_NAMES + MODULE_MODEL_NAMES
"""Every name ``jgraph pipeline --model`` accepts: costed paper graphs (plan only) and the
trainable module models (plan after profiling on this backend, or train)."""

__all__ = [
    "ALL_MODEL_NAMES",
    "MODEL_NAMES",
    "MODULE_MODEL_NAMES",
    "PAPER_MODELS",
    "candle_uno",
    "dlrm",
    "mmt",
    "module_model",
    "module_model_loss",
    "paper_model",
    "sequential_transformer",
    "synthetic_batch",
    "synthetic_branches",
]
