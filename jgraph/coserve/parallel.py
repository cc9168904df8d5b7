"""Tensor parallelism over a ``MODEL`` mesh axis: shardings of the params, the LoRA adapters
(derived from the base weights so that no collective is added) and the co-serving state, and
the collective count used to check that.
"""

from jgraph.coserve._parallel import count_collectives as count_collectives
from jgraph.coserve._parallel import lora_specs as lora_specs
from jgraph.coserve._parallel import make_tp_forward as make_tp_forward
from jgraph.coserve._parallel import param_specs as param_specs
from jgraph.coserve._parallel import shard_tree as shard_tree
from jgraph.coserve._step import coserve_specs as coserve_specs

__all__ = [
    "coserve_specs",
    "count_collectives",
    "lora_specs",
    "make_tp_forward",
    "param_specs",
    "shard_tree",
]
