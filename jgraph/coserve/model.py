"""The Llama decoder (Flax) and the LoRA conventions of its projections.

`LlamaModel` is the Linen module, `forward` the full-sequence forward (the reference the co-serving
step is tested against); `LORA_TARGETS` names the projections an adapter may wrap; `adapter_sel`,
`BASE` and `TRAINABLE` are the per-token adapter indices of a packed batch. `MODEL_PRESETS`
names the shapes `LlamaConfig.preset` builds.
"""

from jgraph.coserve._config import LORA_TARGETS as LORA_TARGETS
from jgraph.coserve._config import MODEL_PRESETS as MODEL_PRESETS
from jgraph.coserve._engine import TRAINABLE as TRAINABLE
from jgraph.coserve._lora import BASE as BASE
from jgraph.coserve._lora import adapter_sel as adapter_sel
from jgraph.coserve._model import LlamaModel as LlamaModel
from jgraph.coserve._model import forward as forward

__all__ = [
    "BASE",
    "LORA_TARGETS",
    "MODEL_PRESETS",
    "TRAINABLE",
    "LlamaModel",
    "adapter_sel",
    "forward",
]
