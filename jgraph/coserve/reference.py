"""Plain references the co-serving step is tested against: a LoRA training loop and the
full-sequence loss of one sample.
"""

from jgraph.coserve._reference import plain_lora_train as plain_lora_train
from jgraph.coserve._reference import sample_loss_reference as sample_loss_reference

__all__ = [
    "plain_lora_train",
    "sample_loss_reference",
]
